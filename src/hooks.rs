//! Lists of user handlers that may be re-entered: while they run they are taken out of
//! their cell, so a handler can add handlers or call back into its owner; handlers added
//! meanwhile run from the next event on.

use std::cell::RefCell;

/// A list of handlers of type `H`.
pub(crate) struct Hooks<H>(RefCell<Vec<H>>);

impl<H> Default for Hooks<H> {
    fn default() -> Self {
        Hooks(RefCell::new(Vec::new()))
    }
}

impl<H> Hooks<H> {
    /// Adds a handler; returns how many there are now.
    pub(crate) fn push(&self, h: H) -> usize {
        let mut list = self.0.borrow_mut();
        list.push(h);
        list.len()
    }

    /// Whether there is no handler (outside a run).
    pub(crate) fn is_empty(&self) -> bool {
        self.0.borrow().is_empty()
    }

    /// Calls `call` with every handler, in the order they were added.
    pub(crate) fn run(&self, mut call: impl FnMut(&mut H)) {
        let mut running = std::mem::take(&mut *self.0.borrow_mut());
        for h in running.iter_mut() {
            call(h);
        }
        let mut list = self.0.borrow_mut();
        running.append(&mut list);
        *list = running;
    }
}
