//! The hot set: the objects a primary read most recently, written to `.perch/hot-set` in each of
//! their buckets (periodically and when it stops), so that a machine that starts with an empty
//! cache (a new Machine, a replica in another region, a restore) prewarms them in the background.
//! Format: a `perch-hot-set 1` line, then one `<size> <key>` line per object, hottest first (keys
//! percent-escape `%`, `\n` and `\r`).

use std::collections::BTreeMap;

use bytes::Bytes;
use futures::StreamExt;
use md5::{Digest, Md5};

use crate::error::CacheError;
use crate::local::Local;
use crate::origin::{Conditions, ContentHeaders, Origin, OriginError, OriginResult, PutBody, PutInput};

/// Where each bucket's hot set lives (under the prefix reserved for Perch).
pub(crate) const KEY: &str = ".perch/hot-set";
const HEADER: &str = "perch-hot-set 1";
/// A hot set longer than this is not read (a corrupt or foreign object).
const BODY_MAX: u64 = 64 << 20;

fn escape(key: &str) -> String {
    key.replace('%', "%25").replace('\n', "%0A").replace('\r', "%0D")
}

fn unescape(key: &str) -> String {
    key.replace("%0A", "\n").replace("%0D", "\r").replace("%25", "%")
}

pub(crate) fn encode(objects: &[(String, u64)]) -> Vec<u8> {
    let mut out = String::with_capacity(16 + objects.len() * 48);
    out.push_str(HEADER);
    out.push('\n');
    for (key, size) in objects {
        out.push_str(&format!("{size} {}\n", escape(key)));
    }
    out.into_bytes()
}

pub(crate) fn decode(body: &[u8]) -> Result<Vec<(String, u64)>, String> {
    let text = std::str::from_utf8(body).map_err(|_| "not UTF-8".to_owned())?;
    let mut lines = text.lines();
    if lines.next() != Some(HEADER) {
        return Err(format!("does not start with `{HEADER}`"));
    }
    lines
        .filter(|l| !l.is_empty())
        .map(|l| {
            let (size, key) = l.split_once(' ').ok_or_else(|| format!("bad line `{l}`"))?;
            let size = size.parse().map_err(|_| format!("bad size in `{l}`"))?;
            Ok((unescape(key), size))
        })
        .collect()
}

/// The hot set of each bucket: the objects read most recently, newest first, up to `keys_max`
/// objects and `bytes_max` bytes in all (Perch's own keys left out).
pub(crate) fn collect(
    local: &Local,
    keys_max: usize,
    bytes_max: u64,
) -> Result<BTreeMap<String, Vec<(String, u64)>>, CacheError> {
    local.flush_access_times();
    let mut out: BTreeMap<String, Vec<(String, u64)>> = BTreeMap::new();
    let mut bytes = 0u64;
    for (okey, _) in local.index.recent_reads(keys_max)? {
        if perch_policy::is_reserved(okey.key()) {
            continue;
        }
        let Some(entry) = local.index.get(&okey)? else { continue };
        if entry.deleted {
            continue;
        }
        if bytes + entry.meta.size > bytes_max {
            break;
        }
        bytes += entry.meta.size;
        out.entry(okey.bucket().to_owned())
            .or_default()
            .push((okey.key().to_owned(), entry.meta.size));
    }
    Ok(out)
}

/// Writes `bucket`'s hot set to the origin.
pub(crate) async fn write(origin: &dyn Origin, bucket: &str, objects: &[(String, u64)]) -> OriginResult<()> {
    let body = encode(objects);
    let input = PutInput {
        content_md5: Some(aws_smithy_types::base64::encode(Md5::digest(&body))),
        headers: ContentHeaders {
            content_type: Some("text/plain".into()),
            ..Default::default()
        },
        checksums: Default::default(),
        body: PutBody::Bytes(Bytes::from(body)),
        if_match: None,
        if_none_match: None,
        extra_headers: Vec::new(),
    };
    origin.put_object(bucket, KEY, &input).await.map(|_| ())
}

/// `bucket`'s hot set from the origin (`None` when it has none).
pub(crate) async fn read(origin: &dyn Origin, bucket: &str) -> OriginResult<Option<Vec<(String, u64)>>> {
    let out = match origin.get_object(bucket, KEY, None, &Conditions::default()).await {
        Ok(out) => out,
        Err(OriginError::NoSuchKey) => return Ok(None),
        Err(e) => return Err(e),
    };
    if out.meta.size > BODY_MAX {
        return Ok(None);
    }
    let mut body = Vec::with_capacity(out.meta.size as usize);
    let mut stream = out.body;
    while let Some(chunk) = stream.next().await {
        body.extend_from_slice(&chunk.map_err(OriginError::Io)?);
    }
    match decode(&body) {
        Ok(objects) => Ok(Some(objects)),
        Err(e) => {
            tracing::warn!(bucket, error = %e, "ignoring an unreadable hot set");
            Ok(None)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let objects = vec![
            ("orioledb_data/2/5/16440.0.3".to_owned(), 1 << 20),
            ("odd key with spaces, 100% and\na newline".to_owned(), 7),
        ];
        let body = encode(&objects);
        assert!(body.starts_with(b"perch-hot-set 1\n"));
        assert_eq!(decode(&body).unwrap(), objects);
        assert!(decode(b"something else\n1 k\n").is_err());
        assert!(decode(b"perch-hot-set 1\nnot-a-size k\n").is_err());
    }
}
