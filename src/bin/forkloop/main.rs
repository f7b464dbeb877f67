//! `forkloop`: runs a server as a supervised cluster.
//!
//! ```text
//! forkloop run [--workers N] [--policy rr|none] [--listen ADDR]... \
//!              [--protocol node|forkloop|fds] [--name NAME] [--pidfile F] [--control SOCKET] \
//!              [--log plain|json] -- COMMAND ARGS...
//! forkloop ctl --control SOCKET status [--json] | reload | scale N | stop
//! ```
//!
//! The workers are COMMAND. With `--protocol node` (chosen by itself when COMMAND is `node`
//! or a `.js`/`.mjs`/`.cjs` file) they are unmodified Node.js programs using `cluster`;
//! with `--protocol forkloop`, programs using `forkloop::worker`; with `--protocol fds`,
//! any program that accepts on the `--listen` sockets it inherits from descriptor 3 on.
//! Signals: `SIGHUP` replaces every worker one by one (rolling reload), `SIGTTIN`/`SIGTTOU`
//! add or remove one, `SIGTERM`/`SIGINT` stop gracefully (a second `SIGINT` forces).
//! Worker output is written line by line, tagged with the worker's id and pid.

mod control;

use std::ffi::OsString;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use forkloop::EventLoop;
use forkloop::primary::supervise::{Supervisor, SupervisorEvent, SupervisorOptions};
use forkloop::primary::{Event, Output, Policy, Primary, PrimaryOptions, Protocol, Settings};

#[derive(Parser, Debug)]
#[command(
    name = "forkloop",
    version,
    about = "Run any server as a supervised cluster"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Run COMMAND as the workers of a supervised cluster.
    Run(Box<RunArgs>),
    /// Ask a running `forkloop run --control SOCKET`.
    Ctl(CtlArgs),
}

#[derive(clap::Args, Debug)]
struct CtlArgs {
    /// The control socket of the running cluster.
    #[arg(long)]
    control: PathBuf,
    #[command(subcommand)]
    request: CtlRequest,
}

