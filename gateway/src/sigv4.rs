//! SigV4 verification of a request without a body (signed in its headers or presigned), as s3s
//! verifies it, with the signing key of each day and region derived once and kept: the check of
//! the hit fast path (`fast_get`). Anything it cannot verify is left to s3s.

use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use sha2::{Digest, Sha256};

/// How far a request's time may be from ours (s3s's `presigned_url_max_skew_time_secs`).
pub(crate) const MAX_SKEW_SECS: i64 = 900;

/// A request's SigV4 authorization, from its `Authorization` header or its presigned query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authorization<'a> {
    pub access_key_id: &'a str,
    /// `YYYYMMDD` of the credential scope.
    pub scope_date: &'a str,
    pub region: &'a str,
    pub service: &'a str,
    /// Lower-case names, as listed.
    pub signed_headers: &'a str,
    pub signature: &'a str,
    /// `YYYYMMDDTHHMMSSZ`.
    pub amz_date: &'a str,
    /// A presigned URL's lifetime in seconds; `None` for header authorization.
    pub expires: Option<u32>,
}

/// Parses `AWS4-HMAC-SHA256 Credential=AK/DATE/REGION/SERVICE/aws4_request, SignedHeaders=...,
/// Signature=...` with its `x-amz-date` (any white space after the algorithm, as s3s takes it).
pub fn parse_header<'a>(value: &'a str, amz_date: &'a str) -> Option<Authorization<'a>> {
    let rest = value.strip_prefix("AWS4-HMAC-SHA256")?;
    if !rest.starts_with(|c: char| c.is_ascii_whitespace()) {
        return None;
    }
    let (mut credential, mut signed_headers, mut signature) = (None, None, None);
    for part in rest.split(',') {
        let (name, value) = part.trim().split_once('=')?;
        let slot = match name {
            "Credential" => &mut credential,
            "SignedHeaders" => &mut signed_headers,
            "Signature" => &mut signature,
            _ => return None,
        };
        if slot.replace(value).is_some() {
            return None;
        }
    }
    let (access_key_id, scope_date, region, service) = parse_credential(credential?)?;
    Some(Authorization {
        access_key_id,
        scope_date,
        region,
        service,
        signed_headers: signed_headers?,
        signature: signature?,
        amz_date,
        expires: None,
    })
}

/// `AK/DATE/REGION/SERVICE/aws4_request`.
fn parse_credential(credential: &str) -> Option<(&str, &str, &str, &str)> {
    let mut parts = credential.split('/');
    let found = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    (parts.next()? == "aws4_request" && parts.next().is_none()).then_some(found)
}

/// The presigned query's authorization, from its raw (still percent-encoded) parameters;
/// `decoded` holds the values that need decoding.
pub fn parse_presigned<'a>(query: &[(&'a str, &'a str)], decoded: &'a mut String) -> Option<Authorization<'a>> {
    let get = |name: &str| query.iter().find(|(n, _)| *n == name).map(|(_, v)| *v);
    let plain = |v: &'a str| (!v.contains(['%', '+'])).then_some(v);
    if get("X-Amz-Algorithm")? != "AWS4-HMAC-SHA256" {
        return None;
    }
    decoded.clear();
    push_form_decoded(decoded, get("X-Amz-Credential")?)?;
    let credential_len = decoded.len();
    push_form_decoded(decoded, get("X-Amz-SignedHeaders")?)?;
    let (credential, signed_headers) = decoded.split_at(credential_len);
    let (access_key_id, scope_date, region, service) = parse_credential(credential)?;
    Some(Authorization {
        access_key_id,
        scope_date,
        region,
        service,
        signed_headers,
        signature: plain(get("X-Amz-Signature")?)?,
        amz_date: plain(get("X-Amz-Date")?)?,
        expires: Some(plain(get("X-Amz-Expires")?)?.parse().ok()?),
    })
}

fn hex_digit(b: u8) -> Option<u8> {
    (b as char).to_digit(16).map(|d| d as u8)
}

/// The bytes `raw` stands for, as s3s decodes a path (`%XX`) or, with `form`, a query component
/// (`+` is a space too). `None` for a malformed escape.
fn decoded_bytes(raw: &str, form: bool) -> impl Iterator<Item = Option<u8>> + '_ {
    let b = raw.as_bytes();
    let mut i = 0;
    std::iter::from_fn(move || {
        let c = *b.get(i)?;
        i += 1;
        Some(match c {
            b'%' => {
                let v = hex_digit(*b.get(i)?).zip(b.get(i + 1).copied().and_then(hex_digit));
                i += 2;
                v.map(|(h, l)| h << 4 | l)
            }
            b'+' if form => Some(b' '),
            c => Some(c),
        })
    })
}

