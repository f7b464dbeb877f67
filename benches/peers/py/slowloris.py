#!/usr/bin/env python3
"""Slow clients beside a normal one (scripts/slowloris-probe.sh).

Usage: slowloris.py HOST PORT SLOW SECONDS

Opens SLOW connections that each trickle a request head one byte per second (never
finishing it; a connection the server closes is opened again), and meanwhile one normal
client makes sequential keep-alive `GET /` requests on its own connection (a new one if
the server closes it). After SECONDS it prints one line:

  slow_open=N slow_reopened=R requests=Q errors=E p50_us=A p99_us=B max_us=C

slow_open: slow connections open at the end; errors: the normal client's failed requests.
"""
import selectors
import socket
import sys
import time

HEAD = b"GET / HTTP/1.1\r\nHost: slow\r\nX-Pad: " + b"a" * 4000


def main():
    host, port, slow, seconds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
    sel = selectors.DefaultSelector()
    slow_socks = {}  # socket -> bytes sent
    reopened = 0

    def open_slow():
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setblocking(False)
        try:
            s.connect((host, port))
        except BlockingIOError:
            pass
        except OSError:
            s.close()
            return False
        slow_socks[s] = 0
        sel.register(s, selectors.EVENT_READ)
        return True

    start = time.monotonic()
    # Open the slow connections over the first second or so, not in one burst.
    for i in range(slow):
        open_slow()
        if i % 500 == 499:
            time.sleep(0.05)

    normal = None
    lat = []
    errors = 0
    next_trickle = time.monotonic()
    end = start + seconds
    while time.monotonic() < end:
        # One byte per second to every slow connection.
        now = time.monotonic()
        if now >= next_trickle:
            next_trickle = now + 1.0
            for s in list(slow_socks):
                k = slow_socks[s]
                try:
                    s.send(HEAD[k % len(HEAD):k % len(HEAD) + 1])
                    slow_socks[s] = k + 1
                except (BlockingIOError, InterruptedError):
                    pass
                except OSError:
                    sel.unregister(s)
                    del slow_socks[s]
                    s.close()
                    reopened += open_slow()
        # Closed (or answered) slow connections: open them again.
        for key, _ in sel.select(timeout=0):
            s = key.fileobj
            try:
                data = s.recv(65536)
            except (BlockingIOError, InterruptedError):
                continue
            except OSError:
                data = b""
            if not data:
                sel.unregister(s)
                del slow_socks[s]
                s.close()
                reopened += open_slow()
        # One request of the normal client.
        t0 = time.monotonic()
        try:
            if normal is None:
                normal = socket.create_connection((host, port), timeout=5)
                normal.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            normal.sendall(b"GET / HTTP/1.1\r\nHost: normal\r\n\r\n")
            got = b""
            while b"\r\n\r\n" not in got:
                chunk = normal.recv(4096)
                if not chunk:
                    raise OSError("closed")
                got += chunk
            head, _, body = got.partition(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value.strip())
            while len(body) < length:
                chunk = normal.recv(4096)
                if not chunk:
                    raise OSError("closed")
                body += chunk
            if not head.startswith(b"HTTP/1.1 200"):
                raise OSError("status " + head.split(b"\r\n")[0].decode())
            lat.append((time.monotonic() - t0) * 1e6)
        except OSError:
            errors += 1
            if normal is not None:
                normal.close()
            normal = None
        time.sleep(0.002)
    lat.sort()

    def pct(p):
        return int(lat[min(len(lat) - 1, int(len(lat) * p))]) if lat else -1

    print(f"slow_open={len(slow_socks)} slow_reopened={reopened} requests={len(lat)} "
          f"errors={errors} p50_us={pct(0.5)} p99_us={pct(0.99)} max_us={pct(1.0) if lat else -1}")


if __name__ == "__main__":
    main()
