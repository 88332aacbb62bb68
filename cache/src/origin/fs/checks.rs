//! S3's checks that `FsOrigin` applies: bucket and key names, a PUT's preconditions and its
//! `Content-MD5`.

use super::*;

pub(super) fn validate_bucket(name: &str) -> OriginResult<()> {
    let bad = name.is_empty() || name.starts_with('.') || name.contains(['/', '\\', '\0']);
    if bad {
        Err(OriginError::rejected(
            400,
            "InvalidBucketName",
            "The specified bucket is not valid.",
        ))
    } else {
        Ok(())
    }
}

pub(super) fn validate_key(key: &str) -> OriginResult<()> {
    if key.is_empty() {
        return Err(OriginError::rejected(
            400,
            "InvalidArgument",
            "The key must not be empty",
        ));
    }
    if key.len() > MAX_KEY_LEN {
        return Err(OriginError::rejected(400, "KeyTooLongError", "Your key is too long"));
    }
    Ok(())
}

/// The preconditions of a PUT, against the index. Called with `b.write` held for the decisive check.
pub(super) fn check_put(b: &Bucket, key: &str, input: &PutInput) -> OriginResult<()> {
    if input.if_match.is_none() && input.if_none_match.is_none() {
        return Ok(());
    }
    let index = b.index();
    let current = index.get(key);
    if let Some(m) = &input.if_match {
        match current {
            None => return Err(OriginError::NoSuchKey),
            Some(e) if !crate::origin::etag_matches(m, &e.etag) => return Err(OriginError::PreconditionFailed),
            Some(_) => {}
        }
    }
    if let (Some(n), Some(e)) = (&input.if_none_match, current)
        && crate::origin::etag_matches(n, &e.etag)
    {
        return Err(OriginError::PreconditionFailed);
    }
    Ok(())
}

/// S3's check of `Content-MD5` (base64) against the body's MD5 (its quoted hex ETag).
pub(super) fn check_content_md5(content_md5: &str, etag: &str) -> OriginResult<()> {
    let given = aws_smithy_types::base64::decode(content_md5)
        .map_err(|_| OriginError::rejected(400, "InvalidDigest", "The Content-MD5 you specified is not valid."))?;
    if hex::encode(given) != etag.trim_matches('"') {
        return Err(OriginError::rejected(
            400,
            "BadDigest",
            "The Content-MD5 you specified did not match what we received.",
        ));
    }
    Ok(())
}