/// `raw` with its `%XX` escapes decoded, as s3s decodes a path; `None` for a malformed escape or
/// bytes that are not UTF-8.
pub fn percent_decode(raw: &str) -> Option<String> {
    if !raw.contains('%') {
        return Some(raw.to_owned());
    }
    let bytes = decoded_bytes(raw, false).collect::<Option<Vec<u8>>>()?;
    String::from_utf8(bytes).ok()
}

/// A query component (`+` is a space) decoded; `None` for a malformed escape or bytes that are
/// not UTF-8.
pub fn form_decode(raw: &str) -> Option<String> {
    let bytes = decoded_bytes(raw, true).collect::<Option<Vec<u8>>>()?;
    String::from_utf8(bytes).ok()
}

/// The names of a raw query's parameters, each with its raw value, its name decoded as s3s
/// decodes it (`X-Amz-%41lgorithm` is `X-Amz-Algorithm` to s3s, and must be to every check made
/// before it); a name that does not decode is kept raw.
pub fn query_params(query: &str) -> impl Iterator<Item = (std::borrow::Cow<'_, str>, &str)> {
    query.split('&').filter(|pair| !pair.is_empty()).map(|pair| {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        let name = if name.contains(['%', '+']) {
            form_decode(name).map_or(std::borrow::Cow::Borrowed(name), std::borrow::Cow::Owned)
        } else {
            std::borrow::Cow::Borrowed(name)
        };
        (name, value)
    })
}

/// The raw value of the query parameter whose decoded name is `name` (`query_params`).
pub fn query_param<'q>(query: &'q str, name: &str) -> Option<&'q str> {
    query_params(query).find_map(|(n, v)| (n == name).then_some(v))
}

/// Appends a query component decoded; ASCII only (`None` otherwise, or for a malformed escape).
fn push_form_decoded(out: &mut String, raw: &str) -> Option<()> {
    if !raw.contains(['%', '+']) {
        out.push_str(raw);
        return Some(());
    }
    for b in decoded_bytes(raw, true) {
        let b = b?;
        if !b.is_ascii() {
            return None;
        }
        out.push(b as char);
    }
    Some(())
}

/// Seconds since the epoch of `YYYYMMDDTHHMMSSZ`.
pub fn parse_amz_date(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() != 16 || b[8] != b'T' || b[15] != b'Z' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let digits = s.get(r)?;
        digits
            .bytes()
            .all(|c| c.is_ascii_digit())
            .then(|| digits.parse().ok())?
    };
    let (y, m, d) = (num(0..4)?, num(4..6)?, num(6..8)?);
    let (hh, mm, ss) = (num(9..11)?, num(11..13)?, num(13..15)?);
    if !(1..=12).contains(&m) || !(1..=31).contains(&d) || hh > 23 || mm > 59 || ss > 60 {
        return None;
    }
    // Howard Hinnant's days_from_civil.
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(days * 86_400 + hh * 3600 + mm * 60 + ss)
}

/// Whether the request's time is acceptable now: within the skew for a header-signed request; for
/// a presigned one, not too far ahead and not past its lifetime.
pub fn in_time(auth: &Authorization<'_>, now: SystemTime) -> bool {
    let Some(t) = parse_amz_date(auth.amz_date) else {
        return false;
    };
    if auth.scope_date != &auth.amz_date[..8] {
        return false;
    }
    let now = now.duration_since(UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0);
    let age = now - t;
    match auth.expires {
        None => age.abs() <= MAX_SKEW_SECS,
        Some(expires) => -age <= MAX_SKEW_SECS && age <= i64::from(expires),
    }
}

/// Whether S3's URI encoding keeps `b` as it is.
fn unreserved(b: u8, encode_slash: bool) -> bool {
    matches!(b, b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'_' | b'-' | b'~' | b'.') || (b == b'/' && !encode_slash)
}

/// Appends one byte in S3's URI encoding.
fn push_encoded(out: &mut Vec<u8>, b: u8, encode_slash: bool) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    if unreserved(b, encode_slash) {
        out.push(b);
    } else {
        out.extend_from_slice(&[b'%', HEX[usize::from(b >> 4)], HEX[usize::from(b & 15)]]);
    }
}

