//! The supervisor's knobs and what it reports: restart and health policies, options,
//! events and per-worker statistics.

use std::time::Duration;

use crate::cluster::WorkerState;

/// How unexpected exits are restarted.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RestartPolicy {
    /// First delay after an unstable exit.
    pub base: Duration,
    /// Growth of the delay per consecutive unstable exit.
    pub factor: f64,
    /// Largest delay.
    pub cap: Duration,
    /// A worker up this long (and ready) is stable: its crash restarts at once.
    pub min_uptime: Duration,
    /// More than this many unstable restarts within `breaker_window` trips the breaker.
    pub breaker_max: u32,
    /// The breaker's window.
    pub breaker_window: Duration,
    /// How long a tripped breaker waits before it tries one worker again (half-open).
    pub breaker_cooldown: Duration,
    /// Each failed half-open try doubles the cool-down, up to this.
    pub breaker_cooldown_cap: Duration,
}

impl Default for RestartPolicy {
    fn default() -> Self {
        RestartPolicy {
            base: Duration::from_millis(100),
            factor: 1.5,
            cap: Duration::from_secs(15),
            min_uptime: Duration::from_secs(1),
            breaker_max: 5,
            breaker_window: Duration::from_secs(10),
            breaker_cooldown: Duration::from_secs(10),
            breaker_cooldown_cap: Duration::from_secs(300),
        }
    }
}

impl RestartPolicy {
    /// The delay before the `n`-th consecutive unstable restart (n ≥ 1).
    pub fn delay(&self, n: u32) -> Duration {
        let exp = self.factor.powi(n.saturating_sub(1).min(64) as i32);
        self.base.mul_f64(exp.min(1e9)).min(self.cap)
    }
}

/// Heartbeats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HealthPolicy {
    /// How often each worker is pinged.
    pub interval: Duration,
    /// Above this loop lag a worker gets no new connections until it recovers.
    pub quarantine_lag: Duration,
    /// No answer for this long: the worker is replaced and killed.
    pub timeout: Duration,
    /// Between `SIGTERM` and `SIGKILL` for an unresponsive worker.
    pub kill_grace: Duration,
}

impl Default for HealthPolicy {
    fn default() -> Self {
        HealthPolicy {
            interval: Duration::from_secs(1),
            quarantine_lag: Duration::from_millis(500),
            timeout: Duration::from_secs(10),
            kill_grace: Duration::from_secs(2),
        }
    }
}

/// Everything the supervisor does, configurable.
#[derive(Debug, Clone, PartialEq)]
pub struct SupervisorOptions {
    /// Workers to keep running.
    pub workers: usize,
    /// Restart policy.
    pub restart: RestartPolicy,
    /// Heartbeats (`None`: off).
    pub health: Option<HealthPolicy>,
    /// Every new worker (first start, restart, replacement) must be ready within this;
    /// one that is not is killed (a boot failure, or a failed replacement). Workers that
    /// never listen must say they are ready (`ready_on_message`).
    pub ready_timeout: Duration,
    /// A retiring worker is killed after this.
    pub drain_timeout: Duration,
    /// Graceful shutdown deadline; then `SIGKILL`.
    pub shutdown_timeout: Duration,
    /// Workers replaced at once (reload and recycling).
    pub concurrency: usize,
    /// Recycle a worker whose resident memory exceeds this many bytes.
    pub max_rss: Option<u64>,
    /// Recycle a worker after it accepted this many handed-off connections.
    pub max_connections: Option<u64>,
    /// Ready means the worker's explicit `Ready` message (true) or its first `Listening`.
    pub ready_on_message: bool,
    /// Handle `SIGHUP` (reload), `SIGTERM`/`SIGINT`/`SIGQUIT` (shutdown; a second `SIGINT`
    /// forces), `SIGTTIN`/`SIGTTOU` (one worker more / less).
    pub signals: bool,
}

impl Default for SupervisorOptions {
    fn default() -> Self {
        SupervisorOptions {
            workers: std::thread::available_parallelism().map_or(1, |n| n.get()),
            restart: RestartPolicy::default(),
            health: Some(HealthPolicy::default()),
            ready_timeout: Duration::from_secs(30),
            drain_timeout: Duration::from_secs(30),
            shutdown_timeout: Duration::from_secs(30),
            concurrency: 1,
            max_rss: None,
            max_connections: None,
            ready_on_message: false,
            signals: true,
        }
    }
}

