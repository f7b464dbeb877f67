//! Signals as loop handles, delivered in the poll phase through signal-hook-mio.
//!
//! Node starts its signal handles unref'd (a `process.on('SIGTERM')` listener alone does not
//! keep the process alive), so [`EventLoop::on_signal`] listeners are unref'd too;
//! [`EventLoop::set_ref`] makes one keep the loop alive. All listeners of one loop share one
//! signal-hook source. signal-hook keeps its process-wide handler installed after the last
//! listener is removed, so a signal whose default action was to terminate is then ignored.

use std::io;

use mio::Interest;
use signal_hook_mio::v1_0::Signals;

use super::EventLoop;
use super::id::{Slots, define_id};
use super::io::IoId;

define_id! {
    /// A signal listener added by [`EventLoop::on_signal`].
    SignalId
}

type SignalCb = Box<dyn FnMut(&mut EventLoop, i32)>;

struct Listener {
    signum: i32,
    cb: Option<SignalCb>,
    refed: bool,
}

/// The loop's signal listeners.
#[derive(Default)]
pub(crate) struct SignalState {
    source: Option<IoId>,
    listeners: Slots<Listener>,
    /// Number of ref'd listeners.
    pub(crate) refed: usize,
}

impl EventLoop {
    /// Calls `cb(lp, signum)` in the poll phase each time `signum` arrives (several
    /// deliveries before the loop looks may be merged into one call, as in libuv).
    ///
    /// The listener is unref'd, as in Node; see the module docs.
    ///
    /// # Errors
    ///
    /// Fails for signals that cannot be handled (`SIGKILL`, `SIGSTOP`, `SIGSEGV`, …) or if the
    /// signal source cannot be registered.
    pub fn on_signal<F>(&mut self, signum: i32, cb: F) -> io::Result<SignalId>
    where
        F: FnMut(&mut EventLoop, i32) + 'static,
    {
        match self.signals.source {
            Some(src) if self.is_open(src) => {
                let signals = self
                    .io_ref::<Signals>(src)
                    .ok_or_else(|| io::Error::other("signal source missing"))?;
                signals.add_signal(signum)?;
            }
            _ => {
                let signals = Signals::new([signum])?;
                let src = self.register(signals, Interest::READABLE, |lp, id, _| {
                    lp.dispatch_signals(id);
                })?;
                self.set_io_ref(src, false);
                self.signals.source = Some(src);
            }
        }
        let id = self.signals.listeners.insert(Listener {
            signum,
            cb: Some(Box::new(cb)),
            refed: false,
        });
        Ok(SignalId(id))
    }

    /// Removes a signal listener. Returns whether the id was live.
    pub fn off_signal(&mut self, id: SignalId) -> bool {
        match self.signals.listeners.remove(id.0) {
            Some(l) => {
                if l.refed {
                    self.signals.refed -= 1;
                }
                true
            }
            None => false,
        }
    }

    pub(crate) fn set_signal_ref(&mut self, id: SignalId, on: bool) {
        if let Some(l) = self.signals.listeners.get_mut(id.0)
            && l.refed != on
        {
            l.refed = on;
            if on {
                self.signals.refed += 1;
            } else {
                self.signals.refed -= 1;
            }
        }
    }

    /// The ref'd signal listeners.
    pub(crate) fn refed_signals(&self) -> impl Iterator<Item = SignalId> + '_ {
        self.signals.listeners.keys_where(|l| l.refed).map(SignalId)
    }

    pub(crate) fn signal_has_ref(&self, id: SignalId) -> bool {
        self.signals.listeners.get(id.0).is_some_and(|l| l.refed)
    }

    fn dispatch_signals(&mut self, src: IoId) {
        let Some(signals) = self.io_mut::<Signals>(src) else {
            return;
        };
        let arrived: Vec<i32> = signals.pending().collect();
        for signum in arrived {
            let ids: Vec<SignalId> = self
                .signals
                .listeners
                .iter()
                .filter(|(_, l)| l.signum == signum)
                .map(|(k, _)| SignalId(k))
                .collect();
            for id in ids {
                let Some(mut cb) = self
                    .signals
                    .listeners
                    .get_mut(id.0)
                    .and_then(|l| l.cb.take())
                else {
                    continue;
                };
                self.invoke(|lp| cb(lp, signum));
                if let Some(l) = self.signals.listeners.get_mut(id.0) {
                    l.cb = Some(cb);
                }
                if self.halted() {
                    return;
                }
            }
        }
    }
}
