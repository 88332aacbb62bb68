//! `Evictor`: which clean disk entries go when the disk tier is over its limit. S3-FIFO (Yang et al.,
//! SOSP 2023): frequency-aware and scan-resistant like TinyLFU, ~28 bytes per entry in memory.
//!
//! New entries enter a small FIFO (10% of the bytes). Leaving it, an entry read again since it came
//! in moves to the main FIFO; one never read again is evicted and remembered in a ghost list, so that
//! when it comes back it goes straight to main. Leaving main, an entry read since its last pass gets
//! another pass (its count decremented); one that was not is evicted. A one-off scan therefore
//! only churns the small FIFO and never flushes the working set.
//!
//! Memory: a million entries are what a Perch on a small machine tracks, so the per-entry state is
//! kept in sorted parallel arrays (id, size with flags, key hash: 20 bytes) found by binary search,
//! plus the id in a queue (8 bytes). A hash map would take 50 MB for the same million (its table
//! rounds up to a power of two and keeps an eighth empty).

use std::collections::{HashMap, HashSet, VecDeque};

/// How often an entry was read while in a queue, capped.
const MAX_FREQ: u8 = 3;

// The flag bits of a packed size; the size itself is below them (objects up to 2^60 bytes).
const FREQ_SHIFT: u32 = 62;
const IN_MAIN: u64 = 1 << 61;
const DEAD: u64 = 1 << 60;
const SIZE_MASK: u64 = DEAD - 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Slot {
    size: u64,
    /// The low 32 bits of the key hash: all the ghost list needs (a collision only sends an
    /// object straight to main).
    key_hash: u32,
    freq: u8,
    in_main: bool,
}

impl Slot {
    fn pack(&self) -> u64 {
        (self.size & SIZE_MASK) | (u64::from(self.freq) << FREQ_SHIFT) | if self.in_main { IN_MAIN } else { 0 }
    }

    fn unpack(packed: u64, key_hash: u32) -> Slot {
        Slot {
            size: packed & SIZE_MASK,
            key_hash,
            freq: (packed >> FREQ_SHIFT) as u8,
            in_main: packed & IN_MAIN != 0,
        }
    }
}

/// Entries by blob id. Ids are handed out in increasing order, so most inserts append to the
/// sorted arrays; the others (a version that became clean after newer fills) wait in `recent`
/// until they are merged in. Removed entries are marked dead and dropped at the next merge.
#[derive(Debug, Default)]
struct Slots {
    ids: Vec<u64>,
    packed: Vec<u64>,
    hashes: Vec<u32>,
    recent: HashMap<u64, Slot>,
    dead: usize,
}

impl Slots {
    fn len(&self) -> usize {
        self.ids.len() - self.dead + self.recent.len()
    }

    fn position(&self, id: u64) -> Option<usize> {
        let i = self.ids.binary_search(&id).ok()?;
        (self.packed[i] & DEAD == 0).then_some(i)
    }

    fn get(&self, id: u64) -> Option<Slot> {
        match self.position(id) {
            Some(i) => Some(Slot::unpack(self.packed[i], self.hashes[i])),
            None => self.recent.get(&id).copied(),
        }
    }

    fn contains(&self, id: u64) -> bool {
        self.position(id).is_some() || self.recent.contains_key(&id)
    }

    /// Changes the slot of `id` in place (one search); returns it as changed.
    fn modify(&mut self, id: u64, change: impl FnOnce(&mut Slot)) -> Option<Slot> {
        match self.position(id) {
            Some(i) => {
                let mut slot = Slot::unpack(self.packed[i], self.hashes[i]);
                change(&mut slot);
                self.packed[i] = slot.pack();
                self.hashes[i] = slot.key_hash;
                Some(slot)
            }
            None => self.recent.get_mut(&id).map(|slot| {
                change(slot);
                *slot
            }),
        }
    }

    fn insert(&mut self, id: u64, slot: Slot) {
        if self.ids.last().is_none_or(|last| *last < id) {
            self.ids.push(id);
            self.packed.push(slot.pack());
            self.hashes.push(slot.key_hash);
        } else {
            self.recent.insert(id, slot);
            if self.recent.len() > (self.ids.len() / 8).max(1024) {
                self.merge();
            }
        }
    }