/// Why a worker is replaced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cause {
    /// Rolling reload.
    Reload,
    /// Resident memory over the limit.
    Memory,
    /// Handed-off connections over the limit.
    Connections,
    /// Missed heartbeats.
    Unresponsive,
    /// The worker said it is going down.
    GoingDown,
}

/// What the supervisor did.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum SupervisorEvent {
    /// A worker is ready (listening or said so).
    Ready {
        /// Slot.
        slot: usize,
        /// Worker.
        worker: u32,
    },
    /// A slot's worker exited unexpectedly and will be restarted after `delay`.
    Restarting {
        /// Slot.
        slot: usize,
        /// The worker that exited.
        worker: u32,
        /// Before the restart.
        delay: Duration,
        /// It exited before it was ready.
        boot_failure: bool,
    },
    /// Too many unstable ends in a slot (crashes, workers going down, boot failures,
    /// failed replacements): the slot is not restarted until the breaker's cool-down
    /// passes; the others keep serving.
    BreakerTripped {
        /// Slot.
        slot: usize,
        /// Unstable restarts within the window.
        restarts: u32,
    },
    /// A tripped breaker's cool-down passed (or a reload or scaling asked for the slot):
    /// one worker is tried in the slot.
    BreakerHalfOpen {
        /// Slot.
        slot: usize,
    },
    /// The worker tried in a half-open slot is ready: the slot restarts normally again.
    BreakerClosed {
        /// Slot.
        slot: usize,
    },
    /// A worker could not be spawned into a slot; it is tried again after the restart
    /// delay (the failure counts as a boot failure).
    SpawnFailed {
        /// Slot.
        slot: usize,
        /// The error.
        reason: String,
    },
    /// A listen request failed in the primary. `fatal` when it happened while the
    /// cluster starts (before every slot had a ready worker), no worker of the cluster
    /// ever listened on that address, and the error is about the address (in use,
    /// permission denied, not available): the supervisor then kills the workers (no
    /// restarts) and the loop exits with 1. Otherwise the worker handles its error.
    ListenFailed {
        /// The worker that asked.
        worker: u32,
        /// The address, as asked.
        address: String,
        /// The error.
        error: String,
        /// The start failed: the cluster stops.
        fatal: bool,
    },
    /// A worker's loop lags: no new connections for it until it recovers.
    Quarantined {
        /// Worker.
        worker: u32,
        /// Its lag.
        lag: Duration,
    },
    /// A quarantined worker recovered.
    Released {
        /// Worker.
        worker: u32,
    },
    /// A worker is being replaced.
    Retiring {
        /// Worker.
        worker: u32,
        /// Why.
        cause: Cause,
    },
    /// A replacement failed (missed its deadline or died); the old worker keeps serving.
    ReplacementFailed {
        /// The worker it was to replace.
        worker: u32,
        /// What happened.
        reason: String,
    },
    /// A rolling reload ended: `Ok` only if every slot serves a ready worker of the new
    /// generation; `Err` names the first failure (the workers that were not replaced keep
    /// serving), or says there was no slot to reload.
    ReloadFinished(Result<(), ReloadError>),
    /// Shutdown began.
    ShuttingDown,
    /// Every worker is gone after a shutdown; `clean` unless some had to be killed.
    Stopped {
        /// Whether every worker drained in time.
        clean: bool,
    },
}

/// Statistics of one worker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerStats {
    /// Worker id.
    pub id: u32,
    /// The slot it was started for (a worker that is leaving still shows it).
    pub slot: usize,
    /// Process id.
    pub pid: u32,
    /// State.
    pub state: WorkerState,
    /// Generation (grows with every reload).
    pub generation: u64,
    /// Time since spawned.
    pub uptime: Duration,
    /// Restarts of its slot.
    pub restarts: u32,
    /// Connections handed off to it, less the ones it gave back.
    pub connections_handed: u64,
    /// Hand-offs it had not read when the primary last looked.
    pub in_flight: u32,
    /// Last reported event-loop lag (`None` until it answers a heartbeat: heartbeats
    /// off, or a protocol without them).
    pub loop_lag: Option<Duration>,
    /// Resident memory in bytes, where known.
    pub rss_bytes: Option<u64>,
    /// Whether new connections go to it.
    pub routed: bool,
    /// The counters of its HTTP servers as of its last heartbeat answer
    /// ([`Primary::http_stats`](crate::primary::Primary::http_stats)).
    pub http: Option<crate::ipc::HttpReport>,
}

