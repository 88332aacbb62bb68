//! The journal's in-memory state and its scheduler: which versions are pending, which may be
//! uploaded now. A pure function of the state (no I/O, no clock but the versions' own times), so
//! stages, barriers and write-through are unit-tested here.
//!
//! Rules (docs/write-back.md): ordinary and barrier versions upload in stages (`2 × epoch`, `+1`
//! for the barrier): only versions of the lowest stage still pending start. Write-through versions
//! ignore stages and have upload slots of their own, so a checkpoint's WAL never waits behind the
//! data backlog. Per key, one version is in flight at a time, oldest first; a version whose key has
//! a newer version in the same stage is skipped (released without an upload), never across stages.
//! Every operation is O(log n) in the backlog: the scheduler keeps the set of versions that are
//! ready (oldest of their key, not in flight, not refused) per lane.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::time::{Duration, SystemTime};

use perch_policy::WriteMode;

use crate::journal::record::RecordPut;
use crate::key::ObjectKey;

/// A version not yet confirmed by the origin.
#[derive(Debug, Clone)]
pub(crate) struct Version {
    pub okey: ObjectKey,
    pub put: Option<RecordPut>,
    pub mode: WriteMode,
    pub stage: u64,
    pub acked: SystemTime,
    /// The policy's upload priority: inside one stage, lower goes up first.
    pub priority: perch_policy::Priority,
}

impl Version {
    pub(crate) fn size(&self) -> u64 {
        self.put.as_ref().map_or(0, |p| p.meta.size)
    }

    fn ordered(&self) -> bool {
        self.mode != WriteMode::WriteThrough
    }
}

/// How many uploads each lane may have in flight.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Slots {
    /// Ordinary and barrier versions (`--upload-concurrency`).
    pub ordered: usize,
    /// Write-through versions, beside them.
    pub write_through: usize,
}

/// A version the scheduler handed out: upload it, or (`skip`) release it without an upload, as a
/// newer version of its key in the same stage replaces it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Pick {
    pub seq: u64,
    pub skip: bool,
}

#[derive(Default)]
pub(crate) struct State {
    pub versions: BTreeMap<u64, Version>,
    /// Unconfirmed versions of each key.
    pub keys: BTreeMap<ObjectKey, BTreeSet<u64>>,
    /// Unconfirmed ordered versions by stage (the lowest stage is the one uploading).
    stages: BTreeMap<u64, BTreeSet<u64>>,
    /// Ordered versions that may start once their stage is the lowest: (stage, seq).
    ready_ordered: BTreeSet<(u64, perch_policy::Priority, u64)>,
    /// Write-through versions that may start.
    ready_write_through: BTreeSet<u64>,
    in_flight: HashSet<u64>,
    in_flight_write_through: usize,
    /// Versions the origin refused for good: kept, shown, not retried until the next start.
    pub failed: BTreeMap<u64, String>,
    /// Of those, the origin's answer (status, code, message) where it was one: what a client
    /// waiting on a write-through version is answered.
    pub answers: BTreeMap<u64, (u16, String, String)>,
    /// Versions whose upload the origin answered, not yet released (the uploader still checks
    /// what the origin holds): a client waiting on one is answered.
    pub in_origin: HashSet<u64>,
    pub dirty_bytes: u64,
    pub last_seq: u64,
    /// The last origin fault the uploader met, while it lasts.
    pub origin_fault: Option<(SystemTime, String)>,
    /// Whether that fault is a throttle (503 SlowDown, 429): the origin asked for less.
    pub origin_throttled: bool,
    /// Versions the uploader is trying again after a transient fault, with the last fault: shown
    /// (`perch journal list`), and what an operator may give up (`given_up`).
    pub retrying: BTreeMap<u64, String>,
    /// Of those, the ones an operator gave up (to drop them): the uploader refuses each before
    /// its next attempt.
    pub given_up: HashSet<u64>,
    /// Versions an operator dropped (one entry a drop, kept until the next start): a client still
    /// waiting on one (write-through) is told it is refused, not that the origin holds it.
    pub dropped: HashSet<u64>,
}

