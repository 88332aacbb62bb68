//! The journal of a stopped Perch, for an operator: what would stop the start (a record whose
//! blob is missing or short) and, on explicit request, dropping such records so that Perch starts
//! and loses nothing else (`perch journal check|repair`).

use std::collections::{HashMap, HashSet};
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::CacheError;
use crate::journal::record::{Record, drop_from_index};
use crate::key::ObjectKey;
use crate::local::{Local, LocalConfig};

/// A version the start would refuse.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JournalProblem {
    pub seq: u64,
    pub bucket: String,
    pub key: String,
    /// What is wrong (`blob … is missing`, `blob … holds N of M bytes`, `unreadable record`).
    pub problem: String,
}

/// The journal of the data dir of a stopped Perch (it takes the index's lock: Perch must not run).
pub struct OfflineJournal {
    local: Local,
}

impl OfflineJournal {
    /// Opens the journal of `data_dir`, which must hold one: a missing or mistyped data dir is an
    /// error, never a new empty journal that reports nothing wrong.
    pub fn open(data_dir: &Path) -> Result<OfflineJournal, CacheError> {
        let index = data_dir.join("cache").join("index");
        if !index.join("CURRENT").is_file() {
            return Err(CacheError::Io(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!("{} holds no Perch journal (no {})", data_dir.display(), index.display()),
            )));
        }
        let local = Local::open(
            LocalConfig {
                dir: data_dir.join("cache"),
                disk_bytes: Some(u64::MAX),
                memory_bytes: 0,
                memory_object_max: 0,
                pinned: None,
                reserve_bytes: 0,
            },
            None,
        )?;
        Ok(OfflineJournal { local })
    }

    /// How many versions the journal holds, and those the start would refuse. A blob that cannot
    /// be looked at (but for being gone) is an error, not a problem to repair: its bytes may be
    /// whole.
    pub fn check(&self) -> Result<(usize, Vec<JournalProblem>), CacheError> {
        let records = self.local.index.journal()?;
        let mut problems = Vec::new();
        for (seq, raw) in &records {
            let record: Record = match serde_json::from_slice(raw) {
                Ok(r) => r,
                Err(e) => {
                    problems.push(JournalProblem {
                        seq: *seq,
                        bucket: String::new(),
                        key: String::new(),
                        problem: format!("unreadable record: {e}"),
                    });
                    continue;
                }
            };
            let Some(put) = &record.put else { continue };
            let path = self.local.blobs.path(*seq);
            let problem = match std::fs::metadata(&path) {
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => format!("blob {} is missing", path.display()),
                Err(source) => {
                    return Err(CacheError::UnreadableBlob {
                        seq: *seq,
                        object: format!("{}/{}", record.bucket, record.key),
                        path: path.display().to_string(),
                        source,
                    });
                }
                Ok(m) if m.len() != put.meta.size => {
                    format!("blob {} holds {} of {} bytes", path.display(), m.len(), put.meta.size)
                }
                Ok(_) => continue,
            };
            problems.push(JournalProblem {
                seq: *seq,
                bucket: record.bucket,
                key: record.key,
                problem,
            });
        }
        Ok((records.len(), problems))
    }

    /// Drops the versions `check` reports (their writes are lost; nothing else is), and returns
    /// them. Unreadable records are dropped too, with the pending index entry naming their
    /// version.
    pub fn repair(&self) -> Result<Vec<JournalProblem>, CacheError> {
        let (_, mut problems) = self.check()?;
        let unreadable: Vec<u64> = problems.iter().filter(|p| p.bucket.is_empty()).map(|p| p.seq).collect();
        let named = self.drop_unreadable(&unreadable)?;
        for p in &mut problems {
            match named.get(&p.seq) {
                Some(okey) => (p.bucket, p.key) = (okey.bucket().to_owned(), okey.key().to_owned()),
                None if p.bucket.is_empty() => {}
                None => drop_from_index(&self.local, p.seq, &ObjectKey::new(&p.bucket, &p.key), true)?,
            }
        }
        self.local.close();
        Ok(problems)
    }

    /// Drops the unreadable records `seqs` with what the index holds of their versions, and
    /// returns the keys found. Such a record names no key, but the index still does: a PUT's blob
    /// is named with its key, and a DELETE's pending tombstone is found in one walk of the index.
    /// Left, reads would serve a version that never goes up.
    fn drop_unreadable(&self, seqs: &[u64]) -> Result<HashMap<u64, ObjectKey>, CacheError> {
        let mut keys = HashMap::new();
        let mut tombstones = HashSet::new();
        for &seq in seqs {
            match self.local.index.key_of_blob(seq)? {
                Some(okey) => {
                    keys.insert(seq, (okey, true));
                }
                None => {
                    tombstones.insert(seq);
                }
            }
        }
        for (seq, okey) in self.local.index.pending_keys_of(&tombstones)? {
            keys.insert(seq, (okey, false));
        }
        let mut named = HashMap::new();
        for &seq in seqs {
            match keys.remove(&seq) {
                Some((okey, is_put)) => {
                    drop_from_index(&self.local, seq, &okey, is_put)?;
                    named.insert(seq, okey);
                }
                None => self.local.index.delete_record(seq)?,
            }
        }
        Ok(named)
    }

    /// Drops every version (`perch journal discard`): a journal bound to a lease the bucket has
    /// moved on from, whose writes must not go up over newer data. Returns how many.
    pub fn discard_all(&self) -> Result<usize, CacheError> {
        let records = self.local.index.journal()?;
        let mut unreadable = Vec::new();
        for (seq, raw) in &records {
            match serde_json::from_slice::<Record>(raw) {
                Ok(r) => drop_from_index(&self.local, *seq, &ObjectKey::new(&r.bucket, &r.key), r.put.is_some())?,
                Err(_) => unreadable.push(*seq),
            }
        }
        self.drop_unreadable(&unreadable)?;
        self.local.close();
        Ok(records.len())
    }
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use super::*;
    use crate::local::index::Entry;

    /// A `Local` on `data_dir` as Perch opens it.
    fn open_local(data_dir: &Path) -> Local {
        Local::open(
            LocalConfig {
                dir: data_dir.join("cache"),
                disk_bytes: Some(1 << 30),
                memory_bytes: 0,
                memory_object_max: 0,
                pinned: None,
                reserve_bytes: 0,
            },
            None,
        )
        .unwrap()
    }

    /// A journal record no build of Perch can read (a newer Perch's, or damaged), committed with
    /// its version's pending entry: a PUT's (with its blob), a DELETE's tombstone, and a PUT
    /// superseded by another of its key. Repair drops the records, their entries and blobs, and
    /// names their keys; a pending entry left behind would be
    /// read as the object's newest version, which nothing ever uploads.
    #[test]
    fn repair_drops_the_index_entry_of_an_unreadable_record() {
        let dir = tempfile::tempdir().unwrap();
        let (written, deleted, kept) = (
            ObjectKey::new("b", "orioledb_data/1/written"),
            ObjectKey::new("b", "orioledb_data/1/deleted"),
            ObjectKey::new("b", "orioledb_data/1/kept"),
        );
        let twice = ObjectKey::new("b", "orioledb_data/1/twice");
        let mut twice_seqs = Vec::new();
        let (put_seq, delete_seq);
        {
            let local = open_local(dir.path());
            put_seq = local.index.next_blob_id().unwrap();
            delete_seq = local.index.next_blob_id().unwrap();
            let path = local.blobs.path(put_seq);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, b"body").unwrap();
            let now = SystemTime::now();
            let mut entry = Entry::tombstone(put_seq, now);
            (entry.deleted, entry.meta.size) = (false, 4);
            local
                .index
                .commit_version(&written, put_seq, b"{not a record", &entry, None)
                .unwrap();
            local
                .index
                .commit_version(&deleted, delete_seq, b"\x00", &Entry::tombstone(delete_seq, now), None)
                .unwrap();
            // Twice, the first version superseded by the second (both unreadable).
            for _ in 0..2 {
                let seq = local.index.next_blob_id().unwrap();
                let path = local.blobs.path(seq);
                std::fs::write(&path, b"twice").unwrap();
                let mut entry = Entry::tombstone(seq, now);
                (entry.deleted, entry.meta.size) = (false, 5);
                local.index.commit_version(&twice, seq, b"]", &entry, None).unwrap();
                twice_seqs.push(seq);
            }
            let mut clean = Entry::tombstone(1_000, now);
            (clean.deleted, clean.pending) = (false, false);
            local.index.put(&kept, &clean, None).unwrap();
            local.close();
        }
        let journal = OfflineJournal::open(dir.path()).unwrap();
        let (count, problems) = journal.check().unwrap();
        assert_eq!((count, problems.len()), (4, 4));
        let mut dropped: Vec<(u64, String)> = journal.repair().unwrap().into_iter().map(|p| (p.seq, p.key)).collect();
        dropped.sort();
        assert_eq!(
            dropped,
            vec![
                (put_seq, written.key().to_owned()),
                (delete_seq, deleted.key().to_owned()),
                (twice_seqs[0], twice.key().to_owned()),
                (twice_seqs[1], twice.key().to_owned()),
            ]
        );
        drop(journal);
        let local = open_local(dir.path());
        assert_eq!(local.index.get(&written).unwrap(), None, "the PUT's entry stayed");
        assert_eq!(
            local.index.get(&deleted).unwrap(),
            None,
            "the DELETE's tombstone stayed"
        );
        assert!(local.index.get(&kept).unwrap().is_some(), "an entry of no problem went");
        assert!(local.index.journal().unwrap().is_empty());
        assert!(!local.blobs.path(put_seq).exists(), "the PUT's blob stayed");
        assert_eq!(
            local.index.get(&twice).unwrap(),
            None,
            "the newer version's entry stayed"
        );
        for seq in twice_seqs {
            assert!(!local.blobs.path(seq).exists(), "blob {seq} stayed");
        }
    }
}
