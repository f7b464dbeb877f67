# A server that knows nothing of forkloop: it accepts on descriptor 3, as systemd's socket
# activation hands it over, and answers each request with its pid. On SIGTERM it stops
# accepting, finishes the request in hand and exits 0.
import os
import signal
import socket

assert os.environ["LISTEN_PID"] == str(os.getpid()), "LISTEN_PID is this process"
assert os.environ["LISTEN_FDS"] == "1"
stopping = False


def stop(*_):
    global stopping
    stopping = True


signal.signal(signal.SIGTERM, stop)
server = socket.socket(fileno=3)
# Wake up now and then to look at the flag (every worker does: the socket is shared).
server.settimeout(0.05)
print(f"up {os.getpid()} names={os.environ['LISTEN_FDNAMES']}", flush=True)
while not stopping:
    try:
        conn, _ = server.accept()
    except (socket.timeout, BlockingIOError, InterruptedError):
        continue
    with conn:
        conn.settimeout(5)
        conn.recv(4096)
        body = f"pid {os.getpid()}\n".encode()
        head = f"HTTP/1.1 200 OK\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n"
        conn.sendall(head.encode() + body)
