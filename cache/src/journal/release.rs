//! Releases: a version the origin has (or that its stage replaced) leaves the journal; one the
//! origin refuses for good stays, reported.

use std::time::{Duration, SystemTime};

use super::Journal;
use crate::error::CacheError;
use crate::journal::state::Version;
use crate::local::index::Released;
use crate::local::{Evicted, lock};
use crate::metrics::UploadLabel;
use crate::origin::OriginError;

/// A release the full filesystem refused is tried again this many times, this far apart, before
/// its version goes back to the uploader.
const NO_SPACE_TRIES: usize = 5;
const NO_SPACE_PAUSE: Duration = Duration::from_secs(1);

impl Journal {
    /// `seq` cannot go up (its local copy is damaged): it is kept (and still served), shown by
    /// `perch status`, and blocks the later stages (the order cannot be kept without it).
    pub(crate) fn refuse(&self, seq: u64, error: String) {
        self.fail(seq, error, None);
    }

    /// The origin refused `seq` for good: as `refuse`, with its answer kept for a client that
    /// waits on the version (write-through).
    pub(crate) fn refused_by_origin(&self, seq: u64, error: &OriginError) {
        let answer = match error {
            OriginError::Rejected { status, code, message } => Some((*status, code.clone(), message.clone())),
            OriginError::NoSuchBucket => Some((
                404,
                "NoSuchBucket".to_owned(),
                "The specified bucket does not exist".to_owned(),
            )),
            _ => None,
        };
        self.fail(seq, error.to_string(), answer);
    }

    fn fail(&self, seq: u64, error: String, answer: Option<(u16, String, String)>) {
        self.stats
            .uploads
            .get_or_create(&UploadLabel { result: "failed" })
            .inc();
        {
            let mut st = lock(&self.state);
            st.fail(seq, error, answer);
            self.refresh_gauges(&st);
        }
        self.bump();
    }

    /// Version `seq` is in the origin (or replaced inside its stage): out of the journal; its blob
    /// stays as the clean cache entry if it is still the newest of its key, else goes. `stored`:
    /// what the origin holds of it (ETag, Last-Modified), when known.
    pub(crate) fn release(&self, seq: u64, result: &'static str, stored: Option<OriginCopy>) {
        let mut outcome = self.release_blocking(seq, stored.clone());
        for _ in 0..NO_SPACE_TRIES {
            if !outcome.as_ref().is_err_and(CacheError::is_no_space) {
                break;
            }
            self.local.make_room_soon();
            std::thread::sleep(NO_SPACE_PAUSE);
            outcome = self.release_blocking(seq, stored.clone());
        }
        match outcome {
            Ok(()) => {
                self.stats.uploads.get_or_create(&UploadLabel { result }).inc();
            }
            Err(e) if e.is_no_space() => {
                // Not a refusal: the version goes back to the uploader, to be sent and released
                // again once the filesystem has room (the same bytes: idempotent).
                tracing::warn!(seq, error = %e, "the data dir's filesystem is full: an upload is recorded later");
                let mut st = lock(&self.state);
                st.requeue(seq);
                self.refresh_gauges(&st);
            }
            Err(e) => {
                // The version stays in the journal; the next start uploads it again (idempotent).
                tracing::error!(seq, error = %e, "cannot record an upload in the journal");
                let mut st = lock(&self.state);
                st.fail(seq, format!("cannot record the upload locally: {e}"), None);
                self.refresh_gauges(&st);
            }
        }
        self.bump();
    }

    /// Version `seq` is replaced inside its stage: it and the versions of its key that the same
    /// stage replaces too go at once, in one synced batch (not one sync each).
    pub(crate) fn release_skipped(&self, seq: u64) {
        let (okey, run) = {
            let st = lock(&self.state);
            let Some(v) = st.versions.get(&seq) else { return };
            let run: Vec<(u64, bool)> = st
                .skippable_run(seq)
                .into_iter()
                .filter_map(|s| st.versions.get(&s).map(|v| (s, v.put.is_some())))
                .collect();
            (v.okey.clone(), run)
        };
        let released = {
            let _key = self.local.key_lock(&okey);
            self.local.index.release_superseded(&run).map(|()| {
                let mut st = lock(&self.state);
                for (s, _) in &run {
                    st.remove(*s);
                }
                self.refresh_gauges(&st);
            })
        };
        match released {
            Ok(()) => {
                for (s, is_put) in &run {
                    if *is_put {
                        self.local.blobs.remove(*s);
                    }
                }
                self.stats
                    .uploads
                    .get_or_create(&UploadLabel { result: "skipped" })
                    .inc_by(run.len() as u64);
            }
            Err(e) if e.is_no_space() => {
                tracing::warn!(seq, error = %e, "the data dir's filesystem is full: skipped versions are recorded later");
                self.local.make_room_soon();
                std::thread::sleep(NO_SPACE_PAUSE);
                let mut st = lock(&self.state);
                st.requeue(seq);
                self.refresh_gauges(&st);
            }
            Err(e) => {
                tracing::error!(seq, error = %e, "cannot record skipped versions in the journal");
                let mut st = lock(&self.state);
                st.fail(seq, format!("cannot record the skip locally: {e}"), None);
                self.refresh_gauges(&st);
            }
        }
        self.bump();
    }