impl State {
    /// Adds an unconfirmed version (at start from the journal, or just committed).
    pub(crate) fn add(&mut self, seq: u64, v: Version) {
        self.dirty_bytes += v.size();
        self.last_seq = self.last_seq.max(seq);
        if v.ordered() {
            self.stages.entry(v.stage).or_default().insert(seq);
        }
        let seqs = self.keys.entry(v.okey.clone()).or_default();
        seqs.insert(seq);
        let first = seqs.first() == Some(&seq);
        self.versions.insert(seq, v);
        if first {
            self.mark_ready(seq);
        }
    }

    /// The origin answered the upload of `seq`; `false` if it is no longer here or was marked.
    pub(crate) fn mark_in_origin(&mut self, seq: u64) -> bool {
        self.versions.contains_key(&seq) && self.in_origin.insert(seq)
    }

    /// Removes a version (confirmed, skipped, or dropped); the next version of its key becomes
    /// ready. Returns it.
    pub(crate) fn remove(&mut self, seq: u64) -> Option<Version> {
        let v = self.versions.remove(&seq)?;
        self.dirty_bytes = self.dirty_bytes.saturating_sub(v.size());
        self.unmark_ready(seq, &v);
        if self.in_flight.remove(&seq) && !v.ordered() {
            self.in_flight_write_through -= 1;
        }
        self.failed.remove(&seq);
        self.answers.remove(&seq);
        self.in_origin.remove(&seq);
        self.retrying.remove(&seq);
        self.given_up.remove(&seq);
        if v.ordered()
            && let Some(set) = self.stages.get_mut(&v.stage)
        {
            set.remove(&seq);
            if set.is_empty() {
                self.stages.remove(&v.stage);
            }
        }
        let mut next = None;
        if let Some(seqs) = self.keys.get_mut(&v.okey) {
            seqs.remove(&seq);
            next = seqs.first().copied();
            if seqs.is_empty() {
                self.keys.remove(&v.okey);
            }
        }
        if let Some(next) = next
            && !self.in_flight.contains(&next)
        {
            self.mark_ready(next);
        }
        Some(v)
    }

    /// The origin refused `seq` for good: it stays, out of the scheduler's hands.
    pub(crate) fn fail(&mut self, seq: u64, error: String, answer: Option<(u16, String, String)>) {
        if let Some(v) = self.versions.get(&seq).cloned() {
            self.unmark_ready(seq, &v);
            if self.in_flight.remove(&seq) && !v.ordered() {
                self.in_flight_write_through -= 1;
            }
            self.failed.insert(seq, error);
            self.retrying.remove(&seq);
            self.given_up.remove(&seq);
            if let Some(answer) = answer {
                self.answers.insert(seq, answer);
            }
        }
    }

    /// An upload whose release could not be recorded (the filesystem was full): the version
    /// leaves the uploader's hands and goes back to the scheduler, to be sent and released again.
    pub(crate) fn requeue(&mut self, seq: u64) {
        let Some(v) = self.versions.get(&seq) else { return };
        let (ordered, okey) = (v.ordered(), v.okey.clone());
        if !self.in_flight.remove(&seq) {
            return;
        }
        if !ordered {
            self.in_flight_write_through -= 1;
        }
        if self.keys.get(&okey).and_then(|seqs| seqs.first()) == Some(&seq) {
            self.mark_ready(seq);
        }
    }

    /// An operator asked to try a refused version again: it goes back to the scheduler.
    pub(crate) fn retry(&mut self, seq: u64) -> bool {
        if self.failed.remove(&seq).is_none() {
            return false;
        }
        self.answers.remove(&seq);
        let first = self
            .versions
            .get(&seq)
            .and_then(|v| self.keys.get(&v.okey))
            .and_then(|seqs| seqs.first().copied());
        if first == Some(seq) {
            self.mark_ready(seq);
        }
        true
    }

    fn mark_ready(&mut self, seq: u64) {
        let Some(v) = self.versions.get(&seq) else { return };
        if self.failed.contains_key(&seq) {
            return;
        }
        if v.ordered() {
            self.ready_ordered.insert((v.stage, v.priority, seq));
        } else {
            self.ready_write_through.insert(seq);
        }
    }

    fn unmark_ready(&mut self, seq: u64, v: &Version) {
        if v.ordered() {
            self.ready_ordered.remove(&(v.stage, v.priority, seq));
        } else {
            self.ready_write_through.remove(&seq);
        }
    }

