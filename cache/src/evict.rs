//! `Evictor`: which clean disk entries go when the disk tier is over its limit. S3-FIFO (Yang et al.,
//! SOSP 2023): frequency-aware and scan-resistant like TinyLFU, O(1) per operation, ~50 bytes per entry
//! (a 16-byte slot in a hash map by blob id, and the id in a queue).
//!
//! New entries enter a small FIFO (10% of the bytes). Leaving it, an entry read again since it came
//! in moves to the main FIFO; one never read again is evicted and remembered in a ghost list, so that
//! when it comes back it goes straight to main. Leaving main, an entry read since its last pass gets
//! another pass (its count decremented); one that was not is evicted. A one-off scan therefore
//! only churns the small FIFO and never flushes the working set.

use std::collections::{HashMap, HashSet, VecDeque};

/// How often an entry was read while in a queue, capped.
const MAX_FREQ: u8 = 3;

#[derive(Debug, Clone, Copy)]
struct Slot {
    size: u64,
    /// The low 32 bits of the key hash: all the ghost list needs (a collision only sends an
    /// object straight to main), and it keeps the slot at 16 bytes.
    key_hash: u32,
    freq: u8,
    in_main: bool,
}

/// The replacement policy of the disk tier. Entries are named by their blob id; `key_hash` names
/// the object across versions (for the ghost list).
#[derive(Debug)]
pub struct Evictor {
    capacity: u64,
    small_used: u64,
    main_used: u64,
    slots: HashMap<u64, Slot>,
    // Queues hold ids; an id no longer in `slots` (removed) is skipped when popped.
    small: VecDeque<u64>,
    main: VecDeque<u64>,
    ghost: HashSet<u32>,
    ghost_order: VecDeque<u32>,
}

impl Evictor {
    pub fn new(capacity_bytes: u64) -> Self {
        Self {
            capacity: capacity_bytes,
            small_used: 0,
            main_used: 0,
            slots: HashMap::new(),
            small: VecDeque::new(),
            main: VecDeque::new(),
            ghost: HashSet::new(),
            ghost_order: VecDeque::new(),
        }
    }

    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    /// Bytes of the entries it tracks.
    pub fn used(&self) -> u64 {
        self.small_used + self.main_used
    }

