//! Generational `Copy` ids and the slot storage that issues them.
//!
//! Every loop object (timer, immediate, I/O handle, watcher, signal listener, task) lives in a
//! [`Slots`] table. Its id is the slot index plus the slot's generation at insertion time; the
//! generation is bumped whenever the slot is emptied, so a stale id never reaches a later
//! occupant of the same slot: a stale id cancels nothing.

use std::fmt;

/// Index + generation of one slot. Private to the crate; public ids wrap it.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct Key {
    pub(crate) idx: u32,
    pub(crate) gen_: u32,
}

impl Key {
    /// Packs the key into a `usize` (used for mio tokens and waker data).
    pub(crate) fn to_usize(self) -> usize {
        (u64::from(self.gen_) << 32 | u64::from(self.idx)) as usize
    }

    /// Inverse of [`Key::to_usize`].
    pub(crate) fn from_usize(v: usize) -> Key {
        let v = v as u64;
        Key {
            idx: v as u32,
            gen_: (v >> 32) as u32,
        }
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}v{}", self.idx, self.gen_)
    }
}

/// A hasher for maps keyed by ids this process issues itself (loop handles, worker ids,
/// listener ids, hand-off numbers): the key is already a small unique number, so one
/// multiplication spreads it (SipHash's protection against chosen keys is not needed for
/// ids nobody else picks, and costs far more on a per-connection path).
#[derive(Default, Clone, Copy)]
pub(crate) struct IdHasher(u64);

impl std::hash::Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(u64::from(b));
        }
    }
    fn write_u32(&mut self, v: u32) {
        self.write_u64(u64::from(v));
    }
    fn write_u64(&mut self, v: u64) {
        self.0 = (self.0.rotate_left(5) ^ v).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
    fn write_usize(&mut self, v: usize) {
        self.write_u64(v as u64);
    }
}

/// A `HashMap` keyed by loop ids (see [`IdHasher`]).
pub(crate) type IdMap<K, V> =
    std::collections::HashMap<K, V, std::hash::BuildHasherDefault<IdHasher>>;

/// A `HashSet` of loop ids (see [`IdHasher`]).
pub(crate) type IdSet<K> = std::collections::HashSet<K, std::hash::BuildHasherDefault<IdHasher>>;

macro_rules! define_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
        pub struct $name(pub(crate) crate::rt::id::Key);
    };
}
pub(crate) use define_id;

struct Slot<T> {
    gen_: u32,
    val: Option<T>,
}

/// A vector of slots with a free list; ids carry the slot generation.
pub(crate) struct Slots<T> {
    slots: Vec<Slot<T>>,
    free: Vec<u32>,
    len: usize,
}

impl<T> Default for Slots<T> {
    fn default() -> Self {
        Slots {
            slots: Vec::new(),
            free: Vec::new(),
            len: 0,
        }
    }
}

impl<T> Slots<T> {
    /// Stores `val` and returns its key.
    pub(crate) fn insert(&mut self, val: T) -> Key {
        self.len += 1;
        if let Some(idx) = self.free.pop() {
            let slot = &mut self.slots[idx as usize];
            slot.val = Some(val);
            return Key {
                idx,
                gen_: slot.gen_,
            };
        }
        let idx = u32::try_from(self.slots.len()).unwrap_or(u32::MAX);
        assert!(idx < u32::MAX, "more than 2^32-1 live loop objects");
        self.slots.push(Slot {
            gen_: 0,
            val: Some(val),
        });
        Key { idx, gen_: 0 }
    }

    /// The value under `key`, if the key is current.
    pub(crate) fn get(&self, key: Key) -> Option<&T> {
        match self.slots.get(key.idx as usize) {
            Some(s) if s.gen_ == key.gen_ => s.val.as_ref(),
            _ => None,
        }
    }

    /// The value under `key`, if the key is current.
    pub(crate) fn get_mut(&mut self, key: Key) -> Option<&mut T> {
        match self.slots.get_mut(key.idx as usize) {
            Some(s) if s.gen_ == key.gen_ => s.val.as_mut(),
            _ => None,
        }
    }

    /// The live value at a raw index (for intrusive lists whose links are indices).
    pub(crate) fn at_mut(&mut self, idx: u32) -> Option<&mut T> {
        self.slots
            .get_mut(idx as usize)
            .and_then(|s| s.val.as_mut())
    }

    /// The current key of a live slot index.
    pub(crate) fn key_at(&self, idx: u32) -> Option<Key> {
        let s = self.slots.get(idx as usize)?;
        s.val.as_ref().map(|_| Key { idx, gen_: s.gen_ })
    }

    /// Removes and returns the value under `key`, if the key is current.
    pub(crate) fn remove(&mut self, key: Key) -> Option<T> {
        let slot = self.slots.get_mut(key.idx as usize)?;
        if slot.gen_ != key.gen_ {
            return None;
        }
        let val = slot.val.take()?;
        slot.gen_ = slot.gen_.wrapping_add(1);
        self.free.push(key.idx);
        self.len -= 1;
        Some(val)
    }

    /// How many values are stored.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// The keys of the live values for which `pred` holds.
    pub(crate) fn keys_where<'a>(
        &'a self,
        pred: impl Fn(&T) -> bool + 'a,
    ) -> impl Iterator<Item = Key> + 'a {
        self.iter().filter(move |(_, v)| pred(v)).map(|(k, _)| k)
    }

    /// Iterates over live values with their keys.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (Key, &T)> {
        self.slots.iter().enumerate().filter_map(|(i, s)| {
            s.val.as_ref().map(|v| {
                (
                    Key {
                        idx: i as u32,
                        gen_: s.gen_,
                    },
                    v,
                )
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stale_key_reaches_nothing() {
        let mut s = Slots::default();
        let a = s.insert(1);
        assert_eq!(s.remove(a), Some(1));
        let b = s.insert(2);
        assert_eq!(a.idx, b.idx);
        assert_eq!(s.get(a), None);
        assert_eq!(s.remove(a), None);
        assert_eq!(s.get(b), Some(&2));
        assert_eq!(Key::from_usize(b.to_usize()), b);
    }
}