    fn remove(&mut self, id: u64) -> Option<Slot> {
        match self.position(id) {
            Some(i) => {
                let slot = Slot::unpack(self.packed[i], self.hashes[i]);
                self.packed[i] |= DEAD;
                self.dead += 1;
                if self.dead > (self.ids.len() / 4).max(1024) {
                    self.merge();
                }
                Some(slot)
            }
            None => self.recent.remove(&id),
        }
    }

    /// Drops the dead entries and merges `recent` into the sorted arrays, in place: no second
    /// copy of the arrays is ever held.
    fn merge(&mut self) {
        let mut live = 0;
        for i in 0..self.ids.len() {
            if self.packed[i] & DEAD == 0 {
                self.ids[live] = self.ids[i];
                self.packed[live] = self.packed[i];
                self.hashes[live] = self.hashes[i];
                live += 1;
            }
        }
        self.dead = 0;
        let mut recent: Vec<(u64, Slot)> = std::mem::take(&mut self.recent).into_iter().collect();
        recent.sort_unstable_by_key(|(id, _)| *id);
        let total = live + recent.len();
        self.ids.resize(total, 0);
        self.packed.resize(total, 0);
        self.hashes.resize(total, 0);
        // Merge from the back: the free room is at the end.
        let (mut i, mut j, mut k) = (live, recent.len(), total);
        while j > 0 {
            k -= 1;
            if i > 0 && self.ids[i - 1] > recent[j - 1].0 {
                i -= 1;
                self.ids[k] = self.ids[i];
                self.packed[k] = self.packed[i];
                self.hashes[k] = self.hashes[i];
            } else {
                j -= 1;
                let (id, slot) = recent[j];
                self.ids[k] = id;
                self.packed[k] = slot.pack();
                self.hashes[k] = slot.key_hash;
            }
        }
        if self.ids.capacity() > 2 * total + 1024 {
            self.ids.shrink_to_fit();
            self.packed.shrink_to_fit();
            self.hashes.shrink_to_fit();
        }
    }

    fn reserve(&mut self, additional: usize) {
        self.ids.reserve_exact(additional);
        self.packed.reserve_exact(additional);
        self.hashes.reserve_exact(additional);
    }

    fn heap_bytes(&self) -> usize {
        // Vectors grown by pushing have touched only their length (a reallocation copies that).
        self.ids.len() * 20 + self.recent.capacity() * 25
    }
}

/// The replacement policy of the disk tier. Entries are named by their blob id; `key_hash` names
/// the object across versions (for the ghost list).
#[derive(Debug)]
pub(crate) struct Evictor {
    capacity: u64,
    small_used: u64,
    main_used: u64,
    slots: Slots,
    // Queues hold ids; an id no longer in `slots` (removed) is skipped when popped, and dropped
    // when the queues are compacted.
    small: VecDeque<u64>,
    main: VecDeque<u64>,
    ghost: HashSet<u32>,
    ghost_order: VecDeque<u32>,
    /// Pinned entries (the policy's `cache = "pin"`): counted, never evicted.
    pinned: HashMap<u64, u64>,
    pinned_used: u64,
}

impl Evictor {
    pub(crate) fn new(capacity_bytes: u64) -> Self {
        Self {
            capacity: capacity_bytes,
            small_used: 0,
            main_used: 0,
            slots: Slots::default(),
            small: VecDeque::new(),
            main: VecDeque::new(),
            ghost: HashSet::new(),
            ghost_order: VecDeque::new(),
            pinned: HashMap::new(),
            pinned_used: 0,
        }
    }

    pub(crate) fn capacity(&self) -> u64 {
        self.capacity
    }

    /// A new limit; entries beyond a lower one go at the next insert or shrink.
    pub(crate) fn set_capacity(&mut self, capacity_bytes: u64) {
        self.capacity = capacity_bytes;
    }

    /// Bytes of the entries it tracks.
    pub(crate) fn used(&self) -> u64 {
        self.small_used + self.main_used + self.pinned_used
    }

