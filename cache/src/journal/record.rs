//! The journal's storage format: one JSON record per version in the index's `journal` column
//! family, keyed by its sequence number (docs/write-back.md).

use std::time::SystemTime;

use perch_policy::WriteMode;
use serde::{Deserialize, Serialize};

use crate::error::CacheError;
use crate::key::ObjectKey;
use crate::local::Local;
use crate::local::index::Released;
use crate::origin::{Checksums, ObjectMeta};

/// The journal record of a version.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Record {
    pub bucket: String,
    pub key: String,
    /// The object of a PUT; `None` for a DELETE.
    pub put: Option<RecordPut>,
    pub mode: String,
    /// 2 × epoch, plus 1 for the barrier that closes the epoch.
    pub stage: u64,
    pub acked: SystemTime,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct RecordPut {
    pub meta: ObjectMeta,
    pub crcs: Vec<u32>,
    /// A completed multipart upload: its parts, uploaded with the same layout (so the origin's
    /// ETag and composite checksums are the ones the client was given).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parts: Option<Vec<PartLayout>>,
}

/// One part of a multipart version: its size and the checksums it was uploaded with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct PartLayout {
    pub size: u64,
    pub checksums: Checksums,
}

impl Record {
    /// The record's write mode (an unknown one, from a newer Perch, uploads as write-back).
    pub(crate) fn mode(&self) -> WriteMode {
        self.mode.parse().unwrap_or(WriteMode::WriteBack)
    }
}

/// Removes version `seq` of `okey` without uploading it (an operator dropped it): its record goes
/// and, if it is the newest version of its key, its index entry too; one synced batch, then its
/// blob. The caller holds the key's lock.
pub(crate) fn drop_from_index(local: &Local, seq: u64, okey: &ObjectKey, is_put: bool) -> Result<(), CacheError> {
    let newest = local.index.get(okey)?.is_some_and(|e| e.blob == seq && e.pending);
    let after = if newest {
        Released::Gone
    } else {
        Released::Superseded { forget_blob: is_put }
    };
    local.index.release_version(seq, okey, &after, true)?;
    if newest {
        local.memory.invalidate(okey);
    }
    if is_put {
        local.blobs.remove(seq);
    }
    Ok(())
}