#[derive(Subcommand, Debug)]
enum CtlRequest {
    /// List every worker: id, pid, state, generation, uptime, restarts, connections
    /// handed, loop lag, resident memory, and the requests, open connections and errors of
    /// its `forkloop::http` servers (`-` where unknown: no heartbeat, or not served with
    /// `forkloop::http`).
    Status {
        /// One JSON array instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Replace every worker one by one; waits, and fails if the old generation was kept.
    Reload,
    /// Keep N workers running.
    Scale {
        /// How many.
        n: usize,
    },
    /// Stop gracefully.
    Stop,
}

#[derive(clap::Args, Debug)]
struct RunArgs {
    /// Workers to keep running (default: one per CPU).
    #[arg(long, short = 'w')]
    workers: Option<usize>,
    /// How listening sockets are shared: the primary accepts and hands connections off
    /// (rr), the workers accept on the primary's socket (none), or each forkloop worker
    /// binds its own SO_REUSEPORT socket (reuseport; not for Node workers).
    #[arg(long, value_enum, default_value_t = PolicyArg::Rr)]
    policy: PolicyArg,
    /// Bind this address in the primary before the workers start (PORT, HOST:PORT,
    /// [V6]:PORT or a Unix socket path); a worker listening on exactly it uses it.
    #[arg(long)]
    listen: Vec<String>,
    /// The workers' protocol (default: node for `node` or a .js/.mjs/.cjs file, else
    /// forkloop). fds: any program, given the --listen sockets from descriptor 3 on with
    /// LISTEN_FDS/LISTEN_PID/LISTEN_FDNAMES (systemd's socket activation convention).
    #[arg(long, value_enum)]
    protocol: Option<ProtocolArg>,
    /// Node workers' channel serialization; only json is spoken.
    #[arg(long, default_value = "json")]
    serialization: String,
    /// A name for this cluster in the primary's log lines.
    #[arg(long, default_value = "forkloop")]
    name: String,
    /// Write the primary's pid to this file (removed at exit).
    #[arg(long)]
    pidfile: Option<PathBuf>,
    /// Answer `forkloop ctl` on this Unix socket (removed at exit).
    #[arg(long)]
    control: Option<PathBuf>,
    /// How worker output and the primary's log lines are written.
    #[arg(long, value_enum, default_value_t = LogArg::Plain)]
    log: LogArg,
    #[command(flatten)]
    supervision: SupervisionArgs,
    /// The worker command and its arguments (after `--`).
    #[arg(last = true, required = true)]
    command: Vec<OsString>,
}

/// Supervisor options (durations in milliseconds; defaults as `SupervisorOptions`).
#[derive(clap::Args, Debug)]
struct SupervisionArgs {
    /// A new worker must be ready (listening) within this.
    #[arg(long, value_name = "MS")]
    ready_timeout_ms: Option<u64>,
    /// A retiring worker is killed after this.
    #[arg(long, value_name = "MS")]
    drain_timeout_ms: Option<u64>,
    /// Graceful stop deadline; then the rest are killed.
    #[arg(long, value_name = "MS")]
    shutdown_timeout_ms: Option<u64>,
    /// Workers replaced at once during a reload.
    #[arg(long)]
    concurrency: Option<usize>,
    /// First restart delay after an unstable exit.
    #[arg(long, value_name = "MS")]
    restart_delay_ms: Option<u64>,
    /// Largest restart delay.
    #[arg(long, value_name = "MS")]
    restart_max_delay_ms: Option<u64>,
    /// More unstable restarts than this within the breaker window leave the slot empty.
    #[arg(long)]
    breaker_max: Option<u32>,
    /// The crash-loop breaker's window.
    #[arg(long, value_name = "MS")]
    breaker_window_ms: Option<u64>,
    /// Replace a worker whose resident memory exceeds this many MiB.
    #[arg(long, value_name = "MIB")]
    max_rss_mib: Option<u64>,
    /// Replace a worker after this many handed-off connections.
    #[arg(long)]
    max_connections: Option<u64>,
    /// Heartbeat interval for forkloop workers (0: off; other protocols have none).
    #[arg(long, value_name = "MS")]
    heartbeat_ms: Option<u64>,
}

impl SupervisionArgs {
    /// Applies the options given over `o`.
    fn apply(&self, o: &mut SupervisorOptions) {
        let ms = Duration::from_millis;
        if let Some(v) = self.ready_timeout_ms {
            o.ready_timeout = ms(v);
        }
        if let Some(v) = self.drain_timeout_ms {
            o.drain_timeout = ms(v);
        }
        if let Some(v) = self.shutdown_timeout_ms {
            o.shutdown_timeout = ms(v);
        }
        if let Some(v) = self.concurrency {
            o.concurrency = v.max(1);
        }
        if let Some(v) = self.restart_delay_ms {
            o.restart.base = ms(v);
        }
        if let Some(v) = self.restart_max_delay_ms {
            o.restart.cap = ms(v);
        }
        if let Some(v) = self.breaker_max {
            o.restart.breaker_max = v;
        }
        if let Some(v) = self.breaker_window_ms {
            o.restart.breaker_window = ms(v);
        }
        if let Some(v) = self.max_rss_mib {
            o.max_rss = Some(v.saturating_mul(1 << 20));
        }
        if let Some(v) = self.max_connections {
            o.max_connections = Some(v);
        }
        match self.heartbeat_ms {
            Some(0) => o.health = None,
            Some(v) => {
                if let Some(h) = &mut o.health {
                    h.interval = ms(v);
                }
            }
            None => {}
        }
    }
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum PolicyArg {
    Rr,
    None,
    Reuseport,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum ProtocolArg {
    Node,
    Forkloop,
    Fds,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum LogArg {
    Plain,
    Json,
}

/// The primary's own log lines, on stderr.
struct Logger {
    name: String,
    json: bool,
}

impl log::Log for Logger {
    fn enabled(&self, m: &log::Metadata<'_>) -> bool {
        m.level() <= log::Level::Info
    }

    fn log(&self, r: &log::Record<'_>) {
        if self.enabled(r.metadata()) {
            say(&self.name, self.json, r.level(), &r.args().to_string());
        }
    }

    fn flush(&self) {}
}

fn say(name: &str, json: bool, level: log::Level, msg: &str) {
    let line = if json {
        format!(
            "{{\"name\":{},\"level\":\"{}\",\"msg\":{}}}\n",
            quote(name),
            level.as_str().to_lowercase(),
            quote(msg)
        )
    } else {
        format!("[{name}] {msg}\n")
    };
    let _ = std::io::stderr().lock().write_all(line.as_bytes());
}

/// `s` as a JSON string.
fn quote(s: &str) -> String {
    serde_json::Value::from(s).to_string()
}

/// Node when the command is `node` (or `nodejs`) or a JavaScript file.
fn guess_protocol(command: &[OsString]) -> Protocol {
    let Some(first) = command.first() else {
        return Protocol::Forkloop;
    };
    let path = Path::new(first);
    let stem = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
    if matches!(stem, "node" | "nodejs") || matches!(ext, "js" | "mjs" | "cjs") {
        Protocol::Node
    } else {
        Protocol::Forkloop
    }
}

/// Binds one `--listen` address.
fn bind(spec: &str) -> Result<std::os::fd::OwnedFd, String> {
    use forkloop::sys::net::{BindOptions, bind_tcp, bind_unix};
    let tcp = if let Ok(port) = spec.parse::<u16>() {
        Some(std::net::SocketAddr::from(([0, 0, 0, 0], port)))
    } else {
        spec.parse().ok()
    };
    let r = match tcp {
        Some(addr) => bind_tcp(
            addr,
            BindOptions {
                listen: Some(511),
                ..BindOptions::default()
            },
        ),
        None if spec.contains('/') => bind_unix(Path::new(spec), 511),
        None => return Err(format!("--listen {spec:?}: not PORT, HOST:PORT or a path")),
    };
    r.map_err(|e| format!("--listen {spec}: {e}"))
}

fn run(a: RunArgs) -> Result<i32, String> {
    let json = a.log == LogArg::Json;
    // One logger for the life of the process.
    let logger: &'static Logger = Box::leak(Box::new(Logger {
        name: a.name.clone(),
        json,
    }));
    let _ = log::set_logger(logger);
    log::set_max_level(log::LevelFilter::Info);
    let protocol = match a.protocol {
        Some(ProtocolArg::Node) => Protocol::Node,
        Some(ProtocolArg::Forkloop) => Protocol::Forkloop,
        Some(ProtocolArg::Fds) => Protocol::Fds,
        None => guess_protocol(&a.command),
    };
    if a.serialization != "json" {
        return Err(format!(
            "--serialization {:?}: only json is supported (Node's `advanced` serialization \
             is V8's format, which forkloop does not speak)",
            a.serialization
        ));
    }
    let policy = match a.policy {
        PolicyArg::Rr => Policy::RoundRobin,
        PolicyArg::None => Policy::Shared,
        PolicyArg::Reuseport if protocol == Protocol::Node => {
            return Err(
                "--policy reuseport: Node workers listen through the primary; \
                        use rr or none"
                    .into(),
            );
        }
        PolicyArg::Reuseport => Policy::ReusePort,
    };
    let mut lp = EventLoop::new().map_err(|e| format!("event loop: {e}"))?;
    let p = Primary::with_options(
        &mut lp,
        PrimaryOptions {
            policy: Some(policy),
            ..PrimaryOptions::default()
        },
    )
    .map_err(|e| format!("primary: {e}"))?;
    let mut sockets = forkloop::primary::systemd::listen_fds_with_names()
        .map_err(|e| format!("LISTEN_FDS from the service manager: {e}"))?;
    for (i, spec) in a.listen.iter().enumerate() {
        sockets.push((bind(spec)?, format!("listen{i}")));
    }
    if protocol == Protocol::Fds {
        if sockets.is_empty() {
            return Err("--protocol fds needs at least one --listen".into());
        }
        p.pass_listeners(sockets).map_err(|e| e.to_string())?;
    } else {
        p.adopt_listeners(sockets.into_iter().map(|(fd, _)| fd).collect());
    }
    let (exec, args) = a.command.split_first().ok_or("no command given after --")?;
    p.setup(
        &mut lp,
        Settings::default()
            .exec(exec)
            .args(args.iter().cloned())
            .protocol(protocol)
            .silent(true)
            .output(if json { Output::Json } else { Output::Tagged }),
    );
    let mut opts = SupervisorOptions {
        signals: true,
        ..SupervisorOptions::default()
    };
    if let Some(n) = a.workers {
        opts.workers = n.max(1);
    }
    a.supervision.apply(&mut opts);
    if protocol != Protocol::Forkloop {
        // Only forkloop's protocol has heartbeats.
        opts.health = None;
    }
    // Registered before the supervisor's own listener, so that a worker's exit is told
    // before what the supervisor makes of it (the last one before `stopped`).
    let (name, name2) = (a.name.clone(), a.name.clone());
    p.on(move |_, _, ev| match ev {
        Event::Message { worker, data, .. } => say(
            &name,
            json,
            log::Level::Info,
            &format!("worker {worker} says {}", String::from_utf8_lossy(data)),
        ),
        Event::Exit { worker, status } => say(
            &name,
            json,
            log::Level::Info,
            &match (status.code, status.signal) {
                (Some(code), _) => format!("worker {worker} exited with code {code}"),
                (None, Some(sig)) => format!("worker {worker} was killed by signal {sig}"),
                (None, None) => format!("worker {worker} exited"),
            },
        ),
        _ => {}
    });
    let sup = Supervisor::new(&mut lp, &p, opts).map_err(|e| format!("supervisor: {e}"))?;
    let clean = std::rc::Rc::new(std::cell::Cell::new(true));
    let c = clean.clone();
    sup.on(move |_, _, ev| {
        if let SupervisorEvent::Stopped { clean } = ev {
            c.set(*clean);
        }
        say(&name2, json, log::Level::Info, &ev.to_string());
    });
    if let Some(f) = &a.pidfile {
        std::fs::write(f, format!("{}\n", std::process::id()))
            .map_err(|e| format!("--pidfile {}: {e}", f.display()))?;
    }
    let served = match &a.control {
        Some(path) => control::serve(path, sup.control(&lp)),
        None => Ok(()),
    };
    let started = served.and_then(|()| sup.start(&mut lp).map_err(|e| format!("start: {e}")));
    let code = started.and_then(|()| lp.run().map_err(|e| format!("event loop: {e}")));
    for f in [&a.pidfile, &a.control].into_iter().flatten() {
        let _ = std::fs::remove_file(f);
    }
    let code = code?;
    Ok(if clean.get() { code } else { 1 })
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let done = match cli.cmd {
        Cmd::Run(a) => run(*a),
        Cmd::Ctl(c) => {
            let request = match c.request {
                CtlRequest::Status { json: false } => "status".to_owned(),
                CtlRequest::Status { json: true } => "status --json".to_owned(),
                CtlRequest::Reload => "reload".to_owned(),
                CtlRequest::Scale { n } => format!("scale {n}"),
                CtlRequest::Stop => "stop".to_owned(),
            };
            control::ctl(&c.control, &request)
        }
    };
    match done {
        Ok(code) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
        Err(e) => {
            eprintln!("forkloop: {e}");
            ExitCode::from(2)
        }
    }
}
