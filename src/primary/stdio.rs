//! `silent` mode: a worker's stdout and stderr are pipes read by the primary's loop and
//! written out whole lines at a time, each prefixed with `[worker N] `, so the output of
//! several workers never interleaves inside a line.

use std::io::{self, Read, Write};

use mio::Interest;
use mio::unix::pipe::Receiver;

use crate::rt::{EventLoop, IoId};

/// A partial line longer than this is written out as if it ended (bounded memory).
const MAX_LINE: usize = 64 << 10;

/// Which of the primary's streams a worker stream goes to.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Sink {
    Stdout,
    Stderr,
}

/// Registers `pipe` on the loop; returns its handle (unref'd: worker output alone does not
/// keep the primary alive).
pub(crate) fn forward(
    lp: &mut EventLoop,
    pipe: Receiver,
    worker: u32,
    sink: Sink,
) -> io::Result<IoId> {
    pipe.set_nonblocking(true)?;
    let prefix = format!("[worker {worker}] ").into_bytes();
    let mut partial: Vec<u8> = Vec::new();
    let id = lp.register(pipe, Interest::READABLE, move |lp, id, _| {
        let eof = drain(lp, id, &mut partial);
        emit_lines(&prefix, &mut partial, sink, eof);
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

/// Writes every complete line (and, at EOF or when too long, the rest) with the prefix, in
/// one write per batch.
fn emit_lines(prefix: &[u8], partial: &mut Vec<u8>, sink: Sink, eof: bool) {
    let cut = match partial.iter().rposition(|&b| b == b'\n') {
        Some(i) => i + 1,
        None if eof || partial.len() > MAX_LINE => partial.len(),
        None => return,
    };
    let mut out = Vec::with_capacity(cut + prefix.len() * 4);
    for line in partial[..cut].split_inclusive(|&b| b == b'\n') {
        out.extend_from_slice(prefix);
        out.extend_from_slice(line);
        if line.last() != Some(&b'\n') {
            out.push(b'\n');
        }
    }
    partial.drain(..cut);
    // Output errors (a closed terminal) are not the workers' concern.
    let _ = match sink {
        Sink::Stdout => io::stdout().lock().write_all(&out),
        Sink::Stderr => io::stderr().lock().write_all(&out),
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_partial_lines_until_complete() {
        let mut p = b"ab\ncd".to_vec();
        emit_lines(b"> ", &mut p, Sink::Stdout, false);
        assert_eq!(p, b"cd");
        emit_lines(b"> ", &mut p, Sink::Stdout, true);
        assert!(p.is_empty());
    }
}