/// Appends `raw` decoded (`%XX`; with `form`, `+` is a space too) and encoded again in S3's URI
/// encoding, as s3s canonicalizes it; runs that need neither are copied whole. `None` for a
/// malformed escape, or (with `ascii_only`) a decoded byte that is not ASCII.
fn push_reencoded(out: &mut Vec<u8>, raw: &str, form: bool, encode_slash: bool, ascii_only: bool) -> Option<()> {
    let raw = raw.as_bytes();
    let mut i = 0;
    while i < raw.len() {
        let run = raw[i..].iter().take_while(|&&b| unreserved(b, encode_slash)).count();
        out.extend_from_slice(&raw[i..i + run]);
        i += run;
        let Some(&c) = raw.get(i) else { break };
        let b = match c {
            b'%' => {
                let h = hex_digit(*raw.get(i + 1)?)?;
                let l = hex_digit(*raw.get(i + 2)?)?;
                i += 3;
                h << 4 | l
            }
            b'+' if form => {
                i += 1;
                b' '
            }
            c => {
                i += 1;
                c
            }
        };
        if ascii_only && !b.is_ascii() {
            return None;
        }
        push_encoded(out, b, encode_slash);
    }
    Some(())
}

/// A canonical request being written, from the request's raw parts as they came (its path and
/// query still percent-encoded): each is decoded and encoded again as s3s does, in one pass.
pub struct CanonicalRequest {
    text: Vec<u8>,
}

impl CanonicalRequest {
    /// Starts with the method and the path (`None` for a malformed escape).
    pub fn new(method: &str, raw_path: &str) -> Option<CanonicalRequest> {
        // A GET's canonical request is a few hundred bytes. Under ~1 KiB the allocation stays in
        // glibc's small bins: a larger one consolidates its fast bins on every request.
        let mut text = Vec::with_capacity(512 + raw_path.len() * 3);
        text.extend_from_slice(method.as_bytes());
        text.push(b'\n');
        push_reencoded(&mut text, raw_path, false, false, false)?;
        text.push(b'\n');
        Some(CanonicalRequest { text })
    }

    /// The query: raw `(name, value)` pairs whose names need no encoding, sorted here;
    /// `X-Amz-Signature` left out. `None` for a value that is not ASCII once decoded.
    pub fn query(&mut self, pairs: &mut [(&str, &str)]) -> Option<()> {
        pairs.sort_unstable_by(|a, b| a.0.cmp(b.0));
        let mut first = true;
        for (name, value) in pairs.iter().filter(|(n, _)| *n != "X-Amz-Signature") {
            if !first {
                self.text.push(b'&');
            }
            first = false;
            self.text.extend_from_slice(name.as_bytes());
            self.text.push(b'=');
            push_reencoded(&mut self.text, value, true, true, true)?;
        }
        self.text.push(b'\n');
        Some(())
    }

    /// One signed header (in name order) with its values, in order, each trimmed and with inner
    /// whitespace collapsed, joined by commas.
    pub fn header<'v>(&mut self, name: &str, values: impl Iterator<Item = &'v str>) {
        self.text.extend_from_slice(name.as_bytes());
        self.text.push(b':');
        for (i, v) in values.enumerate() {
            if i > 0 {
                self.text.push(b',');
            }
            let v = v.trim();
            if !v.contains(char::is_whitespace) {
                self.text.extend_from_slice(v.as_bytes());
                continue;
            }
            for (j, w) in v.split_whitespace().enumerate() {
                if j > 0 {
                    self.text.push(b' ');
                }
                self.text.extend_from_slice(w.as_bytes());
            }
        }
        self.text.push(b'\n');
    }

    /// Ends with the signed header names and the payload hash.
    pub fn finish(mut self, signed_headers: &str, payload: &str) -> Vec<u8> {
        self.text.push(b'\n');
        self.text.extend_from_slice(signed_headers.as_bytes());
        self.text.push(b'\n');
        self.text.extend_from_slice(payload.as_bytes());
        self.text
    }
}

/// HMAC-SHA256 keyed by a derived signing key, with the key's inner and outer pads hashed once.
#[derive(Clone)]
struct SigningKey {
    inner: Sha256,
    outer: Sha256,
}

impl SigningKey {
    fn new(key: &[u8; 32]) -> SigningKey {
        let mut ipad = [0x36u8; 64];
        let mut opad = [0x5cu8; 64];
        for (i, k) in key.iter().enumerate() {
            ipad[i] ^= k;
            opad[i] ^= k;
        }
        let mut inner = Sha256::new();
        inner.update(ipad);
        let mut outer = Sha256::new();
        outer.update(opad);
        SigningKey { inner, outer }
    }

