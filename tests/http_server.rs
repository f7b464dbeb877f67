//! `forkloop::http` with real clients: curl (keep-alive, chunked upload, `Expect:
//! 100-continue`, a streamed body), Python's `http.client` (pipelining, HTTP/1.0), and raw
//! sockets for every refusal, limit and timeout.
#![cfg(feature = "http")]

mod http_util;

use std::io::Write;
use std::time::Duration;

use forkloop::http::Config;
use http_util::{
    BIG_BYTES, STREAM_BYTES, connect, exchange, read_response, read_to_close, run_tool, serve,
};

/// Runs a Python script with the server's port as its argument; its output, or `None`
/// (after saying why) without python3.
fn python(script: &str, addr: std::net::SocketAddr) -> Option<String> {
    let port = addr.port().to_string();
    let out = run_tool("python3", &["-c", script, &port], None)?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Some(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs curl (at most 20 s); (stdout, stderr) once it succeeded, or `None` (after saying
/// why) without curl.
fn curl(args: &[&str], stdin: Option<&[u8]>) -> Option<(String, String)> {
    let mut all = vec!["--max-time", "20"];
    all.extend_from_slice(args);
    let out = run_tool("curl", &all, stdin)?;
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{stderr}");
    Some((String::from_utf8_lossy(&out.stdout).into_owned(), stderr))
}

fn url(addr: std::net::SocketAddr, path: &str) -> String {
    format!("http://{addr}{path}")
}

#[test]
fn curl_keeps_the_connection_alive() {
    let srv = serve(Config::default());
    let Some((stdout, stderr)) = curl(&["-sv", &url(srv.addr, "/a"), &url(srv.addr, "/b")], None)
    else {
        return;
    };
    assert_eq!(stdout, "hellohello");
    assert!(stderr.contains("Re-using existing connection"), "{stderr}");
    assert!(stderr.contains("< Date: "), "{stderr}");
}

#[test]
fn curl_chunked_upload_arrives_whole() {
    let srv = serve(Config::default());
    let body: Vec<u8> = (0..100_000u32).map(|i| b'a' + (i % 26) as u8).collect();
    let Some((stdout, stderr)) = curl(
        &[
            "-sS",
            "-H",
            "Transfer-Encoding: chunked",
            "-D",
            "-",
            "--data-binary",
            "@-",
            &url(srv.addr, "/echo"),
        ],
        Some(&body),
    ) else {
        return;
    };
    let (head, echoed) = stdout.split_once("\r\n\r\n").expect(&stderr);
    assert!(head.contains("X-Chunked: yes"), "{head}");
    assert!(head.contains("X-Method: POST"), "{head}");
    assert_eq!(echoed.as_bytes(), &body[..]);
}

#[test]
fn curl_gets_100_continue_before_sending_the_body() {
    let srv = serve(Config::default());
    let Some((stdout, stderr)) = curl(
        &[
            "-sv",
            // Long enough that only a real 100 Continue makes curl send the body in time.
            "--expect100-timeout",
            "8",
            "-H",
            "Expect: 100-continue",
            "--data-binary",
            "@-",
            &url(srv.addr, "/echo"),
        ],
        Some(b"the body"),
    ) else {
        return;
    };
    assert!(stderr.contains("< HTTP/1.1 100 Continue"), "{stderr}");
    assert_eq!(stdout, "the body");
}

#[test]
fn curl_reads_a_streamed_body_written_with_back_pressure() {
    let srv = serve(Config::default());
    let Some((stdout, stderr)) = curl(
        &[
            "-sS",
            // Slow reader: the server's queue fills and it must wait for drains.
            "--limit-rate",
            "8M",
            "-o",
            "/dev/null",
            "-w",
            "%{size_download} %{http_code}",
            &url(srv.addr, "/stream"),
        ],
        None,
    ) else {
        return;
    };
    assert_eq!(stdout, format!("{STREAM_BYTES} 200"), "{stderr}");
}

#[test]
fn head_gets_the_length_without_the_body() {
    let srv = serve(Config::default());
    let mut s = connect(srv.addr);
    s.write_all(b"HEAD / HTTP/1.1\r\nHost: x\r\n\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    // Read the HEAD answer's head only: its Content-Length describes a body not sent.
    let mut first = Vec::new();
    let mut byte = [0u8; 1];
    while !first.ends_with(b"\r\n\r\n") {
        std::io::Read::read_exact(&mut s, &mut byte).unwrap();
        first.push(byte[0]);
    }
    let first = String::from_utf8(first).unwrap();
    assert!(first.contains("Content-Length: 5"), "{first}");
    let (head, body) = read_response(&mut s);
    assert!(head.starts_with("HTTP/1.1 200 OK"), "{head}");
    assert_eq!(body, b"hello");
}

/// Python: responses to pipelined requests come in order, a slow one holding the rest.
#[test]
fn python_pipelined_requests_are_answered_in_order() {
    let srv = serve(Config::default());
    let script = r#"
import http.client, socket, sys
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=10)
s.sendall(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n"
          b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n"
          b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc"
          b"GET /b HTTP/1.1\r\nHost: x\r\n\r\n")
f = s.makefile("rb")
class Shared:
    """One buffered reader for every response (each would otherwise read ahead)."""
    def __init__(self, f): self.f = f
    def __getattr__(self, n): return getattr(self.f, n)
    def close(self): pass
class Sock:
    def makefile(self, *a, **k): return Shared(f)
for _ in range(4):
    r = http.client.HTTPResponse(Sock())
    r.begin()
    print(r.status, r.read().decode())
"#;
    let Some(out) = python(script, srv.addr) else {
        return;
    };
    assert_eq!(out, "200 slow\n200 hello\n200 abc\n200 hello\n");
}

/// Python: HTTP/1.0 closes after the response unless it asks for keep-alive.
#[test]
fn python_http10_closes_unless_kept_alive() {
    let srv = serve(Config::default());
    let script = r#"
import http.client, sys
def conn():
    c = http.client.HTTPConnection("127.0.0.1", int(sys.argv[1]), timeout=10)
    c._http_vsn, c._http_vsn_str = 10, "HTTP/1.0"
    return c
c = conn()
c.request("GET", "/echo")
r = c.getresponse()
print(r.status, r.getheader("Connection"), r.getheader("X-Version"), r.will_close, r.read())
c = conn()
c.request("GET", "/", headers={"Connection": "keep-alive"})
r = c.getresponse()
print(r.status, r.getheader("Connection"), r.will_close, r.read())
sock = c.sock
c.request("GET", "/", headers={"Connection": "keep-alive"})
r = c.getresponse()
print(r.status, r.read(), c.sock is sock)
"#;
    let Some(out) = python(script, srv.addr) else {
        return;
    };
    assert_eq!(
        out,
        "200 close Http10 True b''\n200 keep-alive False b'hello'\n200 b'hello' True\n"
    );
}

fn strict_config() -> Config {
    let mut c = Config::default();
    c.limits.max_head = 1024;
    c.limits.max_headers = 10;
    c.limits.max_body = 1000;
    c.header_timeout = Duration::from_millis(300);
    c.body_timeout = Duration::from_millis(300);
    c.keep_alive_timeout = Duration::from_millis(300);
    c
}

#[test]
fn every_refusal_gets_its_status_and_a_closed_connection() {
    let srv = serve(strict_config());
    let long_target = format!("GET /{} HTTP/1.1\r\nHost: x\r\n\r\n", "a".repeat(2000));
    let many = format!("GET / HTTP/1.1\r\nHost: x\r\n{}\r\n", "A: b\r\n".repeat(11));
    let cases: Vec<(&str, Vec<u8>, u16)> = vec![
        ("head over the limit", long_target.into_bytes(), 431),
        ("too many header fields", many.into_bytes(), 431),
        (
            "Content-Length over the limit",
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\n\r\n".to_vec(),
            413,
        ),
        (
            "chunked body over the limit",
            b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n7d0\r\n".to_vec(),
            413,
        ),
        ("garbage", b"GARBAGE\r\n\r\n".to_vec(), 400),
        (
            "Content-Length and Transfer-Encoding",
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
                .to_vec(),
            400,
        ),
        (
            "differing Content-Lengths",
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd".to_vec(),
            400,
        ),
        (
            "invalid chunk size",
            b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n".to_vec(),
            400,
        ),
        (
            "bare LF after chunk data",
            b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\n0\r\n\r\n".to_vec(),
            400,
        ),
        (
            "obs-fold",
            b"GET / HTTP/1.1\r\nHost: x\r\nX-A: a\r\n  folded\r\n\r\n".to_vec(),
            400,
        ),
        ("bare LF in the head", b"GET / HTTP/1.1\nHost: x\n\n".to_vec(), 400),
        ("HTTP/1.1 without Host", b"GET / HTTP/1.1\r\n\r\n".to_vec(), 400),
        (
            "unsupported transfer coding",
            b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n".to_vec(),
            501,
        ),
        (
            "unknown expectation",
            b"POST / HTTP/1.1\r\nHost: x\r\nExpect: 200-ok\r\nContent-Length: 1\r\n\r\n".to_vec(),
            417,
        ),
        ("head too slow (slowloris)", b"GET / HTTP/1.1\r\nHost: x\r\n".to_vec(), 408),
        (
            "body too slow",
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nabc".to_vec(),
            408,
        ),
        ("nothing sent at all", Vec::new(), 408),
    ];
    for (what, bytes, status) in &cases {
        let (answer, clean) = exchange(srv.addr, bytes);
        assert!(
            answer.starts_with(&format!("HTTP/1.1 {status} ")),
            "{what}: got {answer:?}"
        );
        assert!(
            answer.contains("\r\nConnection: close\r\n"),
            "{what}: {answer:?}"
        );
        assert!(clean, "{what}: the connection was not closed cleanly");
    }
    // The server still serves, and counted each refusal by kind.
    let mut s = connect(srv.addr);
    s.write_all(b"GET /stats HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let (_, body) = read_response(&mut s);
    let stats = String::from_utf8(body).unwrap();
    for expect in [
        // Refused requests never reached the handler: only this one did.
        "requests=1 ",
        &format!("accepted={} ", cases.len() + 1),
        "head_too_large=1",
        "too_many_headers=1",
        "body_too_large=2",
        "malformed=4",
        "ambiguous_length=2",
        "bad_chunk=2",
        "unsupported_coding=1",
        "unsupported_expect=1",
        "timeout=3",
    ] {
        assert!(stats.contains(expect), "{expect} not in {stats}");
    }
}

#[test]
fn an_idle_keep_alive_connection_is_closed_after_its_timeout() {
    let srv = serve(strict_config());
    let mut s = connect(srv.addr);
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let (head, body) = read_response(&mut s);
    assert!(!head.contains("Connection: close"), "{head}");
    assert_eq!(body, b"hello");
    // No status line this time: an idle connection is simply closed.
    let (rest, clean) = read_to_close(&mut s);
    assert_eq!(rest, "");
    assert!(clean);
}

#[test]
fn connection_close_is_honoured_both_ways() {
    let srv = serve(Config::default());
    // The client asks.
    let (answer, clean) = exchange(
        srv.addr,
        b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    assert!(answer.starts_with("HTTP/1.1 200 OK"), "{answer}");
    assert!(answer.contains("\r\nConnection: close\r\n"), "{answer}");
    assert!(answer.ends_with("hello") && clean, "{answer}");
    // The handler says so; pipelined requests after it are not answered.
    let (answer, clean) = exchange(
        srv.addr,
        b"GET /close HTTP/1.1\r\nHost: x\r\n\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\n",
    );
    assert!(answer.contains("\r\nConnection: close\r\n"), "{answer}");
    assert!(answer.ends_with("bye") && clean, "{answer}");
    assert_eq!(answer.matches("HTTP/1.1").count(), 1, "{answer}");
}

#[test]
fn a_dropped_response_is_answered_500() {
    let srv = serve(Config::default());
    let (answer, clean) = exchange(srv.addr, b"GET /drop HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(answer.starts_with("HTTP/1.1 500 "), "{answer}");
    assert!(clean, "{answer}");
}

/// A deep pipeline from a client that writes everything before reading: the server stops
/// reading while its write queue is full, goes on after each drain, and answers every
/// request once, in order.
#[test]
fn a_deep_pipeline_is_answered_in_order_under_back_pressure() {
    const N: usize = 20_000;
    let srv = serve(Config::default());
    let s = connect(srv.addr);
    let mut w = s.try_clone().unwrap();
    let writer = std::thread::spawn(move || {
        let mut all = Vec::new();
        for i in 0..N {
            all.extend_from_slice(
                format!(
                    "GET /echo?{i} HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n{i}",
                    i.to_string().len()
                )
                .as_bytes(),
            );
        }
        w.write_all(&all).unwrap();
    });
    // Let the queues fill before reading anything.
    std::thread::sleep(Duration::from_millis(200));
    let mut s = std::io::BufReader::new(s);
    for i in 0..N {
        let (head, body) = read_response(&mut s);
        assert!(head.starts_with("HTTP/1.1 200 OK"), "{head}");
        assert_eq!(body, i.to_string().as_bytes(), "response {i}");
    }
    writer.join().unwrap();
}

/// Responses around a large whole body (written apart from its head) stay in order.
#[test]
fn a_large_body_keeps_its_place_in_the_pipeline() {
    let srv = serve(Config::default());
    let mut s = connect(srv.addr);
    s.write_all(
        b"GET /a HTTP/1.1\r\nHost: x\r\n\r\nGET /big HTTP/1.1\r\nHost: x\r\n\r\nGET /b HTTP/1.1\r\nHost: x\r\n\r\n",
    )
    .unwrap();
    let mut s = std::io::BufReader::new(s);
    assert_eq!(read_response(&mut s).1, b"hello");
    let (head, body) = read_response(&mut s);
    assert!(
        head.contains(&format!("Content-Length: {BIG_BYTES}")),
        "{head}"
    );
    assert!(body.len() == BIG_BYTES && body.iter().all(|&b| b == b'y'));
    assert_eq!(read_response(&mut s).1, b"hello");
}

/// Invalid statuses and header fields are refused with a reason (never written, so no
/// header can be injected), and the response still goes out.
#[test]
fn response_misuse_is_refused_loudly() {
    let srv = serve(Config::default());
    let mut s = connect(srv.addr);
    s.write_all(b"GET /misuse HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let (head, body) = read_response(&mut s);
    assert!(
        head.starts_with("HTTP/1.1 200 OK") && !head.contains("Injected"),
        "{head}"
    );
    assert_eq!(
        String::from_utf8(body).unwrap(),
        "invalid status code 99|header field managed by the server|\
         header field managed by the server|invalid header field|invalid header field"
    );
}

fn streaming() -> Config {
    Config {
        stream_bodies: true,
        ..Config::default()
    }
}

/// Reads from `s` until `pattern` has been seen; everything read.
fn read_until(s: &mut std::net::TcpStream, pattern: &[u8]) -> Vec<u8> {
    use std::io::Read;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !got.windows(pattern.len()).any(|w| w == pattern) {
        let n = s.read(&mut buf).expect("read");
        assert!(
            n > 0,
            "closed before {pattern:?}: {:?}",
            String::from_utf8_lossy(&got)
        );
        got.extend_from_slice(&buf[..n]);
    }
    got
}

#[test]
fn a_streamed_body_reaches_the_handler_as_it_arrives() {
    let srv = serve(streaming());
    let mut s = connect(srv.addr);
    s.write_all(b"POST /started HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n0123")
        .unwrap();
    // The handler runs (and answers its first part) before the body is complete.
    let first = read_until(&mut s, b"started\n");
    assert!(first.starts_with(b"HTTP/1.1 200 OK\r\n"), "{first:?}");
    s.write_all(b"456789").unwrap();
    let rest = read_until(&mut s, b"0\r\n\r\n");
    let rest = String::from_utf8_lossy(&rest);
    assert!(rest.contains("total 10"), "{rest}");
    // The connection goes on with the next request.
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    assert_eq!(read_response(&mut s).1, b"hello");
}

#[test]
fn curl_chunked_upload_streams_through_read_body() {
    let body = vec![b'z'; 300_000];
    for (config, whole) in [(Config::default(), true), (streaming(), false)] {
        let srv = serve(config);
        let Some((stdout, stderr)) = curl(
            &[
                "-sS",
                "-H",
                "Transfer-Encoding: chunked",
                "--data-binary",
                "@-",
                &url(srv.addr, "/count"),
            ],
            Some(&body),
        ) else {
            return;
        };
        let (total, parts) = stdout
            .strip_prefix("total 300000 parts ")
            .map(|p| ("300000", p.parse::<usize>().expect(&stderr)))
            .unwrap_or_else(|| panic!("{stdout} {stderr}"));
        assert_eq!(total, "300000");
        if whole {
            assert_eq!(parts, 1, "a whole body comes in one part");
        }
    }
}

#[test]
fn a_body_the_handler_does_not_read_is_dropped_and_the_next_request_served() {
    let srv = serve(streaming());
    let mut s = connect(srv.addr);
    s.write_all(
        b"POST /early HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello\
          POST /early HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n\
          3\r\nGET\r\n0\r\n\r\n\
          GET /count HTTP/1.1\r\nHost: x\r\n\r\n",
    )
    .unwrap();
    assert_eq!(read_response(&mut s).1, b"early");
    assert_eq!(read_response(&mut s).1, b"early");
    // No body: `read_body` ends at once.
    assert_eq!(read_response(&mut s).1, b"total 0 parts 0");
}

#[test]
fn a_new_connection_sees_nothing_of_the_one_before_it() {
    // Closed connections' buffers serve the next ones: nothing of a request, a response
    // or unread input may carry over.
    let srv = serve(Config::default());
    for i in 0..200 {
        let mut s = connect(srv.addr);
        if i % 2 == 0 {
            // A request with a body and headers, a pipelined request left unread, and a
            // close in the middle of a third.
            s.write_all(
                b"POST /echo HTTP/1.1\r\nHost: x\r\nX-A: 1\r\nContent-Length: 4\r\n\r\nbody\
                  GET /close HTTP/1.1\r\nHost: x\r\n\r\nGET /ec",
            )
            .unwrap();
            let (head, body) = read_response(&mut s);
            assert!(head.contains("X-Method: POST"), "{head}");
            assert!(
                head.contains("X-Headers: Host,X-A,Content-Length\r\n"),
                "{head}"
            );
            assert_eq!(body, b"body");
            assert_eq!(read_response(&mut s).1, b"bye");
        } else {
            s.write_all(b"GET /echo HTTP/1.0\r\n\r\n").unwrap();
            let (head, body) = read_response(&mut s);
            assert!(head.starts_with("HTTP/1.1 200 "), "{head}");
            assert!(head.contains("X-Method: GET"), "{head}");
            assert!(head.contains("X-Version: Http10"), "{head}");
            assert!(
                head.contains("X-Headers: \r\n"),
                "no request headers: {head}"
            );
            assert_eq!(body, b"", "{head}");
        }
    }
}

#[test]
fn a_reader_that_stops_answers_at_once_and_the_connection_goes_on() {
    let srv = serve(streaming());
    let mut s = connect(srv.addr);
    // 10 bytes announced, 6 sent: the reader stops at 4 or more and answers before the
    // rest of the body has come.
    s.write_all(b"POST /stop HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n012345")
        .unwrap();
    let (head, body) = read_response(&mut s);
    assert!(head.starts_with("HTTP/1.1 413 "), "{head}");
    // 6 when the six bytes come in one read (as a single write on loopback does).
    let body = String::from_utf8_lossy(&body).into_owned();
    let at: usize = body
        .strip_prefix("stopped at ")
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!((4..=6).contains(&at), "{body}");
    // The rest of that body is dropped, and the next requests are framed after it.
    s.write_all(
        b"6789POST /stop HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n\
          2\r\nab\r\n3\r\ncde\r\n5\r\nfghij\r\n0\r\n\r\n\
          POST /count HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nxyz",
    )
    .unwrap();
    assert_eq!(read_response(&mut s).1, b"stopped at 5");
    assert_eq!(read_response(&mut s).1, b"total 3 parts 1");
    // A body that stays under the mark is read whole.
    s.write_all(b"POST /stop HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nab")
        .unwrap();
    assert_eq!(read_response(&mut s).1, b"stopped at 2");
}

#[test]
fn a_streamed_body_over_the_limit_gets_413_and_a_closed_connection() {
    let mut config = streaming();
    config.limits.max_body = 8;
    let srv = serve(config);
    let (answer, closed) = exchange(
        srv.addr,
        b"POST /count HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n\
          6\r\nabcdef\r\n6\r\nghijkl\r\n0\r\n\r\n",
    );
    assert!(answer.starts_with("HTTP/1.1 413 "), "{answer}");
    assert!(closed, "the connection is closed");
    // Once the response began, a failing body can only cut the connection.
    let mut s = connect(srv.addr);
    s.write_all(
        b"POST /started HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n\
          6\r\nabcdef\r\n6\r\nghijkl\r\n0\r\n\r\n",
    )
    .unwrap();
    let mut answer = Vec::new();
    let end = loop {
        let mut buf = [0u8; 4096];
        match std::io::Read::read(&mut s, &mut buf) {
            Ok(0) => break None,
            Ok(n) => answer.extend_from_slice(&buf[..n]),
            Err(e) => break Some(e.kind()),
        }
    };
    assert!(
        !matches!(
            end,
            Some(std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut)
        ),
        "the server cut the connection (not a read timeout)"
    );
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.contains("started"), "{answer}");
    assert!(
        !answer.contains("413") && !answer.contains("total") && !answer.ends_with("0\r\n\r\n"),
        "{answer}"
    );
}

#[test]
fn a_streamed_body_waits_for_100_continue_and_pipelines_after() {
    let srv = serve(streaming());
    let mut s = connect(srv.addr);
    s.write_all(
        b"POST /count HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n",
    )
    .unwrap();
    let interim = read_until(&mut s, b"\r\n\r\n");
    assert_eq!(interim, b"HTTP/1.1 100 Continue\r\n\r\n");
    // The body, and two more requests behind it in the same write: answered in order.
    s.write_all(
        b"hello\
          POST /count HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n\
          2\r\nab\r\n3\r\ncde\r\n0\r\n\r\n\
          GET / HTTP/1.1\r\nHost: x\r\n\r\n",
    )
    .unwrap();
    assert_eq!(read_response(&mut s).1, b"total 5 parts 1");
    let (_, second) = read_response(&mut s);
    assert!(second.starts_with(b"total 5 parts "), "{second:?}");
    assert_eq!(read_response(&mut s).1, b"hello");
}

#[test]
fn a_body_held_back_past_the_read_ahead_is_read_once_the_handler_asks() {
    // 300 kB wait while the handler has not asked (reading stops at the read-ahead bound),
    // then all of it arrives.
    let srv = serve(streaming());
    let body = vec![b'q'; 300_000];
    let Some((stdout, stderr)) = curl(
        &["-sS", "--data-binary", "@-", &url(srv.addr, "/late")],
        Some(&body),
    ) else {
        return;
    };
    assert_eq!(stdout, "total 300000", "{stderr}");
}

#[test]
fn a_handler_that_answers_before_asking_for_the_body_spares_the_upload() {
    let srv = serve(streaming());
    // Answered at once: no `100 Continue`, and the connection closes after the answer
    // (whether the client sends the body now is up to it).
    let mut s = connect(srv.addr);
    s.write_all(
        b"POST /early HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n",
    )
    .unwrap();
    let (answer, closed) = read_to_close(&mut s);
    assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
    assert!(!answer.contains("100 Continue"), "{answer}");
    assert!(answer.contains("Connection: close"), "{answer}");
    assert!(answer.ends_with("early"), "{answer}");
    assert!(closed, "closed after the answer");
    // A handler that streams its answer before reading lets the client send the body.
    let mut s = connect(srv.addr);
    s.write_all(
        b"POST /started HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n",
    )
    .unwrap();
    let first = read_until(&mut s, b"started\n");
    assert!(
        first.starts_with(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\n"),
        "{first:?}"
    );
    s.write_all(b"hello").unwrap();
    let rest = String::from_utf8_lossy(&read_until(&mut s, b"0\r\n\r\n")).into_owned();
    assert!(rest.contains("total 5"), "{rest}");
}

#[test]
fn streamed_bodies_frame_the_same_however_the_bytes_arrive() {
    // Heads and bodies (whole, chunked, read, dropped) in one pipelined stream, sent in
    // pieces of every size from 1 byte: the same answers in the same order each time.
    let stream: &[u8] = b"POST /count HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n0123456789\
        POST /early HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nwxyz\r\n0\r\n\r\n\
        GET / HTTP/1.1\r\nHost: x\r\n\r\n\
        POST /count HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n1\r\na\r\n2\r\nbc\r\n3\r\ndef\r\n0\r\n\r\n\
        GET /count HTTP/1.1\r\nHost: x\r\n\r\n";
    let srv = serve(streaming());
    for piece in [1, 2, 3, 7, 16, 61, stream.len()] {
        let mut s = connect(srv.addr);
        s.set_nodelay(true).unwrap();
        for part in stream.chunks(piece) {
            s.write_all(part).unwrap();
            if piece < stream.len() {
                std::thread::sleep(Duration::from_micros(300));
            }
        }
        let bodies: Vec<String> = (0..5)
            .map(|_| String::from_utf8(read_response(&mut s).1).unwrap())
            .collect();
        // Parts depend on how the bytes came; totals and order do not.
        let totals: Vec<&str> = bodies
            .iter()
            .map(|b| b.split(" parts").next().unwrap_or(b))
            .collect();
        assert_eq!(
            totals,
            ["total 10", "early", "hello", "total 6", "total 0"],
            "pieces of {piece}: {bodies:?}"
        );
    }
}