    /// Hands out the versions that may go now, marking them in flight.
    pub(crate) fn next_uploads(&mut self, slots: Slots) -> Vec<Pick> {
        let mut picked = Vec::new();
        let ordered_in_flight = self.in_flight.len() - self.in_flight_write_through;
        let room = slots.ordered.max(1).saturating_sub(ordered_in_flight);
        if let Some(&lowest) = self.stages.keys().next() {
            let ready: Vec<u64> = self
                .ready_ordered
                .range((lowest, perch_policy::Priority::High, 0)..(lowest + 1, perch_policy::Priority::High, 0))
                .map(|&(_, _, seq)| seq)
                .take(room)
                .collect();
            for seq in ready {
                picked.push(self.start(seq));
            }
        }
        let mut room = slots.write_through.max(1).saturating_sub(self.in_flight_write_through);
        while room > 0 {
            let Some(seq) = self.ready_write_through.first().copied() else {
                break;
            };
            picked.push(self.start(seq));
            room -= 1;
        }
        picked
    }

    fn start(&mut self, seq: u64) -> Pick {
        let Some(v) = self.versions.get(&seq).cloned() else {
            return Pick { seq, skip: false };
        };
        self.unmark_ready(seq, &v);
        self.in_flight.insert(seq);
        if !v.ordered() {
            self.in_flight_write_through += 1;
        }
        // Replaced inside its stage by an ordered version only: a write-through one may still be
        // refused and dropped before its answer, and must not take an acknowledged write with it.
        let skip = v.ordered()
            && self
                .keys
                .get(&v.okey)
                .and_then(|seqs| seqs.range(seq + 1..).next())
                .and_then(|n| self.versions.get(n))
                .is_some_and(|n| n.stage == v.stage && n.ordered());
        Pick { seq, skip }
    }

    pub(crate) fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    /// Whether every version left waits on one the origin refused (itself, a later version of
    /// its key, or a version of a later stage): none uploads, none is ready to, and none will be
    /// until an operator retries or drops the refused ones (or new writes come).
    pub(crate) fn blocked_by_refusals(&self) -> bool {
        if self.failed.is_empty() || !self.in_flight.is_empty() || !self.ready_write_through.is_empty() {
            return false;
        }
        match self.stages.keys().next() {
            None => true,
            Some(&lowest) => self
                .ready_ordered
                .range((lowest, perch_policy::Priority::High, 0)..(lowest + 1, perch_policy::Priority::High, 0))
                .next()
                .is_none(),
        }
    }

    /// The versions released with `seq` when it is skipped: `seq` and the versions of its key
    /// after it that a newer version in the same stage replaces too (oldest first).
    pub(crate) fn skippable_run(&self, seq: u64) -> Vec<u64> {
        let Some(v) = self.versions.get(&seq) else {
            return Vec::new();
        };
        let Some(seqs) = self.keys.get(&v.okey) else {
            return vec![seq];
        };
        let stage = v.stage;
        let mut run = vec![seq];
        let mut later = seqs.range(seq + 1..).peekable();
        while let Some(&next) = later.next() {
            let next_replaced = later
                .peek()
                .and_then(|n| self.versions.get(n))
                .is_some_and(|n| n.stage == stage && n.mode != WriteMode::WriteThrough);
            let same_stage = self
                .versions
                .get(&next)
                .is_some_and(|n| n.stage == stage && n.mode != WriteMode::WriteThrough);
            if !(same_stage && next_replaced) {
                break;
            }
            run.push(next);
        }
        run
    }

    /// How long the oldest unconfirmed version has waited.
    pub(crate) fn oldest_age(&self) -> Duration {
        self.versions
            .first_key_value()
            .and_then(|(_, v)| v.acked.elapsed().ok())
            .unwrap_or_default()
    }

    /// The newest unconfirmed version of `okey`.
    pub(crate) fn newest(&self, okey: &ObjectKey) -> Option<(u64, &Version)> {
        let seq = *self.keys.get(okey)?.last()?;
        self.versions.get(&seq).map(|v| (seq, v))
    }

    /// Whether a key starting with `prefix` has unconfirmed versions.
    pub(crate) fn any_under(&self, prefix: &ObjectKey) -> bool {
        self.keys
            .range(prefix.clone()..)
            .next()
            .is_some_and(|(k, _)| k.starts_with(prefix))
    }

