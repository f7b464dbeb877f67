//! `silent` mode: a worker's stdout and stderr are pipes read by the primary's loop and
//! written out whole lines at a time, each tagged ([`Output`]: `[worker N] `, `[worker N
//! pid P] ` or a JSON object per line), so the output of several workers never
//! interleaves inside a line.

use std::io::{self, Read, Write};

use mio::Interest;
use mio::unix::pipe::Receiver;

use super::settings::Output;
use crate::rt::{EventLoop, IoId};

/// A partial line longer than this is written out as if it ended (bounded memory).
const MAX_LINE: usize = 64 << 10;

/// Which of the primary's streams a worker stream goes to.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Sink {
    Stdout,
    Stderr,
}

/// Whose output a stream is, and how to tag it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Tag {
    pub(crate) worker: u32,
    pub(crate) pid: u32,
    pub(crate) output: Output,
}

/// Registers `pipe` on the loop; returns its handle (unref'd: worker output alone does not
/// keep the primary alive).
pub(crate) fn forward(
    lp: &mut EventLoop,
    pipe: Receiver,
    tag: Tag,
    sink: Sink,
) -> io::Result<IoId> {
    pipe.set_nonblocking(true)?;
    let mut partial: Vec<u8> = Vec::new();
    let id = lp.register(pipe, Interest::READABLE, move |lp, id, _| {
        let eof = drain(lp, id, &mut partial);
        emit_lines(tag, &mut partial, sink, eof);
        if eof {
            lp.close(id, |_| {});
        }
    })?;
    lp.unref(id);
    Ok(id)
}

/// Reads everything available into `partial`; returns true at EOF or error.
fn drain(lp: &mut EventLoop, id: IoId, partial: &mut Vec<u8>) -> bool {
    let Some(pipe) = lp.io_mut::<Receiver>(id) else {
        return true;
    };
    let mut buf = [0u8; 8192];
    loop {
        match pipe.read(&mut buf) {
            Ok(0) => return true,
            Ok(n) => partial.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return false,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return true,
        }
    }
}

/// Writes every complete line (and, at EOF or when too long, the rest) tagged, in one
/// write per batch.
fn emit_lines(tag: Tag, partial: &mut Vec<u8>, sink: Sink, eof: bool) {
    let cut = match partial.iter().rposition(|&b| b == b'\n') {
        Some(i) => i + 1,
        None if eof || partial.len() > MAX_LINE => partial.len(),
        None => return,
    };
    let mut out = Vec::with_capacity(cut + 64);
    for line in partial[..cut].split_inclusive(|&b| b == b'\n') {
        tag_line(
            tag,
            sink,
            line.strip_suffix(b"\n").unwrap_or(line),
            &mut out,
        );
    }
    partial.drain(..cut);
    // Output errors (a closed terminal) are not the workers' concern.
    let _ = match sink {
        Sink::Stdout => io::stdout().lock().write_all(&out),
        Sink::Stderr => io::stderr().lock().write_all(&out),
    };
}

/// Appends `line` (without its newline) tagged, and a newline.
fn tag_line(tag: Tag, sink: Sink, line: &[u8], out: &mut Vec<u8>) {
    let Tag {
        worker,
        pid,
        output,
    } = tag;
    match output {
        Output::Prefix => {
            out.extend_from_slice(format!("[worker {worker}] ").as_bytes());
            out.extend_from_slice(line);
        }
        Output::Tagged => {
            out.extend_from_slice(format!("[worker {worker} pid {pid}] ").as_bytes());
            out.extend_from_slice(line);
        }
        Output::Json => {
            let stream = match sink {
                Sink::Stdout => "stdout",
                Sink::Stderr => "stderr",
            };
            let text = String::from_utf8_lossy(line);
            out.extend_from_slice(
                format!(
                    r#"{{"worker":{worker},"pid":{pid},"stream":"{stream}","line":"{}"}}"#,
                    json_escape(&text)
                )
                .as_bytes(),
            );
        }
    }
    out.push(b'\n');
}

/// `s` as the inside of a JSON string.
fn json_escape(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '"' => o.push_str("\\\""),
            '\\' => o.push_str("\\\\"),
            '\n' => o.push_str("\\n"),
            '\r' => o.push_str("\\r"),
            '\t' => o.push_str("\\t"),
            c if u32::from(c) < 0x20 => o.push_str(&format!("\\u{:04x}", u32::from(c))),
            c => o.push(c),
        }
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_partial_lines_until_complete() {
        let tag = Tag {
            worker: 1,
            pid: 2,
            output: Output::Prefix,
        };
        let mut p = b"ab\ncd".to_vec();
        emit_lines(tag, &mut p, Sink::Stdout, false);
        assert_eq!(p, b"cd");
        emit_lines(tag, &mut p, Sink::Stdout, true);
        assert!(p.is_empty());
    }

    #[test]
    fn lines_are_tagged_as_asked() {
        let tag = |output| Tag {
            worker: 3,
            pid: 42,
            output,
        };
        let mut out = Vec::new();
        tag_line(tag(Output::Prefix), Sink::Stdout, b"hi", &mut out);
        tag_line(tag(Output::Tagged), Sink::Stdout, b"hi", &mut out);
        tag_line(
            tag(Output::Json),
            Sink::Stderr,
            b"a \"q\" \\ \t\x01",
            &mut out,
        );
        assert_eq!(
            String::from_utf8_lossy(&out),
            "[worker 3] hi\n[worker 3 pid 42] hi\n\
             {\"worker\":3,\"pid\":42,\"stream\":\"stderr\",\"line\":\"a \\\"q\\\" \\\\ \\t\\u0001\"}\n"
        );
    }
}
