//! AWS Signature Version 4 for the raw client, written from AWS's specification (not the SDK's).
//!
//! It signs over exactly `host;x-amz-content-sha256;x-amz-date`, as OrioleDB does, so that a bug
//! in s3s or in the aws SDK cannot hide a bug in perch.

use std::time::{SystemTime, UNIX_EPOCH};

use sha2::{Digest, Sha256};

use crate::servers::{DEV_ACCESS_KEY_ID, DEV_SECRET_ACCESS_KEY};

/// The hex SHA-256 of `data`.
pub fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// HMAC-SHA256 (RFC 2104), block size 64.
fn hmac_sha256(key: &[u8], msg: &[u8]) -> [u8; 32] {
    let mut block = [0u8; 64];
    if key.len() > 64 {
        block[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        block[..key.len()].copy_from_slice(key);
    }
    let mut inner = Sha256::new();
    inner.update(block.map(|b| b ^ 0x36));
    inner.update(msg);
    let inner = inner.finalize();
    let mut outer = Sha256::new();
    outer.update(block.map(|b| b ^ 0x5c));
    outer.update(inner);
    outer.finalize().into()
}

/// `YYYYMMDDTHHMMSSZ` for `t` (UTC).
pub fn amz_date(t: SystemTime) -> String {
    let secs = t.duration_since(UNIX_EPOCH).expect("clock after 1970").as_secs() as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}{m:02}{d:02}T{:02}{:02}{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// S3's URI encoding: everything but unreserved characters (and `/` unless `encode_slash`).
pub fn uri_encode(s: &[u8], encode_slash: bool) -> String {
    let mut out = String::with_capacity(s.len());
    for &b in s {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => out.push(b as char),
            b'/' if !encode_slash => out.push('/'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

fn percent_decode(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let hex = |c: Option<&u8>| c.and_then(|c| (*c as char).to_digit(16));
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && let (Some(h), Some(l)) = (hex(b.get(i + 1)), hex(b.get(i + 2)))
        {
            out.push((h * 16 + l) as u8);
            i += 3;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    out
}

/// An access key pair.
#[derive(Clone, Debug)]
pub struct Keys {
    pub access_key_id: String,
    pub secret_access_key: String,
}

impl Keys {
    pub fn new(id: &str, secret: &str) -> Keys {
        Keys {
            access_key_id: id.to_owned(),
            secret_access_key: secret.to_owned(),
        }
    }

    /// The development pair perch accepts on loopback when no keys are configured.
    pub fn dev() -> Keys {
        Keys::new(DEV_ACCESS_KEY_ID, DEV_SECRET_ACCESS_KEY)
    }
}

/// The SigV4 `Authorization` value (region us-east-1) for a request signed over
/// `host;x-amz-content-sha256;x-amz-date`, as OrioleDB signs, and the other `x-amz-*` headers
/// it carries (`amz`: name and value; S3 refuses a request with one left unsigned).
#[allow(clippy::too_many_arguments)]
pub fn authorization(
    keys: &Keys,
    method: &str,
    host: &str,
    raw_path: &str,
    raw_query: &str,
    amz_date: &str,
    content_sha256: &str,
    amz: &[(&str, &str)],
) -> String {
    let region = "us-east-1";
    let day = &amz_date[..8];
    // The canonical URI is the path's bytes URI-encoded once (S3 does not normalise it).
    let canonical_uri = uri_encode(&percent_decode(raw_path), false);
    let mut query: Vec<(String, String)> = raw_query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (n, v) = p.split_once('=').unwrap_or((p, ""));
            (
                uri_encode(&percent_decode(n), true),
                uri_encode(&percent_decode(v), true),
            )
        })
        .collect();
    query.sort();
    let canonical_query = query
        .iter()
        .map(|(n, v)| format!("{n}={v}"))
        .collect::<Vec<_>>()
        .join("&");
    // Canonical headers: lower-case names in order, values trimmed, repeated ones joined by `,`.
    let mut canonical: std::collections::BTreeMap<String, Vec<String>> = std::collections::BTreeMap::new();
    canonical.insert("host".to_owned(), vec![host.to_owned()]);
    canonical.insert("x-amz-content-sha256".to_owned(), vec![content_sha256.to_owned()]);
    canonical.insert("x-amz-date".to_owned(), vec![amz_date.to_owned()]);
    for (name, value) in amz {
        let name = name.to_ascii_lowercase();
        if name.starts_with("x-amz-") && name != "x-amz-content-sha256" && name != "x-amz-date" {
            canonical.entry(name).or_default().push(value.trim().to_owned());
        }
    }
    let canonical_headers: String = canonical
        .iter()
        .map(|(n, v)| format!("{n}:{}\n", v.join(",")))
        .collect();
    let signed_headers = canonical.keys().cloned().collect::<Vec<_>>().join(";");
    let canonical_request = format!(
        "{method}\n{canonical_uri}\n{canonical_query}\n{canonical_headers}\n{signed_headers}\n{content_sha256}"
    );
    let scope = format!("{day}/{region}/s3/aws4_request");
    let string_to_sign = format!(
        "AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n{}",
        sha256_hex(canonical_request.as_bytes())
    );
    let k_date = hmac_sha256(format!("AWS4{}", keys.secret_access_key).as_bytes(), day.as_bytes());
    let k_region = hmac_sha256(&k_date, region.as_bytes());
    let k_service = hmac_sha256(&k_region, b"s3");
    let k_signing = hmac_sha256(&k_service, b"aws4_request");
    let signature = hex::encode(hmac_sha256(&k_signing, string_to_sign.as_bytes()));
    format!(
        "AWS4-HMAC-SHA256 Credential={}/{scope}, SignedHeaders={signed_headers}, Signature={signature}",
        keys.access_key_id
    )
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn hmac_matches_rfc_4231_case_2() {
        assert_eq!(
            hex::encode(hmac_sha256(b"Jefe", b"what do ya want for nothing?")),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn dates() {
        assert_eq!(amz_date(UNIX_EPOCH), "19700101T000000Z");
        assert_eq!(
            amz_date(UNIX_EPOCH + Duration::from_secs(1_795_666_734)),
            "20261126T041854Z"
        );
    }

    /// The signing key derivation of AWS's SigV4 documentation ("Examples of how to derive a
    /// signing key for Signature Version 4"; GET /test.txt with a Range header is not our header
    /// set, so the derivation is what is checked).
    #[test]
    fn signing_key_matches_aws_example() {
        let secret = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY";
        let k_date = hmac_sha256(format!("AWS4{secret}").as_bytes(), b"20120215");
        let k_region = hmac_sha256(&k_date, b"us-east-1");
        let k_service = hmac_sha256(&k_region, b"iam");
        let k_signing = hmac_sha256(&k_service, b"aws4_request");
        assert_eq!(
            hex::encode(k_signing),
            "f4780e2d9f65fa895f9c67b32ce1baf0b0d8a43505a000a1a9e090d414db404d"
        );
    }
}
