//! The program's own state, kept on the loop.
//!
//! Every callback receives `&mut EventLoop`, so state kept on the loop reaches every
//! callback without `Rc<RefCell<…>>`: one value per type, created on first use.
//!
//! ```
//! use forkloop::EventLoop;
//!
//! #[derive(Default)]
//! struct Hits(u32);
//!
//! let mut lp = EventLoop::new()?;
//! for _ in 0..3 {
//!     lp.set_immediate(|lp| lp.state::<Hits>().0 += 1);
//! }
//! lp.run()?;
//! assert_eq!(lp.state::<Hits>().0, 3);
//! # Ok::<(), std::io::Error>(())
//! ```
//!
//! A value is borrowed from the loop, so copy out what a callback needs before calling
//! the loop again (`let n = lp.state::<Hits>().0; lp.set_timeout(n, …)`). Use a type of
//! your own for each piece of state (a newtype around a common type such as `u32` or a
//! `HashMap`), so that two parts of a program never share a slot by accident.

use std::any::{Any, TypeId};
use std::collections::HashMap;

use super::EventLoop;

/// One value per type.
#[derive(Default)]
pub(super) struct StateMap(HashMap<TypeId, Box<dyn Any>>);

impl EventLoop {
    /// This loop's value of type `T`, created with `T::default()` on first use.
    pub fn state<T: Default + 'static>(&mut self) -> &mut T {
        self.state
            .0
            .entry(TypeId::of::<T>())
            .or_insert_with(|| Box::new(T::default()))
            .downcast_mut()
            .expect("the slot of T holds a T")
    }

    /// Puts `value` on the loop, returning the value of type `T` it replaces, if any. For
    /// state that has no sensible default.
    pub fn set_state<T: 'static>(&mut self, value: T) -> Option<T> {
        self.state
            .0
            .insert(TypeId::of::<T>(), Box::new(value))
            .and_then(|old| old.downcast().ok())
            .map(|b| *b)
    }

    /// This loop's value of type `T`, if one was set or created.
    pub fn try_state<T: 'static>(&mut self) -> Option<&mut T> {
        self.state.0.get_mut(&TypeId::of::<T>())?.downcast_mut()
    }

    /// Removes this loop's value of type `T` and returns it.
    pub fn take_state<T: 'static>(&mut self) -> Option<T> {
        self.state
            .0
            .remove(&TypeId::of::<T>())
            .and_then(|b| b.downcast().ok())
            .map(|b| *b)
    }
}
