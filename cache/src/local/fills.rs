//! `Fills`: the origin fetches under way, one per key, with the state their waiters watch; a write
//! marks the fill of its key stale so that an older body is never kept.

use std::collections::HashMap;
use std::fs::File;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::watch;

use crate::key::ObjectKey;
use crate::local::lock;
use crate::origin::{ObjectMeta, OriginError};

/// An origin fetch into a temp file that any number of readers stream from as it grows.
pub(crate) struct Fill {
    pub tx: watch::Sender<FillState>,
    /// Set when a write through Perch replaced the object: the fill must not be kept.
    pub stale: AtomicBool,
}

#[derive(Clone)]
pub(crate) enum FillState {
    Pending,
    Body {
        meta: Arc<ObjectMeta>,
        file: Arc<File>,
        written: u64,
        done: bool,
    },
    Failed(Arc<FillError>),
}

/// Why a fill failed, kept so that every waiter can be given the same error.
#[derive(Debug)]
pub(crate) enum FillError {
    NoSuchKey,
    NoSuchBucket,
    Rejected { status: u16, code: String, message: String },
    Unavailable(String),
    Corrupt(String),
}

impl FillError {
    pub(crate) fn from_origin(e: OriginError) -> FillError {
        match e {
            OriginError::NoSuchKey => FillError::NoSuchKey,
            OriginError::NoSuchBucket => FillError::NoSuchBucket,
            OriginError::Rejected { status, code, message } => FillError::Rejected { status, code, message },
            other => FillError::Unavailable(other.to_string()),
        }
    }

    pub(crate) fn to_origin(&self) -> OriginError {
        match self {
            FillError::NoSuchKey => OriginError::NoSuchKey,
            FillError::NoSuchBucket => OriginError::NoSuchBucket,
            FillError::Rejected { status, code, message } => OriginError::Rejected {
                status: *status,
                code: code.clone(),
                message: message.clone(),
            },
            FillError::Unavailable(m) | FillError::Corrupt(m) => OriginError::Unavailable {
                seconds: 0,
                last: m.clone(),
            },
        }
    }
}

#[derive(Default)]
pub(crate) struct Fills {
    map: Mutex<HashMap<ObjectKey, Arc<Fill>>>,
}

impl Fills {
    /// The fill of `okey` under way (`true`: joined), or a new one (`false`: the caller runs it).
    pub(crate) fn join(&self, okey: &ObjectKey) -> (Arc<Fill>, bool) {
        let mut fills = lock(&self.map);
        if let Some(f) = fills.get(okey) {
            return (f.clone(), true);
        }
        let (tx, _) = watch::channel(FillState::Pending);
        let fill = Arc::new(Fill {
            tx,
            stale: AtomicBool::new(false),
        });
        fills.insert(okey.clone(), fill.clone());
        (fill, false)
    }

    /// The fill of `okey` ended: forget it (if it is still the one registered).
    pub(crate) fn end(&self, okey: &ObjectKey, fill: &Arc<Fill>) {
        let mut fills = lock(&self.map);
        if fills.get(okey).is_some_and(|cur| Arc::ptr_eq(cur, fill)) {
            fills.remove(okey);
        }
    }

    /// A write changed `okey`: a fill under way must not be kept, and later readers start afresh.
    pub(crate) fn mark_stale(&self, okey: &ObjectKey) {
        if let Some(fill) = lock(&self.map).remove(okey) {
            fill.stale.store(true, Ordering::SeqCst);
        }
    }
}
