//! `Owners`: each bucket's owner as the origin's ACL of it names it, for the listings that name one.
//!
//! Asked of the origin once per bucket, on a task of its own, until `WAIT` after it was asked:
//! a slow origin's answer still arrives for the listings after it, and no listing waits on a
//! configuration call's whole retry budget (each did, then the first failure was kept for good). A
//! refusal (an origin that keeps no ACL, or credentials that may not read it) is kept: no owner. A
//! fault is asked again after `RETRY`, by a listing that does not wait for it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use perch_cache::Store;
use s3s::dto::Owner;
use tokio::sync::watch;

use crate::bucket_config;

/// The longest a listing waits for its bucket's owner: one origin round trip, with room for a
/// retry.
const WAIT: Duration = Duration::from_secs(1);

/// How long after a fault the owner is not asked again.
const RETRY: Duration = Duration::from_secs(60);

enum Lookup {
    /// The origin's answer (`None`: it names none, or refused to say).
    Found(Option<Owner>),
    /// Being asked since then: the task sends its answer here.
    Asking(watch::Receiver<Option<Option<Owner>>>, Instant),
    /// The origin failed to answer at this time.
    Failed(Instant),
}

#[derive(Default)]
pub struct Owners {
    lookups: Arc<Mutex<HashMap<String, Lookup>>>,
}

impl Owners {
    /// `bucket`'s owner; `None` when the origin names none, or has not answered within `WAIT`.
    pub async fn of(&self, store: &Arc<Store>, bucket: &str) -> Option<Owner> {
        let (mut answer, wait) = {
            let mut lookups = self.lookups.lock().unwrap_or_else(|e| e.into_inner());
            match lookups.get(bucket) {
                Some(Lookup::Found(owner)) => return owner.clone(),
                Some(Lookup::Failed(at)) if at.elapsed() < RETRY => return None,
                Some(Lookup::Asking(answer, since)) => (answer.clone(), WAIT.saturating_sub(since.elapsed())),
                before => {
                    // After a fault, asked again without waiting.
                    let wait = if before.is_some() { Duration::ZERO } else { WAIT };
                    let (tx, rx) = watch::channel(None);
                    lookups.insert(bucket.to_owned(), Lookup::Asking(rx.clone(), Instant::now()));
                    tokio::spawn(ask(store.clone(), bucket.to_owned(), self.lookups.clone(), tx));
                    (rx, wait)
                }
            }
        };
        if wait.is_zero() {
            return answer.borrow().clone().flatten();
        }
        match tokio::time::timeout(wait, answer.wait_for(Option::is_some)).await {
            Ok(Ok(found)) => found.clone().flatten(),
            _ => None,
        }
    }
}

/// Asks the origin for `bucket`'s owner, and keeps the answer.
async fn ask(
    store: Arc<Store>,
    bucket: String,
    lookups: Arc<Mutex<HashMap<String, Lookup>>>,
    tx: watch::Sender<Option<Option<Owner>>>,
) {
    let lookup = match bucket_config::owner(&store, &bucket).await {
        Ok(owner) => Lookup::Found(owner),
        Err(e) => {
            let status = e.status_code().map_or(500, |s| s.as_u16());
            tracing::debug!(bucket, error = ?e, "the origin did not name the bucket's owner");
            if (400..500).contains(&status) && status != 408 && status != 429 || status == 501 {
                Lookup::Found(None)
            } else {
                Lookup::Failed(Instant::now())
            }
        }
    };
    let sent = match &lookup {
        Lookup::Found(owner) => owner.clone(),
        _ => None,
    };
    lookups.lock().unwrap_or_else(|e| e.into_inner()).insert(bucket, lookup);
    tx.send_replace(Some(sent));
}
