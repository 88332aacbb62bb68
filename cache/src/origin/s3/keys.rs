//! `OriginKeys`: the key pair `S3Origin` signs with, behind a lock so that it can be replaced
//! while Perch runs (`perch serve` does on SIGHUP) without a restart or a lost request.

use std::sync::{Arc, RwLock};

use aws_credential_types::provider::{ProvideCredentials, future};
use aws_sdk_s3::config::Credentials;

/// A shared, replaceable key pair; every origin request reads the current one.
#[derive(Clone)]
pub struct OriginKeys {
    current: Arc<RwLock<Credentials>>,
}

fn credentials(access_key_id: String, secret_access_key: String) -> Credentials {
    Credentials::new(access_key_id, secret_access_key, None, None, "perch")
}

impl OriginKeys {
    pub(super) fn new(access_key_id: String, secret_access_key: String) -> OriginKeys {
        OriginKeys {
            current: Arc::new(RwLock::new(credentials(access_key_id, secret_access_key))),
        }
    }

    /// Signs every request from now on with this pair. Returns whether it differs from the
    /// pair it replaces.
    pub fn replace(&self, access_key_id: String, secret_access_key: String) -> bool {
        let new = credentials(access_key_id, secret_access_key);
        let mut current = self.current.write().unwrap_or_else(|e| e.into_inner());
        let changed =
            current.access_key_id() != new.access_key_id() || current.secret_access_key() != new.secret_access_key();
        *current = new;
        changed
    }

    /// The pair in use, to sign a request with.
    pub(super) fn current(&self) -> Credentials {
        self.current.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The access key id in use (not a secret: it names the key).
    pub fn access_key_id(&self) -> String {
        let current = self.current.read().unwrap_or_else(|e| e.into_inner());
        current.access_key_id().to_owned()
    }
}

impl std::fmt::Debug for OriginKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OriginKeys")
            .field("access_key_id", &self.access_key_id())
            .field("secret_access_key", &"<redacted>")
            .finish()
    }
}

impl ProvideCredentials for OriginKeys {
    fn provide_credentials<'a>(&'a self) -> future::ProvideCredentials<'a>
    where
        Self: 'a,
    {
        let current = self.current.read().unwrap_or_else(|e| e.into_inner());
        future::ProvideCredentials::ready(Ok(current.clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_replaced_pair_is_what_the_next_request_gets() {
        let keys = OriginKeys::new("old".into(), "old-secret".into());
        assert_eq!(keys.provide_credentials().await.unwrap().access_key_id(), "old");
        assert!(keys.replace("new".into(), "new-secret".into()));
        let now = keys.provide_credentials().await.unwrap();
        assert_eq!((now.access_key_id(), now.secret_access_key()), ("new", "new-secret"));
        assert!(!keys.replace("new".into(), "new-secret".into()));
        assert!(!format!("{keys:?}").contains("new-secret"));
    }
}
