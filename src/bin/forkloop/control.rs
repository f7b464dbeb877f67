//! The control socket of `forkloop run --control SOCKET`, and `forkloop ctl`.
//!
//! One request per connection: the client writes one line (`status`, `status --json`,
//! `reload`, `scale N`, `stop`) and reads the answer to EOF. An answer that starts with
//! `error:` is a failure (`forkloop ctl` then exits 1). The socket is made readable and
//! writable by its owner only.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

use forkloop::primary::supervise::{Control, WorkerStats};

/// Longest request line read.
const MAX_REQUEST: u64 = 256;
/// Longest wait for the supervisor's loop to answer a status request.
const STATUS_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest wait for a rolling reload to end.
const RELOAD_TIMEOUT: Duration = Duration::from_secs(3600);

/// Binds `path` (replacing a stale socket file no one listens on) and answers requests
/// on a thread of its own, driving the supervisor through `control`.
pub fn serve(path: &Path, control: Control) -> Result<(), String> {
    if UnixStream::connect(path).is_ok() {
        return Err(format!(
            "--control {}: another forkloop is listening there",
            path.display()
        ));
    }
    let _ = std::fs::remove_file(path);
    let listener =
        UnixListener::bind(path).map_err(|e| format!("--control {}: {e}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| format!("--control {}: {e}", path.display()))?;
    std::thread::Builder::new()
        .name("forkloop-control".into())
        .spawn(move || {
            for conn in listener.incoming() {
                match conn {
                    Ok(c) => {
                        if let Err(e) = answer(c, &control) {
                            log::warn!("control request failed: {e}");
                        }
                    }
                    Err(e) => log::warn!("control socket: {e}"),
                }
            }
        })
        .map_err(|e| format!("control thread: {e}"))?;
    Ok(())
}

fn answer(conn: UnixStream, control: &Control) -> std::io::Result<()> {
    conn.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut line = String::new();
    BufReader::new((&conn).take(MAX_REQUEST)).read_line(&mut line)?;
    let words: Vec<&str> = line.split_whitespace().collect();
    let reply = match words.as_slice() {
        ["status"] => status(control, false),
        ["status", "--json"] => status(control, true),
        ["reload"] => match control.reload().wait_timeout(RELOAD_TIMEOUT) {
            Some(Ok(())) => "reloaded\n".to_owned(),
            Some(Err(e)) => format!("error: reload failed, the old generation is kept: {e}\n"),
            None => "error: no answer from the reload\n".to_owned(),
        },
        ["scale", n] => match n.parse::<usize>() {
            Ok(n) if n > 0 && control.scale(n) => format!("scaling to {n}\n"),
            Ok(_) => "error: scale needs a number above 0\n".to_owned(),
            Err(_) => format!("error: scale {n:?}: not a number\n"),
        },
        ["stop"] if control.shutdown() => "stopping\n".to_owned(),
        ["stop"] => "error: the supervisor is gone\n".to_owned(),
        _ => format!("error: unknown request {:?}\n", line.trim()),
    };
    (&conn).write_all(reply.as_bytes())
}

fn status(control: &Control, json: bool) -> String {
    let stats = match control.stats(STATUS_TIMEOUT) {
        Ok(s) => s,
        Err(e) => return format!("error: {e}\n"),
    };
    if json {
        let list: Vec<serde_json::Value> = stats.iter().map(stat_json).collect();
        return format!("{}\n", serde_json::Value::from(list));
    }
    let mut out = String::from(
        "id\tpid\tstate\tgeneration\tuptime_s\trestarts\tconnections\tlag_ms\trss_kib\t\
         requests\topen\terrors\n",
    );
    for s in &stats {
        // HTTP counters: only from workers serving with `forkloop::http`.
        let http = s.http.as_ref().map_or("-\t-\t-".to_owned(), |h| {
            format!("{}\t{}\t{}", h.requests, h.open, h.errors_total())
        });
        out.push_str(&format!(
            "{}\t{}\t{:?}\t{}\t{}\t{}\t{}\t{}\t{}\t{http}\n",
            s.id,
            s.pid,
            s.state,
            s.generation,
            s.uptime.as_secs(),
            s.restarts,
            s.connections_handed,
            s.loop_lag
                .map_or("-".to_owned(), |l| l.as_millis().to_string()),
            s.rss_bytes
                .map_or("-".to_owned(), |b| (b / 1024).to_string()),
        ));
    }
    out
}

fn stat_json(s: &WorkerStats) -> serde_json::Value {
    serde_json::json!({
        "id": s.id,
        "pid": s.pid,
        "state": format!("{:?}", s.state),
        "generation": s.generation,
        "uptime_ms": s.uptime.as_millis() as u64,
        "restarts": s.restarts,
        "connections_handed": s.connections_handed,
        "loop_lag_us": s.loop_lag.map(|l| l.as_micros() as u64),
        "rss_bytes": s.rss_bytes,
        "routed": s.routed,
        "http": s.http.as_ref().map(|h| serde_json::json!({
            "requests": h.requests,
            "accepted": h.accepted,
            "open": h.open,
            "errors": h.errors.iter().map(|(k, n)| (k.clone(), (*n).into())).collect::<serde_json::Map<_, _>>(),
        })),
    })
}

/// `forkloop ctl`: sends `request` to the control socket at `path`, prints the answer;
/// exit code 1 if it is an error.
pub fn ctl(path: &PathBuf, request: &str) -> Result<i32, String> {
    let mut c =
        UnixStream::connect(path).map_err(|e| format!("--control {}: {e}", path.display()))?;
    c.write_all(format!("{request}\n").as_bytes())
        .and_then(|()| c.shutdown(std::net::Shutdown::Write))
        .map_err(|e| format!("--control {}: {e}", path.display()))?;
    let mut answer = String::new();
    c.read_to_string(&mut answer)
        .map_err(|e| format!("--control {}: {e}", path.display()))?;
    if let Some(err) = answer.strip_prefix("error: ") {
        eprint!("forkloop ctl: {err}");
        return Ok(1);
    }
    print!("{answer}");
    Ok(0)
}