impl std::fmt::Display for Cause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Cause::Reload => "rolling reload",
            Cause::Memory => "resident memory over the limit",
            Cause::Connections => "handed-off connections over the limit",
            Cause::Unresponsive => "missed heartbeats",
            Cause::GoingDown => "it is going down",
        })
    }
}

/// One line a person reads in a log, e.g. `worker 3 ready in slot 1`.
impl std::fmt::Display for SupervisorEvent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SupervisorEvent::Ready { slot, worker } => {
                write!(f, "worker {worker} ready in slot {slot}")
            }
            SupervisorEvent::Restarting {
                slot,
                worker,
                delay,
                boot_failure,
            } => write!(
                f,
                "worker {worker} {}; slot {slot} restarts in {} ms",
                if *boot_failure {
                    "ended before it was ready"
                } else {
                    "ended unexpectedly"
                },
                delay.as_millis()
            ),
            SupervisorEvent::BreakerTripped { slot, restarts } => write!(
                f,
                "slot {slot}: {restarts} unstable restarts, breaker tripped (retried after its cool-down)"
            ),
            SupervisorEvent::BreakerHalfOpen { slot } => {
                write!(
                    f,
                    "slot {slot}: trying one worker again (breaker half-open)"
                )
            }
            SupervisorEvent::BreakerClosed { slot } => {
                write!(f, "slot {slot}: serving again (breaker closed)")
            }
            SupervisorEvent::SpawnFailed { slot, reason } => {
                write!(f, "slot {slot}: cannot start a worker: {reason}")
            }
            SupervisorEvent::ListenFailed {
                worker,
                address,
                error,
                fatal,
            } => write!(
                f,
                "worker {worker} cannot listen on {address}: {error}{}",
                if *fatal { "; stopping" } else { "" }
            ),
            SupervisorEvent::Quarantined { worker, lag } => write!(
                f,
                "worker {worker} lags {} ms: no new connections until it recovers",
                lag.as_millis()
            ),
            SupervisorEvent::Released { worker } => {
                write!(f, "worker {worker} recovered: gets connections again")
            }
            SupervisorEvent::Retiring { worker, cause } => {
                write!(f, "replacing worker {worker}: {cause}")
            }
            SupervisorEvent::ReplacementFailed { worker, reason } => write!(
                f,
                "the replacement of worker {worker} failed ({reason}); it keeps serving"
            ),
            SupervisorEvent::ReloadFinished(Ok(())) => f.write_str("reload finished"),
            SupervisorEvent::ReloadFinished(Err(e)) => write!(f, "reload failed: {e}"),
            SupervisorEvent::ShuttingDown => f.write_str("shutting down"),
            SupervisorEvent::Stopped { clean: true } => {
                f.write_str("stopped: every worker drained")
            }
            SupervisorEvent::Stopped { clean: false } => {
                f.write_str("stopped: some workers had to be killed")
            }
        }
    }
}

/// Why a rolling reload did not replace every worker. The workers not replaced keep
/// serving.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ReloadError {
    /// The replacement in `slot` failed (it missed its ready deadline, died, could not
    /// start, or the slot's breaker tripped); the reload stopped there.
    Replacement {
        /// The slot whose replacement failed.
        slot: usize,
        /// What happened.
        reason: String,
    },
    /// There was no worker to reload (the target is 0).
    NoWorkers,
    /// The supervisor began shutting down.
    ShuttingDown,
    /// The supervisor, or its loop, is gone (only from [`Control::reload`](super::Control::reload)).
    Gone,
}

impl std::fmt::Display for ReloadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReloadError::Replacement { slot, reason } => {
                write!(f, "the replacement in slot {slot} failed: {reason}")
            }
            ReloadError::NoWorkers => f.write_str("no workers to reload (target 0)"),
            ReloadError::ShuttingDown => f.write_str("the supervisor is shutting down"),
            ReloadError::Gone => f.write_str("the supervisor is gone"),
        }
    }
}

impl std::error::Error for ReloadError {}