    /// Whether a version of a key under `prefix` may still go up: one not refused (a refused one
    /// waits for an operator, not for the uploader).
    pub(crate) fn uploading_under(&self, prefix: &ObjectKey) -> bool {
        self.keys
            .range(prefix.clone()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .any(|(_, seqs)| seqs.iter().any(|seq| !self.failed.contains_key(seq)))
    }

    /// Whether a version of a key under `prefix` was refused by the origin.
    pub(crate) fn refused_under(&self, prefix: &ObjectKey) -> bool {
        self.failed
            .keys()
            .filter_map(|seq| self.versions.get(seq))
            .any(|v| v.okey.starts_with(prefix))
    }
}

impl State {
    /// How many unconfirmed versions are at or below `upto` (`perch flush` polls this), counted
    /// from whichever end of the backlog is nearer: O(min(below, above)), not O(backlog), since
    /// a flush's `upto` is usually at (or near) the newest version.
    pub(crate) fn pending_upto(&self, upto: u64) -> u64 {
        use std::ops::Bound::{Excluded, Unbounded};
        let mut below = self.versions.range(..=upto);
        let mut above = self.versions.range((Excluded(upto), Unbounded));
        let mut pairs = 0u64;
        loop {
            match (below.next(), above.next()) {
                (None, _) => return pairs,
                (Some(_), None) => return self.versions.len() as u64 - pairs,
                (Some(_), Some(_)) => pairs += 1,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_at_or_below_a_point_are_counted_from_either_end() {
        let mut st = State::default();
        assert_eq!(st.pending_upto(0), 0);
        assert_eq!(st.pending_upto(u64::MAX), 0);
        for seq in [3, 5, 8, 13, 21, 34, 55] {
            st.add(seq, v(&format!("k{seq}"), WriteMode::WriteBack, 0));
        }
        for upto in [0, 2, 3, 4, 5, 12, 13, 20, 21, 40, 55, 56, u64::MAX] {
            let want = st.versions.range(..=upto).count() as u64;
            assert_eq!(st.pending_upto(upto), want, "upto {upto}");
        }
    }

    const SLOTS: Slots = Slots {
        ordered: 16,
        write_through: 4,
    };

    fn v(key: &str, mode: WriteMode, stage: u64) -> Version {
        Version {
            okey: ObjectKey::new("b", key),
            put: None,
            mode,
            stage,
            acked: SystemTime::UNIX_EPOCH,
            priority: perch_policy::Priority::Normal,
        }
    }

    #[test]
    fn inside_a_stage_higher_priorities_go_up_first() {
        use perch_policy::Priority;
        let mut st = State::default();
        let with = |key: &str, stage: u64, priority: Priority| Version {
            priority,
            ..v(key, WriteMode::WriteBack, stage)
        };
        st.add(1, with("d/low", 0, Priority::Low));
        st.add(2, with("d/normal", 0, Priority::Normal));
        st.add(3, with("d/high", 0, Priority::High));
        st.add(4, with("ctl", 1, Priority::High));
        let one = Slots {
            ordered: 1,
            write_through: 1,
        };
        assert_eq!(seqs(&st.next_uploads(one)), [3]);
        st.remove(3);
        assert_eq!(seqs(&st.next_uploads(one)), [2]);
        st.remove(2);
        assert_eq!(
            seqs(&st.next_uploads(one)),
            [1],
            "a later stage waits, whatever its priority"
        );
        st.remove(1);
        assert_eq!(seqs(&st.next_uploads(one)), [4]);
    }

    fn seqs(p: &[Pick]) -> Vec<u64> {
        p.iter().map(|p| p.seq).collect()
    }

    #[test]
    fn a_barrier_waits_for_its_epoch_and_the_next_epoch_for_the_barrier() {
        let mut st = State::default();
        st.add(1, v("d/1", WriteMode::WriteBack, 0));
        st.add(2, v("d/2", WriteMode::WriteBack, 0));
        st.add(3, v("ctl", WriteMode::Barrier, 1));
        st.add(4, v("d/3", WriteMode::WriteBack, 2));
        assert_eq!(seqs(&st.next_uploads(SLOTS)), [1, 2]);
        assert!(st.next_uploads(SLOTS).is_empty(), "nothing else until the epoch is in");
        st.remove(1);
        assert!(
            st.next_uploads(SLOTS).is_empty(),
            "the barrier waits for all of its epoch"
        );
        st.remove(2);
        assert_eq!(seqs(&st.next_uploads(SLOTS)), [3]);
        assert!(
            st.next_uploads(SLOTS).is_empty(),
            "the next epoch waits for the barrier"
        );
        st.remove(3);
        assert_eq!(seqs(&st.next_uploads(SLOTS)), [4]);
    }

    #[test]
    fn write_through_ignores_stages_and_has_slots_of_its_own() {
        let mut st = State::default();
        for seq in 1..=20 {
            st.add(seq, v(&format!("d/{seq}"), WriteMode::WriteBack, 0));
        }
        st.add(21, v("ctl", WriteMode::Barrier, 1));
        st.add(22, v("wal/1", WriteMode::WriteThrough, 2));
        st.add(23, v("wal/2", WriteMode::WriteThrough, 2));
        let first = st.next_uploads(SLOTS);
        assert_eq!(first.len(), 18, "16 ordered slots, and the WAL beside them");
        assert!(seqs(&first).contains(&22) && seqs(&first).contains(&23));
        assert_eq!(st.in_flight(), 18);
    }

    #[test]
    fn one_version_per_key_at_a_time_oldest_first_skipping_within_a_stage_only() {
        let mut st = State::default();
        st.add(1, v("k", WriteMode::WriteBack, 0));
        st.add(2, v("k", WriteMode::WriteBack, 0));
        st.add(3, v("ctl", WriteMode::Barrier, 1));
        st.add(4, v("k", WriteMode::WriteBack, 2));
        assert_eq!(st.next_uploads(SLOTS), [Pick { seq: 1, skip: true }]);
        assert!(st.next_uploads(SLOTS).is_empty(), "2 waits for 1");
        st.remove(1);
        assert_eq!(
            st.next_uploads(SLOTS),
            [Pick { seq: 2, skip: false }],
            "4 is in another stage: 2 must go up"
        );
        st.remove(2);
        assert_eq!(seqs(&st.next_uploads(SLOTS)), [3]);
    }

    #[test]
    fn a_skip_takes_every_version_its_stage_replaces_at_once() {
        let mut st = State::default();
        for seq in 1..=5 {
            st.add(seq, v("k", WriteMode::WriteBack, 0));
        }
        st.add(6, v("ctl", WriteMode::Barrier, 1));
        st.add(7, v("k", WriteMode::WriteBack, 2));
        assert_eq!(st.next_uploads(SLOTS), [Pick { seq: 1, skip: true }]);
        assert_eq!(
            st.skippable_run(1),
            [1, 2, 3, 4],
            "5 is the last of its stage: it goes up"
        );
        for seq in 1..=4 {
            st.remove(seq);
        }
        assert_eq!(st.next_uploads(SLOTS), [Pick { seq: 5, skip: false }]);
        assert_eq!(st.skippable_run(5), [5]);
    }

    #[test]
    fn a_write_through_version_waits_for_the_older_versions_of_its_key() {
        let mut st = State::default();
        st.add(1, v("ctl", WriteMode::Barrier, 1));
        st.add(2, v("k", WriteMode::WriteBack, 2));
        st.add(3, v("k", WriteMode::WriteThrough, 2));
        assert_eq!(seqs(&st.next_uploads(SLOTS)), [1]);
        st.remove(1);
        // Uploaded, not skipped: the write-through version after it may yet be refused and
        // dropped, and must not take this acknowledged write with it.
        assert_eq!(st.next_uploads(SLOTS), [Pick { seq: 2, skip: false }]);
        st.remove(2);
        assert_eq!(st.next_uploads(SLOTS), [Pick { seq: 3, skip: false }]);
    }

    #[test]
    fn a_refused_version_blocks_its_stage_and_key_until_removed() {
        let mut st = State::default();
        st.add(1, v("a", WriteMode::WriteBack, 0));
        st.add(2, v("ctl", WriteMode::Barrier, 1));
        assert_eq!(seqs(&st.next_uploads(SLOTS)), [1]);
        st.fail(1, "403".into(), None);
        assert!(
            st.next_uploads(SLOTS).is_empty(),
            "the barrier never passes a refused version"
        );
        assert_eq!(st.in_flight(), 0);
        st.remove(1);
        assert_eq!(seqs(&st.next_uploads(SLOTS)), [2]);
    }

    #[test]
    fn a_requeued_upload_is_handed_out_again_and_keeps_its_key_order() {
        let mut st = State::default();
        st.add(1, v("a", WriteMode::WriteBack, 0));
        st.add(2, v("a", WriteMode::WriteBack, 2));
        st.add(3, v("wal/1", WriteMode::WriteThrough, 2));
        assert_eq!(seqs(&st.next_uploads(SLOTS)), [1, 3]);
        st.requeue(1);
        st.requeue(3);
        assert_eq!(st.in_flight(), 0);
        assert_eq!(
            seqs(&st.next_uploads(SLOTS)),
            [1, 3],
            "both go again; 2 still waits for 1"
        );
        st.requeue(42); // unknown: nothing happens
        assert_eq!(st.in_flight(), 2);
        st.remove(1);
        assert_eq!(
            seqs(&st.next_uploads(SLOTS)),
            [2],
            "the next of its key, once it is released"
        );
    }

    #[test]
    fn commits_and_releases_never_walk_a_backlog_of_200000_versions() {
        // 200,000 versions of distinct keys wait behind a barrier that waits for a refused
        // version: the backlog of an origin outage. Then 20,000 commits and releases of one more
        // key, each with what the journal does under its lock (the gauges' oldest age, handing
        // out uploads, the newest version of the key). Walking the backlog once per operation
        // would cost 20,000 × 200,000 steps (minutes); O(log n) costs milliseconds. The bound
        // leaves a hundredfold margin for a loaded machine.
        let mut st = State::default();
        st.add(1, v("refused", WriteMode::WriteBack, 0));
        assert_eq!(seqs(&st.next_uploads(SLOTS)), [1]);
        st.fail(1, "403".into(), None);
        st.add(2, v("ctl", WriteMode::Barrier, 1));
        let backlog = 200_000u64;
        for seq in 3..3 + backlog {
            st.add(seq, v(&format!("d/{seq}"), WriteMode::WriteBack, 2));
        }
        let started = std::time::Instant::now();
        for seq in 3 + backlog..3 + backlog + 20_000 {
            st.add(seq, v("hot", WriteMode::WriteBack, 0));
            let _ = st.oldest_age();
            assert_eq!(st.newest(&ObjectKey::new("b", "hot")).map(|(s, _)| s), Some(seq));
            assert_eq!(st.next_uploads(SLOTS), [Pick { seq, skip: false }]);
            assert_eq!(st.skippable_run(seq), [seq]);
            assert!(st.remove(seq).is_some());
        }
        let took = started.elapsed();
        assert!(
            took < std::time::Duration::from_secs(3),
            "20,000 commits and releases against a backlog of {backlog} took {took:?}"
        );
        assert_eq!(st.versions.len() as u64, backlog + 2);
    }

    #[test]
    fn a_retried_version_goes_back_to_the_scheduler() {
        let mut st = State::default();
        st.add(1, v("a", WriteMode::WriteBack, 0));
        assert_eq!(seqs(&st.next_uploads(SLOTS)), [1]);
        st.fail(1, "403".into(), None);
        assert!(st.next_uploads(SLOTS).is_empty());
        assert!(st.retry(1));
        assert!(!st.retry(1), "only a refused version can be retried");
        assert_eq!(seqs(&st.next_uploads(SLOTS)), [1]);
    }

    #[test]
    fn slots_bound_what_is_in_flight_and_free_up_on_removal() {
        let mut st = State::default();
        let slots = Slots {
            ordered: 2,
            write_through: 1,
        };
        for seq in 1..=5 {
            st.add(seq, v(&format!("d/{seq}"), WriteMode::WriteBack, 0));
        }
        st.add(6, v("wal/1", WriteMode::WriteThrough, 0));
        st.add(7, v("wal/2", WriteMode::WriteThrough, 0));
        assert_eq!(seqs(&st.next_uploads(slots)), [1, 2, 6]);
        assert!(st.next_uploads(slots).is_empty());
        st.remove(2);
        st.remove(6);
        assert_eq!(seqs(&st.next_uploads(slots)), [3, 7]);
        assert_eq!(st.dirty_bytes, 0);
        assert_eq!(st.versions.len(), 5);
    }
}