    fn release_blocking(&self, seq: u64, stored: Option<OriginCopy>) -> Result<(), CacheError> {
        let Some(v) = self.version(seq) else {
            return Ok(());
        };
        let evicted = {
            let _key = self.local.key_lock(&v.okey);
            self.release_locked(seq, &v, stored)?
        };
        self.local.drop_evicted(evicted);
        Ok(())
    }

    /// The release of `seq`, under its key's lock; returns what the evictor dropped to make room.
    fn release_locked(&self, seq: u64, v: &Version, stored: Option<OriginCopy>) -> Result<Evicted, CacheError> {
        let current = self.local.index.get(&v.okey)?.filter(|e| e.blob == seq && e.pending);
        let newest = current.is_some();
        let clean = current.filter(|e| !e.deleted).map(|mut e| {
            e.pending = false;
            e.validated = SystemTime::now();
            if let Some(copy) = stored {
                e.meta.last_modified = copy.last_modified;
                e.meta.headers.storage_class = copy.storage_class;
                if !crate::origin::same_etag(&copy.etag, &e.meta.etag) {
                    e.origin_etag = Some(copy.etag);
                }
            }
            e
        });
        let after = match (&clean, newest) {
            (Some(e), _) => Released::Clean(e),
            (None, true) => Released::Gone,
            (None, false) => Released::Superseded {
                forget_blob: v.put.is_some(),
            },
        };
        // A release is synced only when its blob goes at once; otherwise a power cut that loses
        // it makes the next start upload the version again (the same bytes), from its blob: so
        // the blob must not be unlinked while the release is volatile. Each such release is
        // counted once written (`Index::note_release`); an unlink first syncs the log unless a
        // sync that completed since covers every release counted (`Index::sync_releases`: a
        // commit's synced batch covers the releases written before it). The order that keeps
        // this true:
        // 1. the write, then the count. A sync covers only writes made before it; were the
        //    count raised first, a sync between the count and the write would cover the count
        //    but not the write (the defect of issue #12).
        // 2. the count before the blob can be unlinked: it joins the evictor only at `track`
        //    below, and every other unlink of a named blob (`drop_evicted`, `drop_entry`, a
        //    commit replacing it) takes this key's lock first, which is held from before the
        //    write until after the count. So every unlink that could take this blob sees the
        //    count, and syncs this write before it unless a completed sync did. Tested by
        //    power_cut.rs
        //    `an_eviction_racing_a_release_never_unlinks_a_blob_the_journal_needs`.
        let forget_blob = matches!(after, Released::Superseded { forget_blob: true });
        // A superseded DELETE has no blob to unlink, but its release is synced all the same: a
        // cut that lost it would replay the DELETE over the newer write of its key and the
        // barriers after it, already in the origin (power_cut.rs
        // `a_cut_never_replays_a_superseded_delete_over_a_newer_write`). A lost release of a
        // version its key still names only uploads the same bytes again.
        let sync = matches!(after, Released::Superseded { .. });
        self.local.index.release_version(seq, &v.okey, &after, sync)?;
        if forget_blob {
            self.local.blobs.remove(seq);
        } else {
            self.local.note_unsynced_release();
        }
        {
            let mut st = lock(&self.state);
            st.remove(seq);
            self.refresh_gauges(&st);
        }
        let mut evicted = Evicted::default();
        if let Some(e) = clean {
            // Now an ordinary cache entry: the evictor may take it from here.
            self.local.memory.invalidate(&v.okey);
            evicted = self.local.track(&v.okey, seq, e.meta.size);
        }
        Ok(evicted)
    }
}

/// What the origin holds of an uploaded version.
#[derive(Clone)]
pub(crate) struct OriginCopy {
    pub etag: String,
    pub last_modified: SystemTime,
    /// The class the origin keeps it in (an `--upload-header` rule may have set one).
    pub storage_class: Option<String>,
}
