//! Operators' requests on a running journal: list, retry or drop a refused version, or give up one tried
//! again through faults to drop it (`perch journal`).

use serde::{Deserialize, Serialize};

use super::{Journal, record};
use crate::error::CacheError;
use crate::key::ObjectKey;
use crate::local::lock;

/// One version of the journal, as `perch journal list` shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JournalEntry {
    pub seq: u64,
    pub bucket: String,
    pub key: String,
    /// `put` or `delete`.
    pub kind: String,
    pub size: u64,
    pub mode: String,
    pub stage: u64,
    pub age_seconds: f64,
    /// Why the origin refused it, if it did.
    pub refused: Option<String>,
    /// The transient fault its upload met last, while it is tried again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retrying: Option<String>,
}

/// What an operator's journal request could not do.
#[derive(Debug, thiserror::Error)]
pub enum JournalOpError {
    #[error("version {0} is not in the journal")]
    NotFound(u64),
    #[error(
        "version {0} is not refused by the origin: only refused versions are retried, and only refused ones or \
         ones tried again through faults are dropped"
    )]
    NotRefused(u64),
    #[error(
        "version {0} is tried again through faults ({1}), and an attempt is under way: it is given up once that \
         attempt ends; run the same command again"
    )]
    GivingUp(u64, String),
    #[error(transparent)]
    Local(#[from] CacheError),
}

impl Journal {
    /// The oldest `limit` versions not yet in the origin.
    pub(crate) fn list(&self, limit: usize) -> Vec<JournalEntry> {
        let st = lock(&self.state);
        st.versions
            .iter()
            .take(limit)
            .map(|(seq, v)| JournalEntry {
                seq: *seq,
                bucket: v.okey.bucket().to_owned(),
                key: v.okey.key().to_owned(),
                kind: if v.put.is_some() { "put" } else { "delete" }.to_owned(),
                size: v.size(),
                mode: v.mode.as_str().to_owned(),
                stage: v.stage,
                age_seconds: v.acked.elapsed().map(|d| d.as_secs_f64()).unwrap_or(0.0),
                refused: st.failed.get(seq).cloned(),
                retrying: st.retrying.get(seq).cloned(),
            })
            .collect()
    }

    /// Tries a refused version again (after the operator fixed what the origin refused).
    pub(crate) fn retry(&self, seq: u64) -> Result<(), JournalOpError> {
        let mut st = lock(&self.state);
        if !st.versions.contains_key(&seq) {
            return Err(JournalOpError::NotFound(seq));
        }
        if !st.retry(seq) {
            return Err(JournalOpError::NotRefused(seq));
        }
        self.refresh_gauges(&st);
        drop(st);
        self.bump();
        Ok(())
    }

    /// Tries again every version the origin refused with an answer (not those refused for a
    /// damaged blob): after a policy reload, which may have mended the headers the origin
    /// refused. Returns how many.
    pub(crate) fn retry_refused_by_origin(&self) -> usize {
        let mut st = lock(&self.state);
        let refused: Vec<u64> = st
            .answers
            .keys()
            .copied()
            .filter(|seq| st.failed.contains_key(seq))
            .collect();
        let retried = refused.into_iter().filter(|seq| st.retry(*seq)).count();
        self.refresh_gauges(&st);
        drop(st);
        if retried > 0 {
            self.bump();
        }
        retried
    }

    /// Gives up a version the uploader tries again through faults that may never pass (an origin
    /// that answers its key with a fault every time): it is refused before its next attempt, and
    /// can then be dropped. `Ok(false)`: it is refused already; `Ok(true)`: given up.
    pub(crate) fn give_up(&self, seq: u64) -> Result<bool, JournalOpError> {
        let mut st = lock(&self.state);
        if !st.versions.contains_key(&seq) {
            return Err(JournalOpError::NotFound(seq));
        }
        if st.failed.contains_key(&seq) {
            return Ok(false);
        }
        if !st.retrying.contains_key(&seq) {
            return Err(JournalOpError::NotRefused(seq));
        }
        st.given_up.insert(seq);
        drop(st);
        self.give_ups.notify_waiters();
        Ok(true)
    }

    /// The transient fault of `seq`'s upload, if it is still given up but not refused yet.
    pub(crate) fn giving_up(&self, seq: u64) -> Option<String> {
        let st = lock(&self.state);
        st.given_up
            .contains(&seq)
            .then(|| st.retrying.get(&seq).cloned())
            .flatten()
    }

    /// Drops a refused version for good: the write is lost (its key reads as the origin has it,
    /// or as its later versions say), and the versions behind it go on.
    pub(crate) fn drop_version(&self, seq: u64) -> Result<ObjectKey, JournalOpError> {
        let v = {
            let st = lock(&self.state);
            let v = st.versions.get(&seq).cloned().ok_or(JournalOpError::NotFound(seq))?;
            if !st.failed.contains_key(&seq) {
                return Err(JournalOpError::NotRefused(seq));
            }
            v
        };
        {
            let _key = self.local.key_lock(&v.okey);
            record::drop_from_index(&self.local, seq, &v.okey, v.put.is_some())?;
            let mut st = lock(&self.state);
            st.remove(seq);
            st.dropped.insert(seq);
            self.refresh_gauges(&st);
        }
        self.bump();
        Ok(v.okey)
    }
}
