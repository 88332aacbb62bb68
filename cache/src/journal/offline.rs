//! The journal of a stopped Perch, for an operator: what would stop the start (a record whose
//! blob is missing or short) and, on explicit request, dropping such records so that Perch starts
//! and loses nothing else (`perch journal check|repair`).

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
    /// them. Unreadable records are dropped too; their key is unknown, so its index is left.
    pub fn repair(&self) -> Result<Vec<JournalProblem>, CacheError> {
        let (_, problems) = self.check()?;
        for p in &problems {
            if p.bucket.is_empty() {
                self.local.index.delete_record(p.seq)?;
            } else {
                drop_from_index(&self.local, p.seq, &ObjectKey::new(&p.bucket, &p.key), true)?;
            }
        }
        self.local.close();
        Ok(problems)
    }

    /// Drops every version (`perch journal discard`): a journal bound to a lease the bucket has
    /// moved on from, whose writes must not go up over newer data. Returns how many.
    pub fn discard_all(&self) -> Result<usize, CacheError> {
        let records = self.local.index.journal()?;
        for (seq, raw) in &records {
            match serde_json::from_slice::<Record>(raw) {
                Ok(r) => drop_from_index(&self.local, *seq, &ObjectKey::new(&r.bucket, &r.key), r.put.is_some())?,
                Err(_) => self.local.index.delete_record(*seq)?,
            }
        }
        self.local.close();
        Ok(records.len())
    }
}
