//! Rolling reload and scaling, both through the retire path.

use std::collections::VecDeque;

use super::{Cause, Reload, Slot, Supervisor, SupervisorEvent};
use crate::rt::EventLoop;

impl Supervisor {
    /// Replaces every worker through the retire path, `concurrency` at a time; listeners
    /// stay open. `done` gets `Err` (and the old workers keep serving) if a replacement
    /// misses its deadline or dies.
    pub fn reload<F>(&self, lp: &mut EventLoop, done: F)
    where
        F: FnOnce(&mut EventLoop, Result<(), String>) + 'static,
    {
        {
            let mut inner = self.0.borrow_mut();
            if let Some(r) = inner.reload.as_mut() {
                r.done.push(Box::new(done));
                return;
            }
            inner.generation += 1;
            let queue: VecDeque<u32> = inner.slots.iter().filter_map(|s| s.worker).collect();
            inner.reload = Some(Reload {
                queue,
                active: 0,
                failed: None,
                done: vec![Box::new(done)],
            });
        }
        log::info!("rolling reload started");
        if let Some(n) = &self.0.borrow().notifier {
            n.reloading();
            n.status("reloading");
        }
        self.reload_fill(lp);
    }

    /// One replacement of the reload finished (`failure`: it failed).
    pub(super) fn reload_step(&self, lp: &mut EventLoop, failure: Option<String>) {
        {
            let mut inner = self.0.borrow_mut();
            let Some(r) = inner.reload.as_mut() else {
                return;
            };
            r.active = r.active.saturating_sub(1);
            if failure.is_some() && r.failed.is_none() {
                r.failed = failure;
                r.queue.clear();
            }
        }
        self.reload_fill(lp);
    }

    fn reload_fill(&self, lp: &mut EventLoop) {
        loop {
            let next = {
                let mut inner = self.0.borrow_mut();
                let k = inner.opts.concurrency.max(1);
                let Some(r) = inner.reload.as_mut() else {
                    return;
                };
                if r.active >= k {
                    return;
                }
                match r.queue.pop_front() {
                    Some(w) => {
                        r.active += 1;
                        Some(w)
                    }
                    None if r.active == 0 => None,
                    None => return,
                }
            };
            match next {
                Some(w) => {
                    let alive = self.0.borrow().meta.contains_key(&w);
                    if alive {
                        self.retire(lp, w, Cause::Reload);
                    } else {
                        self.reload_step(lp, None);
                        return;
                    }
                }
                None => {
                    let r = self.0.borrow_mut().reload.take();
                    if let Some(r) = r {
                        let result = match r.failed {
                            None => Ok(()),
                            Some(e) => Err(e),
                        };
                        match &result {
                            Ok(()) => log::info!("rolling reload finished"),
                            Err(e) => log::error!("rolling reload aborted: {e}"),
                        }
                        if let Some(n) = &self.0.borrow().notifier {
                            n.ready();
                            n.status(match &result {
                                Ok(()) => "reloaded",
                                Err(_) => "reload failed; previous generation serving",
                            });
                        }
                        self.emit(lp, SupervisorEvent::ReloadFinished(result.clone()));
                        for cb in r.done {
                            cb(lp, result.clone());
                        }
                    }
                    return;
                }
            }
        }
    }

    /// Sets the number of workers: forks new slots, or retires the highest slots without
    /// replacement (they drain first).
    pub fn scale(&self, lp: &mut EventLoop, n: usize) {
        loop {
            let active = self.0.borrow().slots.iter().filter(|s| s.active).count();
            if active == n {
                return;
            }
            if active < n {
                let slot = {
                    let mut inner = self.0.borrow_mut();
                    match inner.slots.iter().position(|s| !s.active) {
                        Some(i) => {
                            inner.slots[i].active = true;
                            inner.slots[i].tripped = false;
                            inner.slots[i].unstable.clear();
                            i
                        }
                        None => {
                            inner.slots.push(Slot {
                                active: true,
                                ..Slot::default()
                            });
                            inner.slots.len() - 1
                        }
                    }
                };
                if let Err(e) = self.spawn(lp, slot, None) {
                    log::error!("cannot scale up: {e}");
                    return;
                }
            } else {
                let victim = {
                    let mut inner = self.0.borrow_mut();
                    let Some(i) = inner.slots.iter().rposition(|s| s.active) else {
                        return;
                    };
                    inner.slots[i].active = false;
                    let w = inner.slots[i].worker.take();
                    if let Some(t) = inner.slots[i].timer.take() {
                        drop(inner);
                        lp.clear_timeout(t);
                        inner = self.0.borrow_mut();
                    }
                    if let Some(m) = w.and_then(|w| inner.meta.get_mut(&w)) {
                        m.removing = true;
                    }
                    w
                };
                if let Some(w) = victim {
                    self.drain(lp, w);
                }
            }
        }
    }

    /// Active slots (the target number of workers).
    pub fn size(&self) -> usize {
        self.0.borrow().slots.iter().filter(|s| s.active).count()
    }
}