    fn sign(&self, msg: &[u8]) -> [u8; 32] {
        let mut inner = self.inner.clone();
        inner.update(msg);
        let mut outer = self.outer.clone();
        outer.update(inner.finalize());
        outer.finalize().into()
    }
}

fn hmac(key: &[u8], msg: &[u8]) -> [u8; 32] {
    let mut block = [0u8; 64];
    if key.len() > 64 {
        block[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        block[..key.len()].copy_from_slice(key);
    }
    let mut inner = Sha256::new();
    inner.update(block.map(|b| b ^ 0x36));
    inner.update(msg);
    let mut outer = Sha256::new();
    outer.update(block.map(|b| b ^ 0x5c));
    outer.update(inner.finalize());
    outer.finalize().into()
}

/// The one key pair clients sign with, and the signing key of the last scope seen.
pub struct Verifier {
    access_key_id: String,
    secret_access_key: String,
    /// (scope date, region, service) and its signing key: one day's requests share it.
    last: Mutex<Option<(String, String, String, SigningKey)>>,
}

impl Verifier {
    pub fn new(access_key_id: String, secret_access_key: String) -> Verifier {
        Verifier {
            access_key_id,
            secret_access_key,
            last: Mutex::new(None),
        }
    }

    fn key(&self, date: &str, region: &str, service: &str) -> SigningKey {
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((d, r, s, key)) = last.as_ref()
            && d == date
            && r == region
            && s == service
        {
            return key.clone();
        }
        let k_date = hmac(format!("AWS4{}", self.secret_access_key).as_bytes(), date.as_bytes());
        let k_region = hmac(&k_date, region.as_bytes());
        let k_service = hmac(&k_region, service.as_bytes());
        let key = SigningKey::new(&hmac(&k_service, b"aws4_request"));
        *last = Some((date.to_owned(), region.to_owned(), service.to_owned(), key.clone()));
        key
    }

    /// Whether `access_key_id` is the one this verifier holds.
    pub fn has_key(&self, access_key_id: &str) -> bool {
        self.access_key_id == access_key_id
    }

    /// Whether `auth` is ours and signs exactly `canonical_request`.
    pub fn verify(&self, auth: &Authorization<'_>, canonical_request: &[u8]) -> bool {
        // As s3s reads a signature: 64 lower-case hex digits, or none.
        let lower_hex = |b: u8| b.is_ascii_digit() || (b'a'..=b'f').contains(&b);
        if auth.access_key_id != self.access_key_id
            || auth.signature.len() != 64
            || !auth.signature.bytes().all(lower_hex)
        {
            return false;
        }
        let mut to_sign = String::with_capacity(160);
        to_sign.push_str("AWS4-HMAC-SHA256\n");
        to_sign.push_str(auth.amz_date);
        to_sign.push('\n');
        for part in [auth.scope_date, "/", auth.region, "/", auth.service, "/aws4_request\n"] {
            to_sign.push_str(part);
        }
        let mut hashed = [0u8; 64];
        if hex::encode_to_slice(Sha256::digest(canonical_request), &mut hashed).is_err() {
            return false;
        }
        // Hex digits: ASCII.
        match std::str::from_utf8(&hashed) {
            Ok(hex) => to_sign.push_str(hex),
            Err(_) => return false,
        }
        let computed = self
            .key(auth.scope_date, auth.region, auth.service)
            .sign(to_sign.as_bytes());
        let mut expected = [0u8; 32];
        if hex::decode_to_slice(auth.signature, &mut expected).is_err() {
            return false;
        }
        // Constant time: every byte is compared whatever the first difference.
        computed
            .iter()
            .zip(expected.iter())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const AK: &str = "AKIAIOSFODNN7EXAMPLE";
    const SK: &str = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY";
    const EMPTY: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    fn get_object_example(path: &str) -> Vec<u8> {
        let mut c = CanonicalRequest::new("GET", path).unwrap();
        c.query(&mut []).unwrap();
        c.header("host", ["examplebucket.s3.amazonaws.com"].into_iter());
        c.header("range", ["bytes=0-9"].into_iter());
        c.header("x-amz-content-sha256", [EMPTY].into_iter());
        c.header("x-amz-date", ["20130524T000000Z"].into_iter());
        c.finish("host;range;x-amz-content-sha256;x-amz-date", EMPTY)
    }

    /// AWS's documented example "GET Object" (Signature Version 4, header authorization).
    #[test]
    fn aws_header_example() {
        let header = "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request,\
                      SignedHeaders=host;range;x-amz-content-sha256;x-amz-date,\
                      Signature=f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41";
        let auth = parse_header(header, "20130524T000000Z").unwrap();
        assert_eq!(auth.signed_headers, "host;range;x-amz-content-sha256;x-amz-date");
        let creq = get_object_example("/test.txt");
        let v = Verifier::new(AK.into(), SK.into());
        assert!(v.verify(&auth, &creq));
        // Twice: the second from the cached key.
        assert!(v.verify(&auth, &creq));
        // The path is decoded and encoded again: the same request.
        assert!(v.verify(&auth, &get_object_example("/test%2Etxt")));
        assert!(!v.verify(&auth, &get_object_example("/test.txu")));
        assert!(CanonicalRequest::new("GET", "/bad%zz").is_none());
        assert!(!Verifier::new("OTHER".into(), SK.into()).verify(&auth, &creq));
        assert!(!Verifier::new(AK.into(), "wrong".into()).verify(&auth, &creq));
    }

    /// AWS's documented presigned URL example.
    #[test]
    fn aws_presigned_example() {
        let mut query = vec![
            ("X-Amz-Algorithm", "AWS4-HMAC-SHA256"),
            (
                "X-Amz-Credential",
                "AKIAIOSFODNN7EXAMPLE%2F20130524%2Fus-east-1%2Fs3%2Faws4_request",
            ),
            ("X-Amz-Date", "20130524T000000Z"),
            ("X-Amz-Expires", "86400"),
            ("X-Amz-SignedHeaders", "host"),
            (
                "X-Amz-Signature",
                "aeeed9bbccd4d02ee5c0109b86d86835f995330da4c265957d157751f604d404",
            ),
        ];
        query.reverse();
        let mut decoded = String::new();
        let auth = parse_presigned(&query, &mut decoded).unwrap();
        assert_eq!(auth.expires, Some(86400));
        assert_eq!(auth.access_key_id, AK);
        let mut c = CanonicalRequest::new("GET", "/test.txt").unwrap();
        let mut pairs = query.clone();
        c.query(&mut pairs).unwrap();
        c.header("host", ["examplebucket.s3.amazonaws.com"].into_iter());
        let creq = c.finish(auth.signed_headers, "UNSIGNED-PAYLOAD");
        assert!(Verifier::new(AK.into(), SK.into()).verify(&auth, &creq));
        let t = |s: i64| UNIX_EPOCH + std::time::Duration::from_secs(s as u64);
        let signed_at = parse_amz_date("20130524T000000Z").unwrap();
        assert_eq!(signed_at, 1_369_353_600);
        assert!(in_time(&auth, t(signed_at + 86_400)));
        assert!(!in_time(&auth, t(signed_at + 86_401)));
        assert!(in_time(&auth, t(signed_at - 900)));
        assert!(!in_time(&auth, t(signed_at - 901)));
    }

    #[test]
    fn header_times_and_shapes() {
        let auth = parse_header(
            "AWS4-HMAC-SHA256 Credential=AK/20240229/eu-west-1/s3/aws4_request, SignedHeaders=host, Signature=ab",
            "20240229T235959Z",
        )
        .unwrap();
        assert_eq!((auth.region, auth.service), ("eu-west-1", "s3"));
        let t = parse_amz_date("20240229T235959Z").unwrap();
        let at = |s: i64| UNIX_EPOCH + std::time::Duration::from_secs(s as u64);
        assert!(in_time(&auth, at(t + 900)) && in_time(&auth, at(t - 900)));
        assert!(!in_time(&auth, at(t + 901)) && !in_time(&auth, at(t - 901)));
        assert!(parse_header("AWS4-HMAC-SHA256 Credential=AK/20240229/r/s3/aws4_request", "x").is_none());
        assert!(parse_header("AWS AK:sig", "x").is_none());
        assert!(parse_amz_date("20241301T000000Z").is_none());
        assert!(parse_amz_date("2024-01-01T00:00:00Z").is_none());
        let c = CanonicalRequest::new("GET", "/a%20b/%C3%BC+~").unwrap();
        assert!(c.finish("", "").starts_with(b"GET\n/a%20b/%C3%BC%2B~\n"));
        let mut c = CanonicalRequest::new("GET", "/").unwrap();
        assert!(
            c.query(&mut [("x-id", "%C3%BC")]).is_none(),
            "non-ASCII query values are s3s's"
        );
        let mut c = CanonicalRequest::new("GET", "/").unwrap();
        c.query(&mut [("x-id", "a+b%2b")]).unwrap();
        assert!(c.finish("", "").starts_with(b"GET\n/\nx-id=a%20b%2B\n"));
    }
}