    pub(crate) fn len(&self) -> usize {
        self.slots.len() + self.pinned.len()
    }

    #[cfg(test)]
    pub(crate) fn contains(&self, id: u64) -> bool {
        self.slots.contains(id) || self.pinned.contains_key(&id)
    }

    /// The memory it holds, in bytes (counted against `--cache-memory-bytes`).
    pub(crate) fn heap_bytes(&self) -> usize {
        self.slots.heap_bytes()
            + (self.small.capacity() + self.main.capacity()) * 8
            + self.ghost.capacity() * 5
            + self.ghost_order.capacity() * 4
            + self.pinned.capacity() * 16
    }

    /// Makes room for `additional` more entries at once (a rebuild knows its count: growing the
    /// queue step by step would hold the old and the new buffer at the same time, again and again).
    pub(crate) fn reserve(&mut self, additional: usize) {
        self.slots.reserve(additional);
        self.small.reserve_exact(additional);
    }

    /// Starts tracking a new entry; returns the ids to evict to stay within capacity, oldest first.
    /// An entry larger than the whole capacity is refused: its own id comes back, nothing else goes.
    pub(crate) fn insert(&mut self, id: u64, key_hash: u64, size: u64) -> Vec<u64> {
        if self.slots.contains(id) {
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
        self.compact_queues();
        self.shrink_to(self.capacity)
    }

    /// Starts tracking a pinned entry: it counts against the capacity and is never evicted (the
    /// others make room for it); returns the ids to evict. Pinned entries alone beyond the capacity
    /// stay: only what is not pinned leaves.
    pub(crate) fn insert_pinned(&mut self, id: u64, size: u64) -> Vec<u64> {
        if self.slots.contains(id) || self.pinned.contains_key(&id) {
            return Vec::new();
        }
        self.pinned.insert(id, size);
        self.pinned_used += size;
        self.shrink_to(self.capacity)
    }

    /// Records a read of `id`.
    pub(crate) fn touch(&mut self, id: u64) {
        self.slots.modify(id, |slot| slot.freq = (slot.freq + 1).min(MAX_FREQ));
    }

    /// Stops tracking `id` (deleted or overwritten); its bytes no longer count.
    pub(crate) fn remove(&mut self, id: u64) {
        if let Some(size) = self.pinned.remove(&id) {
            self.pinned_used -= size;
        }
        if let Some(slot) = self.slots.remove(id) {
            if slot.in_main {
                self.main_used -= slot.size;
            } else {
                self.small_used -= slot.size;
            }
        }
    }

    /// Evicts until at most `limit` bytes are tracked; returns the evicted ids.
    pub(crate) fn shrink_to(&mut self, limit: u64) -> Vec<u64> {
        let mut evicted = Vec::new();
        while self.used() > limit {
            match self.evict_one() {
                Some(id) => evicted.push(id),
                None => break,
            }
        }
        evicted
    }

    /// Removed entries leave their ids in the queues until popped, which only eviction does: a
    /// cache that never fills would keep them forever. Drops them once they outnumber the live.
    fn compact_queues(&mut self) {
        let queued = self.small.len() + self.main.len();
        if queued <= 2 * self.slots.len() + 1024 {
            return;
        }
        let slots = &self.slots;
        self.small.retain(|id| slots.get(*id).is_some_and(|s| !s.in_main));
        self.main.retain(|id| slots.get(*id).is_some_and(|s| s.in_main));
        self.small.shrink_to_fit();
        self.main.shrink_to_fit();
    }

    fn evict_one(&mut self) -> Option<u64> {
        loop {
            let small_target = self.capacity / 10;
            let from_small = self.small_used > small_target || self.main_used == 0;
            if from_small {
                let id = self.small.pop_front()?;
                let Some(mut slot) = self.slots.get(id) else { continue };
                if slot.in_main {
                    continue;
                }
                if slot.freq > 0 {
                    slot.freq = 0;
                    slot.in_main = true;
                    self.slots.modify(id, |s| *s = slot);
                    self.small_used -= slot.size;
                    self.main_used += slot.size;
                    self.main.push_back(id);
                    continue;
                }
                self.slots.remove(id);
                self.small_used -= slot.size;
                self.remember(slot.key_hash);
                return Some(id);
            } else {
                let id = self.main.pop_front()?;
                let Some(mut slot) = self.slots.get(id) else { continue };
                if !slot.in_main {
                    continue;
                }
                if slot.freq > 0 {
                    slot.freq -= 1;
                    self.slots.modify(id, |s| *s = slot);
                    self.main.push_back(id);
                    continue;
                }
                self.slots.remove(id);
                self.main_used -= slot.size;
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
    fn pinned_entries_count_and_are_never_evicted() {
        let mut e = Evictor::new(100);
        assert!(e.insert_pinned(1, 40).is_empty());
        for id in 2..50 {
            e.insert(id, id, 10);
            assert!(e.used() <= 100);
        }
        assert!(e.contains(1), "the pinned entry stays through a scan");
        assert_eq!(e.used(), 100, "it counts: 40 pinned and 6 others");
        // Pinned beyond the capacity: only what is not pinned leaves.
        let evicted = e.insert_pinned(100, 90);
        assert_eq!(evicted.len(), 6);
        assert!(e.contains(1) && e.contains(100));
        assert_eq!(e.used(), 130);
        e.remove(100);
        assert_eq!(e.used(), 40);
        assert_eq!(e.len(), 1);
    }

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
    #[test]
    fn slots_agree_with_a_map_through_out_of_order_inserts_and_removals() {
        // A deterministic mix: mostly increasing ids, some older ones (versions that became clean
        // late), removals; after every step the arrays must say what a plain map says.
        let mut slots = Slots::default();
        let mut model: HashMap<u64, Slot> = HashMap::new();
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut next = 10_000u64;
        for step in 0..60_000u64 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let slot = Slot {
                size: x % 5000 + 1,
                key_hash: (x >> 20) as u32,
                freq: (x % 4) as u8,
                in_main: x.is_multiple_of(3),
            };
            match x % 10 {
                0..=5 => {
                    next += 1 + x % 3;
                    slots.insert(next, slot);
                    model.insert(next, slot);
                }
                6 => {
                    let id = x % next;
                    if let std::collections::hash_map::Entry::Vacant(v) = model.entry(id) {
                        slots.insert(id, slot);
                        v.insert(slot);
                    }
                }
                7 | 8 => {
                    let id = x % next;
                    assert_eq!(slots.remove(id), model.remove(&id), "remove {id} at step {step}");
                }
                _ => {
                    let id = x % next;
                    if model.contains_key(&id) {
                        slots.modify(id, |s| *s = slot);
                        model.insert(id, slot);
                    }
                }
            }
            assert_eq!(slots.len(), model.len());
        }
        for (id, slot) in &model {
            assert_eq!(slots.get(*id), Some(*slot));
        }
        for id in 0..next {
            assert_eq!(slots.contains(id), model.contains_key(&id));
        }
    }

    #[test]
    fn a_million_entries_take_under_30_mb() {
        let mut e = Evictor::new(u64::MAX / 4);
        e.reserve(1_000_000);
        // In last-read order, not id order, as a rebuild feeds them.
        for i in 0..1_000_000u64 {
            let id = (i * 7_919) % 1_000_003;
            e.insert(id, id.wrapping_mul(0x9E37_79B9), 1024);
        }
        assert_eq!(e.len(), 1_000_000);
        let bytes = e.heap_bytes();
        assert!(bytes < 30_000_000, "{bytes} bytes for a million entries");
        assert!(bytes > 20_000_000, "{bytes}: the count misses something");
    }

    #[test]
    fn removed_ids_do_not_pile_up_in_the_queues() {
        let mut e = Evictor::new(u64::MAX / 4);
        for id in 0..100_000u64 {
            e.insert(id, id, 10);
            if id >= 10 {
                e.remove(id - 10); // an object overwritten again and again: never evicted
            }
        }
        assert_eq!(e.len(), 10);
        assert!(e.small.len() + e.main.len() <= 2 * 10 + 1024 + 1);
    }
}