    pub fn len(&self) -> usize {
        self.slots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    pub fn contains(&self, id: u64) -> bool {
        self.slots.contains_key(&id)
    }

    /// Makes room for `additional` more entries at once (a rebuild knows its count: growing the
    /// map step by step would hold the old and the new table at the same time, again and again).
    pub fn reserve(&mut self, additional: usize) {
        self.slots.reserve(additional);
        self.small.reserve(additional);
    }

    /// Starts tracking a new entry; returns the ids to evict to stay within capacity, oldest first.
    /// An entry larger than the whole capacity is refused: its own id comes back, nothing else goes.
    pub fn insert(&mut self, id: u64, key_hash: u64, size: u64) -> Vec<u64> {
        if self.slots.contains_key(&id) {
            return Vec::new();
        }
        if size > self.capacity {
            return vec![id];
        }
        let key_hash = key_hash as u32;
        let in_main = self.ghost.remove(&key_hash);
        self.slots.insert(
            id,
            Slot {
                size,
                key_hash,
                freq: 0,
                in_main,
            },
        );
        if in_main {
            self.main.push_back(id);
            self.main_used += size;
        } else {
            self.small.push_back(id);
            self.small_used += size;
        }
        self.shrink_to(self.capacity)
    }

    /// Records a read of `id`.
    pub fn touch(&mut self, id: u64) {
        if let Some(slot) = self.slots.get_mut(&id) {
            slot.freq = (slot.freq + 1).min(MAX_FREQ);
        }
    }

    /// Stops tracking `id` (deleted or overwritten); its bytes no longer count.
    pub fn remove(&mut self, id: u64) {
        if let Some(slot) = self.slots.remove(&id) {
            if slot.in_main {
                self.main_used -= slot.size;
            } else {
                self.small_used -= slot.size;
            }
        }
    }

    /// Evicts until at most `limit` bytes are tracked; returns the evicted ids.
    pub fn shrink_to(&mut self, limit: u64) -> Vec<u64> {
        let mut evicted = Vec::new();
        while self.used() > limit {
            match self.evict_one() {
                Some(id) => evicted.push(id),
                None => break,
            }
        }
        evicted
    }

    fn evict_one(&mut self) -> Option<u64> {
        loop {
            let small_target = self.capacity / 10;
            let from_small = self.small_used > small_target || self.main_used == 0;
            if from_small {
                let id = self.small.pop_front()?;
                let Some(slot) = self.slots.get_mut(&id) else { continue };
                if slot.in_main {
                    continue;
                }
                if slot.freq > 0 {
                    slot.freq = 0;
                    slot.in_main = true;
                    let size = slot.size;
                    self.small_used -= size;
                    self.main_used += size;
                    self.main.push_back(id);
                    continue;
                }
                let slot = *slot;
                self.slots.remove(&id);
                self.small_used -= slot.size;
                self.remember(slot.key_hash);
                return Some(id);
            } else {
                let id = self.main.pop_front()?;
                let Some(slot) = self.slots.get_mut(&id) else { continue };
                if !slot.in_main {
                    continue;
                }
                if slot.freq > 0 {
                    slot.freq -= 1;
                    self.main.push_back(id);
                    continue;
                }
                let size = slot.size;
                self.slots.remove(&id);
                self.main_used -= size;
                return Some(id);
            }
        }
    }

    fn remember(&mut self, key_hash: u32) {
        if self.ghost.insert(key_hash) {
            self.ghost_order.push_back(key_hash);
        }
        // The ghost list remembers about as many objects as the cache holds.
        let cap = self.slots.len().max(1024);
        while self.ghost_order.len() > cap {
            if let Some(old) = self.ghost_order.pop_front() {
                self.ghost.remove(&old);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stays_within_capacity() {
        let mut e = Evictor::new(100);
        let mut evicted = Vec::new();
        for id in 0..50 {
            evicted.extend(e.insert(id, id, 10));
            assert!(e.used() <= 100);
        }
        assert_eq!(e.len(), 10);
        assert_eq!(evicted.len(), 40);
        // FIFO order among entries never read.
        assert_eq!(&evicted[..3], &[0, 1, 2]);
    }

    #[test]
    fn a_scan_does_not_flush_the_working_set() {
        let mut e = Evictor::new(1000);
        // A working set of 50 entries, each read a few times.
        for id in 0..50 {
            e.insert(id, id, 10);
        }
        for _ in 0..3 {
            for id in 0..50 {
                e.touch(id);
            }
        }
        // A one-off scan of 1,000 entries read once each (never again).
        for id in 1000..2000 {
            for gone in e.insert(id, id, 10) {
                assert!(gone >= 1000, "working-set entry {gone} evicted by a scan");
            }
        }
        for id in 0..50 {
            assert!(e.contains(id), "working-set entry {id} lost");
        }
        assert!(e.used() <= 1000);
    }

    #[test]
    fn ghosts_come_back_to_main() {
        let mut e = Evictor::new(100);
        e.insert(1, 7, 10);
        for id in 2..30 {
            e.insert(id, 100 + id, 10);
        }
        assert!(!e.contains(1));
        // The same object (key hash 7) comes back as a new blob: straight to main.
        e.insert(99, 7, 10);
        for id in 200..260 {
            e.insert(id, 1000 + id, 10);
        }
        assert!(e.contains(99), "a returning object must survive a burst of new ones");
    }

    #[test]
    fn removal_frees_bytes_and_oversized_entries_leave_at_once() {
        let mut e = Evictor::new(100);
        e.insert(1, 1, 40);
        e.insert(2, 2, 40);
        e.remove(1);
        assert_eq!(e.used(), 40);
        assert!(e.insert(3, 3, 40).is_empty());
        assert_eq!(e.insert(4, 4, 500), vec![4]);
        assert!(e.contains(2) && e.contains(3) && !e.contains(4));
        assert_eq!(e.used(), 80);
        e.remove(42); // unknown: nothing happens
        assert_eq!(e.used(), 80);
    }
}
