//! A conformance suite for `Origin` implementations, run against `FsOrigin` and `S3Origin`.
//!
//! It uses only the trait, so the same checks run against `FsOrigin` (`fs.rs`) and against
//! `S3Origin` talking to an S3 server (`s3.rs`).
//!
//! `run_all` creates the bucket, runs every area, then empties and deletes the bucket. Each area
//! works under its own key prefix so that the areas can also be run one by one on an existing bucket.
//! The areas that go beyond what simple S3 emulators implement (`condition_forms`, `conditional_puts`)
//! are separate functions, so a suite over such a server can call the other areas one by one instead.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use futures::StreamExt;
use md5::{Digest, Md5};
use perch_cache::{
    ByteRange, ByteStream, ChecksumAlgorithm, ChecksumType, Checksums, CompletedPart, Conditions, ContentHeaders,
    CopyInput, ListEntry, ListPage, ListQuery, MetadataDirective, MultipartChecksum, ObjectMeta, Origin, OriginError,
    OriginResult, PutBody, PutInput, PutOutput,
};

pub const MIB: usize = 1024 * 1024;

// ---------------------------------------------------------------------------------------------
// Helpers

/// `"<hex md5>"`, the ETag of a single-part object.
pub fn md5_etag(data: &[u8]) -> String {
    format!("\"{}\"", hex::encode(Md5::digest(data)))
}

/// `"<hex md5 of the parts' binary md5s>-N"`, the ETag of a multipart object.
pub fn multipart_etag(parts: &[&[u8]]) -> String {
    let mut all = Md5::new();
    for p in parts {
        all.update(Md5::digest(p));
    }
    format!("\"{}-{}\"", hex::encode(all.finalize()), parts.len())
}

/// Deterministic bytes that differ with `seed` and do not repeat with a short period.
pub fn pattern(len: usize, seed: u32) -> Vec<u8> {
    let mut x = seed.wrapping_mul(2_654_435_761).wrapping_add(0x9E37_79B9);
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            (x >> 24) as u8
        })
        .collect()
}

pub fn put_input(body: impl Into<Bytes>) -> PutInput {
    PutInput {
        headers: ContentHeaders::default(),
        checksums: Default::default(),
        body: PutBody::Bytes(body.into()),
        if_match: None,
        if_none_match: None,
        content_md5: None,
        extra_headers: Vec::new(),
    }
}

pub fn no_conditions() -> Conditions {
    Conditions::default()
}

pub fn query(prefix: Option<&str>, delimiter: Option<&str>, max_keys: usize) -> ListQuery {
    ListQuery {
        prefix: prefix.map(str::to_owned),
        delimiter: delimiter.map(str::to_owned),
        max_keys,
        start_after: None,
        continuation: None,
    }
}

/// The value of a result that must be `Ok`.
pub fn ok<T>(r: OriginResult<T>, what: &str) -> T {
    match r {
        Ok(v) => v,
        Err(e) => panic!("{what}: unexpected error {e:?}"),
    }
}

/// A short name for an error: the variant, or `Rejected <status> <code>`.
pub fn error_name(e: &OriginError) -> String {
    match e {
        OriginError::NoSuchBucket => "NoSuchBucket".into(),
        OriginError::NoSuchKey => "NoSuchKey".into(),
        OriginError::NoSuchUpload => "NoSuchUpload".into(),
        OriginError::PreconditionFailed => "PreconditionFailed".into(),
        OriginError::NotModified { .. } => "NotModified".into(),
        OriginError::InvalidRange { .. } => "InvalidRange".into(),
        OriginError::Rejected { status, code, .. } => format!("Rejected {status} {code}"),
        OriginError::Transient { what, .. } => format!("Transient {what}"),
        OriginError::Unavailable { .. } => "Unavailable".into(),
        OriginError::Io(e) => format!("Io {e}"),
    }
}

/// Asserts that a result is the error named `expected` (see `error_name`).
pub fn expect_err<T: std::fmt::Debug>(r: OriginResult<T>, expected: &str, what: &str) {
    match r {
        Ok(v) => panic!("{what}: expected {expected}, got Ok({v:?})"),
        Err(e) => assert_eq!(error_name(&e), expected, "{what}: wrong error {e:?}"),
    }
}

pub async fn read_all(mut body: ByteStream) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(chunk) = body.next().await {
        match chunk {
            Ok(c) => out.extend_from_slice(&c),
            Err(e) => panic!("reading a body: {e}"),
        }
    }
    out
}

pub async fn put(o: &dyn Origin, bucket: &str, key: &str, body: &[u8]) -> PutOutput {
    ok(
        o.put_object(bucket, key, &put_input(body.to_vec())).await,
        &format!("put {key:?}"),
    )
}

pub async fn put_with(o: &dyn Origin, bucket: &str, key: &str, body: &[u8], headers: &ContentHeaders) -> PutOutput {
    let mut input = put_input(body.to_vec());
    input.headers = headers.clone();
    ok(o.put_object(bucket, key, &input).await, &format!("put {key:?}"))
}

pub async fn get(o: &dyn Origin, bucket: &str, key: &str) -> (ObjectMeta, Vec<u8>) {
    let out = ok(
        o.get_object(bucket, key, None, &no_conditions()).await,
        &format!("get {key:?}"),
    );
    assert_eq!(out.range, None, "get {key:?} without a range");
    let meta = out.meta;
    (meta, read_all(out.body).await)
}

pub async fn get_bytes(o: &dyn Origin, bucket: &str, key: &str) -> Vec<u8> {
    get(o, bucket, key).await.1
}

pub async fn get_range(o: &dyn Origin, bucket: &str, key: &str, range: ByteRange) -> (Option<(u64, u64)>, Vec<u8>) {
    let out = ok(
        o.get_object(bucket, key, Some(range), &no_conditions()).await,
        &format!("get {key:?} {range:?}"),
    );
    let span = out.range;
    (span, read_all(out.body).await)
}

/// Compares bodies without printing megabytes when they differ.
#[track_caller]
pub fn assert_same_body(actual: &[u8], expected: &[u8], what: &str) {
    assert_eq!(actual.len(), expected.len(), "{what}: body length");
    if actual != expected {
        let at = actual.iter().zip(expected).position(|(a, b)| a != b).unwrap_or(0);
        panic!("{what}: bodies differ first at byte {at}");
    }
}

pub fn keys_of(objects: &[ListEntry]) -> Vec<&str> {
    objects.iter().map(|e| e.key.as_str()).collect()
}

/// Every page of a listing, following `next` until it is absent.
pub async fn list_pages(o: &dyn Origin, bucket: &str, first: ListQuery) -> Vec<ListPage> {
    let mut pages = Vec::new();
    let mut q = first;
    loop {
        let page = ok(o.list_objects(bucket, &q).await, &format!("list {q:?}"));
        let next = page.next.clone();
        pages.push(page);
        assert!(pages.len() <= 10_000, "the listing does not end");
        match next {
            Some(token) => q.continuation = Some(token),
            None => return pages,
        }
    }
}

/// One entry of a listing: an object (`key`) or a common prefix (`prefix/`), in listing order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Item {
    Key(String),
    Prefix(String),
}

/// The objects and common prefixes of a page merged in key order, as S3 counts them against max-keys.
pub fn items(page: &ListPage) -> Vec<Item> {
    let mut all: Vec<Item> = page
        .objects
        .iter()
        .map(|e| Item::Key(e.key.clone()))
        .chain(page.common_prefixes.iter().map(|p| Item::Prefix(p.clone())))
        .collect();
    all.sort_by(|a, b| item_str(a).cmp(item_str(b)));
    all
}

fn item_str(i: &Item) -> &str {
    match i {
        Item::Key(k) | Item::Prefix(k) => k,
    }
}

fn k(s: &str) -> Item {
    Item::Key(s.to_owned())
}

fn p(s: &str) -> Item {
    Item::Prefix(s.to_owned())
}

/// Every key under `prefix`, over all pages.
pub async fn all_keys(o: &dyn Origin, bucket: &str, prefix: &str) -> Vec<String> {
    let pages = list_pages(o, bucket, query(Some(prefix), None, 1000)).await;
    pages
        .iter()
        .flat_map(|p| p.objects.iter().map(|e| e.key.clone()))
        .collect()
}

fn secs(t: SystemTime) -> i64 {
    match t.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(d) => d.as_secs() as i64,
        Err(e) => -(e.duration().as_secs() as i64),
    }
}

/// Whether `t` is within `slack` seconds of the interval [from, to] (clocks of a remote server drift).
#[track_caller]
fn assert_time_near(t: SystemTime, from: SystemTime, to: SystemTime, slack: i64, what: &str) {
    let (t, from, to) = (secs(t), secs(from), secs(to));
    assert!(
        t >= from - slack && t <= to + slack,
        "{what}: {t} not within [{from}, {to}] ± {slack} s"
    );
}

// ---------------------------------------------------------------------------------------------
// The suite

/// Creates `bucket`, runs every area, then empties and deletes it.
pub async fn run_all(origin: Arc<dyn Origin>, bucket: &str) {
    let o = origin.as_ref();
    ok(o.create_bucket(bucket).await, "create the bucket");
    ok(o.head_bucket(bucket).await, "head the new bucket");
    let empty = ok(
        o.list_objects(bucket, &query(None, None, 1000)).await,
        "list the new bucket",
    );
    assert_eq!(empty, ListPage::default(), "a new bucket is empty");

    objects(o, bucket).await;
    conditions(o, bucket).await;
    condition_forms(o, bucket).await;
    conditional_puts(o, bucket).await;
    ranges(o, bucket).await;
    listing(o, bucket).await;
    copy(o, bucket).await;
    storage_classes(o, bucket).await;
    multipart(o, bucket).await;
    multipart_errors(o, bucket).await;
    multipart_checksums(o, bucket, false).await;
    keys(o, bucket).await;
    buckets(o, bucket).await;

    empty_bucket(o, bucket).await;
    ok(o.delete_bucket(bucket).await, "delete the bucket");
    expect_err(o.head_bucket(bucket).await, "NoSuchBucket", "head a deleted bucket");
}

/// Aborts every upload and deletes every object of `bucket`.
pub async fn empty_bucket(o: &dyn Origin, bucket: &str) {
    for u in ok(o.list_multipart_uploads(bucket, "").await, "list uploads") {
        ok(
            o.abort_multipart_upload(bucket, &u.key, &u.upload_id).await,
            "abort an upload",
        );
    }
    for key in all_keys(o, bucket, "").await {
        ok(o.delete_object(bucket, &key, None).await, &format!("delete {key:?}"));
    }
    let left = ok(
        o.list_objects(bucket, &query(None, None, 1000)).await,
        "list the emptied bucket",
    );
    assert!(left.objects.is_empty(), "objects left: {:?}", keys_of(&left.objects));
}

fn full_headers() -> ContentHeaders {
    ContentHeaders {
        content_type: Some("text/plain; charset=utf-8".into()),
        cache_control: Some("max-age=60, public".into()),
        content_encoding: Some("identity".into()),
        content_disposition: Some("attachment; filename=\"hello.txt\"".into()),
        content_language: Some("en-GB".into()),
        expires: Some("Wed, 21 Oct 2037 07:28:00 GMT".into()),
        metadata: BTreeMap::from([("color".into(), "blue".into()), ("two-words".into(), "a b".into())]),
        storage_class: None,
        tags: Vec::new(),
        origin_tag_count: None,
        opaque_etag_encryption: None,
    }
}

/// PUT, GET, HEAD, DELETE of whole objects: bodies, ETags, headers, empty and larger objects.
pub async fn objects(o: &dyn Origin, bucket: &str) {
    let key = "obj/hello.txt";
    let body = b"Hello, Perch!\n".to_vec();
    let headers = full_headers();
    let before = SystemTime::now();
    let out = put_with(o, bucket, key, &body, &headers).await;
    let after = SystemTime::now();
    assert_eq!(out.etag, md5_etag(&body), "ETag of a PUT");

    let head = ok(o.head_object(bucket, key, &no_conditions()).await, "head");
    assert_eq!(head.size, body.len() as u64);
    assert_eq!(head.etag, md5_etag(&body));
    assert_eq!(head.headers, headers, "headers kept by the object");
    assert_time_near(head.last_modified, before, after, 60, "Last-Modified of a PUT");

    let (meta, got) = get(o, bucket, key).await;
    assert_eq!(got, body);
    assert_eq!(meta, head, "GET and HEAD agree");

    // Overwrite with another body and no headers.
    let body2 = b"second version".to_vec();
    let out2 = put(o, bucket, key, &body2).await;
    assert_eq!(out2.etag, md5_etag(&body2));
    let (meta2, got2) = get(o, bucket, key).await;
    assert_eq!(got2, body2);
    assert_eq!(meta2.etag, md5_etag(&body2));
    assert_eq!(meta2.size, body2.len() as u64);
    assert!(
        meta2.headers.metadata.is_empty(),
        "an overwrite drops old metadata: {:?}",
        meta2.headers
    );
    assert_eq!(meta2.headers.cache_control, None);

    // Empty object.
    let out = put(o, bucket, "obj/empty", b"").await;
    assert_eq!(out.etag, "\"d41d8cd98f00b204e9800998ecf8427e\"");
    let (meta, got) = get(o, bucket, "obj/empty").await;
    assert_eq!(meta.size, 0);
    assert!(got.is_empty());

    // A body from a file, larger than one read chunk.
    let data = pattern(300 * 1024 + 7, 1);
    let mut file = match tempfile::NamedTempFile::new() {
        Ok(f) => f,
        Err(e) => panic!("temp file: {e}"),
    };
    if let Err(e) = std::io::Write::write_all(&mut file, &data) {
        panic!("writing the temp file: {e}");
    }
    let mut input = put_input(Bytes::new());
    input.body = PutBody::File {
        path: file.path().to_owned(),
        len: data.len() as u64,
    };
    let out = ok(o.put_object(bucket, "obj/from-file", &input).await, "put from a file");
    assert_eq!(out.etag, md5_etag(&data));
    assert_same_body(
        &get_bytes(o, bucket, "obj/from-file").await,
        &data,
        "body put from a file",
    );

    // A few MiB, streamed back.
    let big = pattern(3 * MIB + 17, 2);
    let out = put(o, bucket, "obj/big", &big).await;
    assert_eq!(out.etag, md5_etag(&big));
    let (meta, got) = get(o, bucket, "obj/big").await;
    assert_eq!(meta.size, big.len() as u64);
    assert_same_body(&got, &big, "3 MiB object");

    // A conditional delete (If-Match): another ETag is 412 and deletes nothing; an absent key is
    // NoSuchKey; the object's own ETag deletes it.
    expect_err(
        o.delete_object(bucket, key, Some(&md5_etag(b"another body"))).await,
        "PreconditionFailed",
        "delete if another ETag",
    );
    assert_eq!(
        get(o, bucket, key).await.1,
        body2,
        "a failed conditional delete keeps the object"
    );
    expect_err(
        o.delete_object(bucket, "obj/never-was", Some("*")).await,
        "NoSuchKey",
        "delete if any ETag, of a key that never was",
    );
    ok(
        o.delete_object(bucket, "obj/empty", Some(&md5_etag(b""))).await,
        "delete if its ETag",
    );
    expect_err(
        o.head_object(bucket, "obj/empty", &no_conditions()).await,
        "NoSuchKey",
        "head a key deleted if its ETag",
    );

    // Delete, then everything about the key is gone; deleting again succeeds.
    ok(
        o.delete_object(bucket, key, Some(&md5_etag(&body2))).await,
        "delete if its ETag",
    );
    expect_err(
        o.get_object(bucket, key, None, &no_conditions()).await,
        "NoSuchKey",
        "get a deleted key",
    );
    expect_err(
        o.head_object(bucket, key, &no_conditions()).await,
        "NoSuchKey",
        "head a deleted key",
    );
    ok(o.delete_object(bucket, key, None).await, "delete an absent key");
    ok(
        o.delete_object(bucket, "obj/never-was", None).await,
        "delete a key that never was",
    );
    expect_err(
        o.get_object(bucket, "obj/never-was", None, &no_conditions()).await,
        "NoSuchKey",
        "get a missing key",
    );

    // A bucket that does not exist.
    let missing = format!("{bucket}-missing");
    expect_err(
        o.get_object(&missing, "k", None, &no_conditions()).await,
        "NoSuchBucket",
        "get in a missing bucket",
    );
    expect_err(
        o.put_object(&missing, "k", &put_input("x")).await,
        "NoSuchBucket",
        "put in a missing bucket",
    );
    expect_err(
        o.delete_object(&missing, "k", None).await,
        "NoSuchBucket",
        "delete in a missing bucket",
    );
    expect_err(
        o.list_objects(&missing, &query(None, None, 10)).await,
        "NoSuchBucket",
        "list a missing bucket",
    );

    for k in ["obj/empty", "obj/from-file", "obj/big"] {
        ok(o.delete_object(bucket, k, None).await, "cleanup");
    }
}

/// Runs `c` against a HEAD and a GET of `key`, expecting `expected` ("Ok" or an error name) from both.
async fn check_conditions(o: &dyn Origin, bucket: &str, key: &str, c: Conditions, expected: &str, what: &str) {
    let head = o.head_object(bucket, key, &c).await.map(|_| ());
    let get = match o.get_object(bucket, key, None, &c).await {
        Ok(out) => {
            read_all(out.body).await;
            Ok(())
        }
        Err(e) => Err(e),
    };
    for (verb, r) in [("HEAD", head), ("GET", get)] {
        let name = match r {
            Ok(()) => "Ok".to_owned(),
            Err(e) => error_name(&e),
        };
        assert_eq!(name, expected, "{verb} {what} ({c:?})");
    }
}

fn cond(f: impl FnOnce(&mut Conditions)) -> Conditions {
    let mut c = Conditions::default();
    f(&mut c);
    c
}

/// If-Match, If-None-Match, If-Modified-Since, If-Unmodified-Since on GET and HEAD, with quoted ETags.
pub async fn conditions(o: &dyn Origin, bucket: &str) {
    let key = "cond/x";
    let body = b"conditional".to_vec();
    let etag = put(o, bucket, key, &body).await.etag;
    let lm = ok(o.head_object(bucket, key, &no_conditions()).await, "head").last_modified;
    let past = lm - Duration::from_secs(3600);
    let future = lm + Duration::from_secs(3600);
    let other = "\"0123456789abcdef0123456789abcdef\"".to_owned();

    let cases: Vec<(Conditions, &str, &str)> = vec![
        (cond(|c| c.if_match = Some(etag.clone())), "Ok", "If-Match the ETag"),
        (
            cond(|c| c.if_match = Some(other.clone())),
            "PreconditionFailed",
            "If-Match another ETag",
        ),
        (
            cond(|c| c.if_none_match = Some(etag.clone())),
            "NotModified",
            "If-None-Match the ETag",
        ),
        (
            cond(|c| c.if_none_match = Some(other.clone())),
            "Ok",
            "If-None-Match another ETag",
        ),
        (
            cond(|c| c.if_modified_since = Some(lm)),
            "NotModified",
            "If-Modified-Since Last-Modified",
        ),
        (
            cond(|c| c.if_modified_since = Some(future)),
            "NotModified",
            "If-Modified-Since later",
        ),
        (
            cond(|c| c.if_modified_since = Some(past)),
            "Ok",
            "If-Modified-Since earlier",
        ),
        (
            cond(|c| c.if_unmodified_since = Some(lm)),
            "Ok",
            "If-Unmodified-Since Last-Modified",
        ),
        (
            cond(|c| c.if_unmodified_since = Some(future)),
            "Ok",
            "If-Unmodified-Since later",
        ),
        (
            cond(|c| c.if_unmodified_since = Some(past)),
            "PreconditionFailed",
            "If-Unmodified-Since earlier",
        ),
        // S3's documented combinations.
        (
            cond(|c| {
                c.if_match = Some(etag.clone());
                c.if_unmodified_since = Some(past);
            }),
            "Ok",
            "If-Match true wins over If-Unmodified-Since false",
        ),
        (
            cond(|c| {
                c.if_none_match = Some(etag.clone());
                c.if_modified_since = Some(past);
            }),
            "NotModified",
            "If-None-Match false wins over If-Modified-Since true",
        ),
        (
            cond(|c| {
                c.if_match = Some(other.clone());
                c.if_none_match = Some(etag.clone());
            }),
            "PreconditionFailed",
            "If-Match is evaluated before If-None-Match",
        ),
    ];
    for (c, expected, what) in cases {
        check_conditions(o, bucket, key, c, expected, what).await;
    }

    // A missing key is missing whatever the conditions.
    let c = cond(|c| c.if_match = Some(etag.clone()));
    expect_err(
        o.head_object(bucket, "cond/missing", &c).await,
        "NoSuchKey",
        "head a missing key with If-Match",
    );
    let c = cond(|c| c.if_none_match = Some(etag.clone()));
    expect_err(
        o.get_object(bucket, "cond/missing", None, &c).await,
        "NoSuchKey",
        "get a missing key with If-None-Match",
    );

    ok(o.delete_object(bucket, key, None).await, "cleanup");
}

/// ETag forms (unquoted, weak, lists, `*`) and the RFC 7232 rule that a date condition is ignored
/// when the matching ETag condition is present.
pub async fn condition_forms(o: &dyn Origin, bucket: &str) {
    let key = "condf/x";
    let etag = put(o, bucket, key, b"forms").await.etag;
    let bare = etag.trim_matches('"').to_owned();
    let lm = ok(o.head_object(bucket, key, &no_conditions()).await, "head").last_modified;
    let past = lm - Duration::from_secs(3600);
    let future = lm + Duration::from_secs(3600);
    let other = "\"0123456789abcdef0123456789abcdef\"";

    let cases: Vec<(Conditions, &str, &str)> = vec![
        (cond(|c| c.if_match = Some(bare.clone())), "Ok", "If-Match unquoted"),
        (cond(|c| c.if_match = Some("*".into())), "Ok", "If-Match *"),
        (
            cond(|c| c.if_match = Some(format!("{other}, {etag}"))),
            "Ok",
            "If-Match list holding the ETag",
        ),
        (
            cond(|c| c.if_match = Some(format!("{other}, \"abc\""))),
            "PreconditionFailed",
            "If-Match list without it",
        ),
        (
            cond(|c| c.if_none_match = Some("*".into())),
            "NotModified",
            "If-None-Match *",
        ),
        (
            cond(|c| c.if_none_match = Some(format!("W/{etag}"))),
            "NotModified",
            "If-None-Match weak",
        ),
        (
            cond(|c| c.if_none_match = Some(bare.clone())),
            "NotModified",
            "If-None-Match unquoted",
        ),
        (
            cond(|c| c.if_none_match = Some(format!("{other},{etag}"))),
            "NotModified",
            "If-None-Match list",
        ),
        (
            cond(|c| {
                c.if_none_match = Some(other.into());
                c.if_modified_since = Some(future);
            }),
            "Ok",
            "If-Modified-Since is ignored beside If-None-Match",
        ),
        (
            cond(|c| {
                c.if_match = Some(other.into());
                c.if_unmodified_since = Some(future);
            }),
            "PreconditionFailed",
            "If-Match false fails whatever If-Unmodified-Since says",
        ),
        (
            cond(|c| {
                c.if_unmodified_since = Some(past);
                c.if_modified_since = Some(lm);
            }),
            "PreconditionFailed",
            "412 before 304",
        ),
    ];
    for (c, expected, what) in cases {
        check_conditions(o, bucket, key, c, expected, what).await;
    }
    ok(o.delete_object(bucket, key, None).await, "cleanup");
}

/// PUT with If-None-Match: * and If-Match.
pub async fn conditional_puts(o: &dyn Origin, bucket: &str) {
    let key = "cput/x";
    let mut create = put_input(b"first".to_vec());
    create.if_none_match = Some("*".into());
    let first = ok(
        o.put_object(bucket, key, &create).await,
        "If-None-Match: * on an absent key",
    );
    assert_eq!(first.etag, md5_etag(b"first"));

    let mut again = put_input(b"clobber".to_vec());
    again.if_none_match = Some("*".into());
    expect_err(
        o.put_object(bucket, key, &again).await,
        "PreconditionFailed",
        "If-None-Match: * on a present key",
    );
    assert_eq!(
        get_bytes(o, bucket, key).await,
        b"first",
        "a refused PUT leaves the object alone"
    );

    let mut stale = put_input(b"stale".to_vec());
    stale.if_match = Some(md5_etag(b"not the body"));
    expect_err(
        o.put_object(bucket, key, &stale).await,
        "PreconditionFailed",
        "If-Match another ETag",
    );
    assert_eq!(get_bytes(o, bucket, key).await, b"first");

    let mut update = put_input(b"second".to_vec());
    update.if_match = Some(first.etag.clone());
    let second = ok(o.put_object(bucket, key, &update).await, "If-Match the current ETag");
    assert_eq!(second.etag, md5_etag(b"second"));
    assert_eq!(get_bytes(o, bucket, key).await, b"second");

    // The ETag that matched before no longer does.
    expect_err(
        o.put_object(bucket, key, &update).await,
        "PreconditionFailed",
        "If-Match a replaced ETag",
    );

    let mut absent = put_input(b"x".to_vec());
    absent.if_match = Some(first.etag.clone());
    expect_err(
        o.put_object(bucket, "cput/absent", &absent).await,
        "NoSuchKey",
        "If-Match on an absent key",
    );
    expect_err(
        o.head_object(bucket, "cput/absent", &no_conditions()).await,
        "NoSuchKey",
        "nothing was written",
    );

    ok(o.delete_object(bucket, key, None).await, "cleanup");
}

/// Range GETs: first-last, open-ended, clamped, suffix, unsatisfiable, large spans.
pub async fn ranges(o: &dyn Origin, bucket: &str) {
    let key = "range/r";
    let body = pattern(100, 3);
    put(o, bucket, key, &body).await;

    let cases: Vec<(ByteRange, (u64, u64))> = vec![
        (
            ByteRange::FromTo {
                first: 0,
                last: Some(9),
            },
            (0, 9),
        ),
        (
            ByteRange::FromTo {
                first: 5,
                last: Some(5),
            },
            (5, 5),
        ),
        (ByteRange::FromTo { first: 90, last: None }, (90, 99)),
        (ByteRange::FromTo { first: 0, last: None }, (0, 99)),
        (
            ByteRange::FromTo {
                first: 95,
                last: Some(1000),
            },
            (95, 99),
        ),
        (
            ByteRange::FromTo {
                first: 99,
                last: Some(99),
            },
            (99, 99),
        ),
        (ByteRange::Suffix(10), (90, 99)),
        (ByteRange::Suffix(1), (99, 99)),
        (ByteRange::Suffix(1000), (0, 99)),
    ];
    for (range, (first, last)) in cases {
        let out = ok(
            o.get_object(bucket, key, Some(range), &no_conditions()).await,
            &format!("{range:?}"),
        );
        assert_eq!(out.range, Some((first, last)), "span of {range:?}");
        assert_eq!(out.meta.size, 100, "the size is the whole object's for {range:?}");
        let got = read_all(out.body).await;
        assert_eq!(got, &body[first as usize..=last as usize], "bytes of {range:?}");
    }
    for range in [
        ByteRange::FromTo { first: 100, last: None },
        ByteRange::FromTo {
            first: 500,
            last: Some(600),
        },
    ] {
        expect_err(
            o.get_object(bucket, key, Some(range), &no_conditions()).await,
            "InvalidRange",
            &format!("{range:?}"),
        );
    }

    // Conditions come before the range.
    let etag = md5_etag(&body);
    let c = cond(|c| c.if_none_match = Some(etag.clone()));
    let range = Some(ByteRange::FromTo {
        first: 0,
        last: Some(9),
    });
    expect_err(
        o.get_object(bucket, key, range, &c).await,
        "NotModified",
        "range with If-None-Match",
    );
    let c = cond(|c| c.if_match = Some("\"0123456789abcdef0123456789abcdef\"".into()));
    let bad = Some(ByteRange::FromTo {
        first: 1000,
        last: None,
    });
    expect_err(
        o.get_object(bucket, key, bad, &c).await,
        "PreconditionFailed",
        "bad range with a failing If-Match",
    );

    // A span in the middle of a larger object, crossing many read chunks.
    let big = pattern(3 * MIB, 4);
    put(o, bucket, "range/big", &big).await;
    let (span, got) = get_range(
        o,
        bucket,
        "range/big",
        ByteRange::FromTo {
            first: 1_000_001,
            last: Some(2_500_000),
        },
    )
    .await;
    assert_eq!(span, Some((1_000_001, 2_500_000)));
    assert_same_body(&got, &big[1_000_001..=2_500_000], "middle span of 3 MiB");
    let (span, got) = get_range(o, bucket, "range/big", ByteRange::Suffix(300_000)).await;
    assert_eq!(span, Some((big.len() as u64 - 300_000, big.len() as u64 - 1)));
    assert_same_body(&got, &big[big.len() - 300_000..], "suffix of 3 MiB");

    // A missing key is missing whatever the range.
    let r = Some(ByteRange::Suffix(5));
    expect_err(
        o.get_object(bucket, "range/missing", r, &no_conditions()).await,
        "NoSuchKey",
        "range of a missing key",
    );

    for k in [key, "range/big"] {
        ok(o.delete_object(bucket, k, None).await, "cleanup");
    }
}

/// ListObjectsV2: order, prefix, delimiter, max-keys, continuation, start-after.
pub async fn listing(o: &dyn Origin, bucket: &str) {
    // In UTF-8 byte order.
    let keys = [
        "ls/B", "ls/a", "ls/b/", "ls/b/1", "ls/b/2", "ls/c", "ls/d/x/y", "ls/d/z", "ls/e", "ls/é",
    ];
    // Written out of order, each with its own size.
    let order = [6, 2, 9, 0, 4, 8, 1, 5, 3, 7];
    for &i in &order {
        put(o, bucket, keys[i], &pattern(i * 10, i as u32)).await;
    }
    // Something outside the prefix on either side.
    put(o, bucket, "lr", b"after").await;
    put(o, bucket, "lr/", b"after").await;
    put(o, bucket, "lr/x", b"after").await;

    // Everything, in order, with sizes and ETags.
    let page = ok(
        o.list_objects(bucket, &query(Some("ls/"), None, 1000)).await,
        "list ls/",
    );
    assert_eq!(keys_of(&page.objects), keys.to_vec());
    assert!(page.common_prefixes.is_empty());
    assert_eq!(page.next, None);
    for (i, e) in page.objects.iter().enumerate() {
        let data = pattern(i * 10, i as u32);
        assert_eq!(e.size, data.len() as u64, "size of {}", e.key);
        assert_eq!(e.etag, md5_etag(&data), "ETag of {}", e.key);
    }

    // Pages of three, without a delimiter.
    let pages = list_pages(o, bucket, query(Some("ls/"), None, 3)).await;
    let got: Vec<Vec<&str>> = pages.iter().map(|p| keys_of(&p.objects)).collect();
    assert_eq!(
        got,
        vec![
            vec!["ls/B", "ls/a", "ls/b/"],
            vec!["ls/b/1", "ls/b/2", "ls/c"],
            vec!["ls/d/x/y", "ls/d/z", "ls/e"],
            vec!["ls/é"],
        ]
    );
    for (i, page) in pages.iter().enumerate() {
        assert_eq!(page.next.is_some(), i < 3, "next on page {i}");
        assert!(page.common_prefixes.is_empty());
    }

    // A page holding exactly what is left has no next.
    let page = ok(
        o.list_objects(bucket, &query(Some("ls/"), None, 10)).await,
        "list 10 of 10",
    );
    assert_eq!(page.objects.len(), 10);
    assert_eq!(page.next, None, "no next when the page holds exactly the rest");

    // Delimiter: common prefixes roll up every key under them, the prefix key itself included.
    let page = ok(
        o.list_objects(bucket, &query(Some("ls/"), Some("/"), 1000)).await,
        "list ls/ by /",
    );
    assert_eq!(keys_of(&page.objects), vec!["ls/B", "ls/a", "ls/c", "ls/e", "ls/é"]);
    assert_eq!(page.common_prefixes, vec!["ls/b/", "ls/d/"]);
    assert_eq!(page.next, None);

    // Delimiter with pages of two: objects and common prefixes count together.
    let pages = list_pages(o, bucket, query(Some("ls/"), Some("/"), 2)).await;
    let got: Vec<Vec<Item>> = pages.iter().map(items).collect();
    assert_eq!(
        got,
        vec![
            vec![k("ls/B"), k("ls/a")],
            vec![p("ls/b/"), k("ls/c")],
            vec![p("ls/d/"), k("ls/e")],
            vec![k("ls/é")],
        ]
    );
    for (i, page) in pages.iter().enumerate() {
        assert_eq!(page.next.is_some(), i < 3, "next on page {i}");
    }

    // Resuming right after a common prefix skips every key under it.
    let pages = list_pages(o, bucket, query(Some("ls/"), Some("/"), 3)).await;
    let got: Vec<Vec<Item>> = pages.iter().map(items).collect();
    assert_eq!(
        got,
        vec![
            vec![k("ls/B"), k("ls/a"), p("ls/b/")],
            vec![k("ls/c"), p("ls/d/"), k("ls/e")],
            vec![k("ls/é")]
        ]
    );

    // Every page size yields the same listing, once.
    let whole = vec![
        k("ls/B"),
        k("ls/a"),
        p("ls/b/"),
        k("ls/c"),
        p("ls/d/"),
        k("ls/e"),
        k("ls/é"),
    ];
    for size in 1..=8 {
        let pages = list_pages(o, bucket, query(Some("ls/"), Some("/"), size)).await;
        for page in &pages {
            assert!(items(page).len() <= size, "page of {size} holds {:?}", items(page));
        }
        let all: Vec<Item> = pages.iter().flat_map(items).collect();
        assert_eq!(all, whole, "listing by / in pages of {size}");
        let expected_pages = whole.len().div_ceil(size);
        assert_eq!(pages.len(), expected_pages, "number of pages of {size}");
    }
    for size in [1, 4, 7] {
        let pages = list_pages(o, bucket, query(Some("ls/"), None, size)).await;
        let all: Vec<&str> = pages.iter().flat_map(|p| keys_of(&p.objects)).collect();
        assert_eq!(all, keys.to_vec(), "listing in pages of {size}");
    }

    // Prefixes that end mid-name or at a delimiter.
    let page = ok(o.list_objects(bucket, &query(Some("ls/b"), None, 1000)).await, "ls/b");
    assert_eq!(keys_of(&page.objects), vec!["ls/b/", "ls/b/1", "ls/b/2"]);
    let page = ok(
        o.list_objects(bucket, &query(Some("ls/b"), Some("/"), 1000)).await,
        "ls/b by /",
    );
    assert!(page.objects.is_empty());
    assert_eq!(page.common_prefixes, vec!["ls/b/"]);
    let page = ok(
        o.list_objects(bucket, &query(Some("ls/b/"), Some("/"), 1000)).await,
        "ls/b/ by /",
    );
    assert_eq!(keys_of(&page.objects), vec!["ls/b/", "ls/b/1", "ls/b/2"]);
    assert!(page.common_prefixes.is_empty());
    let page = ok(
        o.list_objects(bucket, &query(Some("ls/d/"), Some("/"), 1000)).await,
        "ls/d/ by /",
    );
    assert_eq!(keys_of(&page.objects), vec!["ls/d/z"]);
    assert_eq!(page.common_prefixes, vec!["ls/d/x/"]);

    // A delimiter other than `/`.
    let page = ok(
        o.list_objects(bucket, &query(Some("ls/d/"), Some("x"), 1000)).await,
        "ls/d/ by x",
    );
    assert_eq!(keys_of(&page.objects), vec!["ls/d/z"]);
    assert_eq!(page.common_prefixes, vec!["ls/d/x"]);

    // Without a prefix, a delimiter rolls up at the first one.
    let page = ok(
        o.list_objects(bucket, &query(Some("l"), Some("/"), 1000)).await,
        "l by /",
    );
    assert_eq!(keys_of(&page.objects), vec!["lr"]);
    assert_eq!(page.common_prefixes, vec!["lr/", "ls/"]);

    // Nothing under the prefix.
    for prefix in ["ls/q", "ls/é/", "nothing-here/"] {
        let page = ok(
            o.list_objects(bucket, &query(Some(prefix), Some("/"), 1000)).await,
            prefix,
        );
        assert_eq!(page, ListPage::default(), "listing {prefix:?}");
    }

    // Max-keys 0: an empty page that does not go on.
    let page = ok(o.list_objects(bucket, &query(Some("ls/"), None, 0)).await, "max-keys 0");
    assert!(page.objects.is_empty() && page.common_prefixes.is_empty());
    assert_eq!(page.next, None, "max-keys 0 has no next");

    // Start-after.
    let after = |s: &str, delimiter: Option<&str>, max: usize| {
        let mut q = query(Some("ls/"), delimiter, max);
        q.start_after = Some(s.to_owned());
        q
    };
    let page = ok(
        o.list_objects(bucket, &after("ls/b/1", None, 1000)).await,
        "after ls/b/1",
    );
    assert_eq!(
        keys_of(&page.objects),
        vec!["ls/b/2", "ls/c", "ls/d/x/y", "ls/d/z", "ls/e", "ls/é"]
    );
    let page = ok(
        o.list_objects(bucket, &after("ls/b/11", None, 1000)).await,
        "after a key that is not there",
    );
    assert_eq!(
        keys_of(&page.objects),
        vec!["ls/b/2", "ls/c", "ls/d/x/y", "ls/d/z", "ls/e", "ls/é"]
    );
    let page = ok(
        o.list_objects(bucket, &after("a", None, 1000)).await,
        "after something before the prefix",
    );
    assert_eq!(keys_of(&page.objects), keys.to_vec());
    let page = ok(
        o.list_objects(bucket, &after("ls/é", None, 1000)).await,
        "after the last key",
    );
    assert_eq!(page, ListPage::default());
    let page = ok(
        o.list_objects(bucket, &after("ls/c", Some("/"), 1000)).await,
        "after ls/c by /",
    );
    assert_eq!(items(&page), vec![p("ls/d/"), k("ls/e"), k("ls/é")]);
    // Start-after with continuation, as clients send it: the token wins.
    let pages = list_pages(o, bucket, after("ls/a", Some("/"), 2)).await;
    let got: Vec<Vec<Item>> = pages.iter().map(items).collect();
    assert_eq!(
        got,
        vec![
            vec![p("ls/b/"), k("ls/c")],
            vec![p("ls/d/"), k("ls/e")],
            vec![k("ls/é")]
        ]
    );

    // Listing follows writes and deletes.
    ok(o.delete_object(bucket, "ls/b/1", None).await, "delete");
    put(o, bucket, "ls/b/0", b"new").await;
    let page = ok(
        o.list_objects(bucket, &query(Some("ls/b/"), None, 1000)).await,
        "after changes",
    );
    assert_eq!(keys_of(&page.objects), vec!["ls/b/", "ls/b/0", "ls/b/2"]);

    for key in all_keys(o, bucket, "ls/")
        .await
        .into_iter()
        .chain(["lr".into(), "lr/".into(), "lr/x".into()])
    {
        ok(o.delete_object(bucket, &key, None).await, "cleanup");
    }
}

fn copy_input(src_bucket: &str, src_key: &str, directive: MetadataDirective) -> CopyInput {
    CopyInput {
        src_bucket: src_bucket.to_owned(),
        src_key: src_key.to_owned(),
        conditions: Conditions::default(),
        directive,
        storage_class: None,
        tags: None,
        checksum_algorithm: None,
    }
}

/// Storage classes: a write keeps the class it names (listed, and named by HEAD), and a copy is
/// STANDARD unless it names one, whatever its directive and its source's class.
pub async fn storage_classes(o: &dyn Origin, bucket: &str) {
    let other = ContentHeaders {
        content_type: Some("text/plain".into()),
        ..Default::default()
    };
    let ia = ContentHeaders {
        storage_class: Some("STANDARD_IA".into()),
        ..Default::default()
    };
    put_with(o, bucket, "copy/class/ia", b"infrequent", &ia).await;
    for (dst, directive, class) in [
        ("copy/class/std", MetadataDirective::Copy, None),
        ("copy/class/std2", MetadataDirective::Replace(ia.clone()), None),
        ("copy/class/oz", MetadataDirective::Copy, Some("ONEZONE_IA")),
        (
            "copy/class/oz2",
            MetadataDirective::Replace(other.clone()),
            Some("ONEZONE_IA"),
        ),
    ] {
        let input = CopyInput {
            storage_class: class.map(str::to_owned),
            ..copy_input(bucket, "copy/class/ia", directive)
        };
        ok(o.copy_object(bucket, dst, &input).await, dst);
    }
    // Onto itself, naming another class: the way to change an object's class.
    let again = CopyInput {
        storage_class: Some("INTELLIGENT_TIERING".into()),
        ..copy_input(bucket, "copy/class/oz", MetadataDirective::Again)
    };
    ok(o.copy_object(bucket, "copy/class/oz", &again).await, "onto itself");
    let want = [
        ("copy/class/ia", Some("STANDARD_IA")),
        ("copy/class/oz", Some("INTELLIGENT_TIERING")),
        ("copy/class/oz2", Some("ONEZONE_IA")),
        ("copy/class/std", None),
        ("copy/class/std2", None),
    ];
    for (key, class) in want {
        let meta = ok(o.head_object(bucket, key, &no_conditions()).await, key);
        assert_eq!(meta.headers.storage_class.as_deref(), class, "{key}");
    }
    let listed = ok(
        o.list_objects(bucket, &query(Some("copy/class/"), None, 1000)).await,
        "list the classes",
    );
    let listed: Vec<_> = listed
        .objects
        .iter()
        .map(|e| (e.key.as_str(), e.storage_class.as_deref()))
        .collect();
    assert_eq!(listed, want, "listed classes");
    for (key, _) in want {
        ok(o.delete_object(bucket, key, None).await, "cleanup");
    }
}

/// CopyObject: metadata directives, copy onto itself, missing sources, copy-source conditions.
pub async fn copy(o: &dyn Origin, bucket: &str) {
    let src = "copy/src ü?&=+";
    let body = pattern(1000, 5);
    let headers = ContentHeaders {
        content_type: Some("application/json".into()),
        cache_control: Some("no-cache".into()),
        metadata: BTreeMap::from([("k".into(), "v".into())]),
        ..Default::default()
    };
    let etag = put_with(o, bucket, src, &body, &headers).await.etag;
    let src_meta = ok(o.head_object(bucket, src, &no_conditions()).await, "head the source");

    // Copy keeps the headers.
    let before = SystemTime::now();
    let out = ok(
        o.copy_object(bucket, "copy/dst", &copy_input(bucket, src, MetadataDirective::Copy))
            .await,
        "copy",
    );
    let after = SystemTime::now();
    assert_eq!(out.etag, etag, "a copy has the ETag of its body");
    assert_time_near(out.last_modified, before, after, 60, "Last-Modified of a copy");
    let (meta, got) = get(o, bucket, "copy/dst").await;
    assert_eq!(got, body);
    assert_eq!(meta.etag, etag);
    assert_eq!(meta.headers, src_meta.headers, "COPY keeps the headers");

    // Replace takes the given ones.
    let replaced = ContentHeaders {
        content_type: Some("text/csv".into()),
        metadata: BTreeMap::from([("n".into(), "2".into())]),
        ..Default::default()
    };
    let input = copy_input(bucket, src, MetadataDirective::Replace(replaced.clone()));
    ok(
        o.copy_object(bucket, "copy/dst2", &input).await,
        "copy replacing metadata",
    );
    let (meta, got) = get(o, bucket, "copy/dst2").await;
    assert_eq!(got, body);
    assert_eq!(meta.headers.content_type.as_deref(), Some("text/csv"));
    assert_eq!(meta.headers.metadata, replaced.metadata);
    assert_eq!(meta.headers.cache_control, None, "REPLACE drops the old headers");

    // A copy overwrites what is there.
    put(o, bucket, "copy/dst3", b"old").await;
    ok(
        o.copy_object(bucket, "copy/dst3", &copy_input(bucket, src, MetadataDirective::Copy))
            .await,
        "copy over",
    );
    assert_eq!(get_bytes(o, bucket, "copy/dst3").await, body);

    // Onto itself: refused unless the metadata changes.
    expect_err(
        o.copy_object(bucket, src, &copy_input(bucket, src, MetadataDirective::Copy))
            .await,
        "Rejected 400 InvalidRequest",
        "copy onto itself",
    );
    let input = copy_input(bucket, src, MetadataDirective::Replace(replaced.clone()));
    let out = ok(
        o.copy_object(bucket, src, &input).await,
        "copy onto itself replacing metadata",
    );
    assert_eq!(out.etag, etag);
    let (meta, got) = get(o, bucket, src).await;
    assert_eq!(got, body);
    assert_eq!(meta.headers.metadata, replaced.metadata);

    // Missing sources and destinations.
    expect_err(
        o.copy_object(
            bucket,
            "copy/x",
            &copy_input(bucket, "copy/missing", MetadataDirective::Copy),
        )
        .await,
        "NoSuchKey",
        "copy from a missing key",
    );
    let missing = format!("{bucket}-missing");
    expect_err(
        o.copy_object(bucket, "copy/x", &copy_input(&missing, src, MetadataDirective::Copy))
            .await,
        "NoSuchBucket",
        "copy from a missing bucket",
    );
    expect_err(
        o.copy_object(&missing, "copy/x", &copy_input(bucket, src, MetadataDirective::Copy))
            .await,
        "NoSuchBucket",
        "copy into a missing bucket",
    );
    expect_err(
        o.head_object(bucket, "copy/x", &no_conditions()).await,
        "NoSuchKey",
        "failed copies wrote nothing",
    );

    // Copy-source conditions: every failure is a 412.
    let lm = ok(o.head_object(bucket, src, &no_conditions()).await, "head").last_modified;
    let past = lm - Duration::from_secs(3600);
    let other = "\"0123456789abcdef0123456789abcdef\"".to_owned();
    let cases: Vec<(Conditions, bool, &str)> = vec![
        (cond(|c| c.if_match = Some(etag.clone())), true, "if-match the ETag"),
        (
            cond(|c| c.if_match = Some(other.clone())),
            false,
            "if-match another ETag",
        ),
        (
            cond(|c| c.if_none_match = Some(etag.clone())),
            false,
            "if-none-match the ETag",
        ),
        (
            cond(|c| c.if_none_match = Some(other.clone())),
            true,
            "if-none-match another ETag",
        ),
        (
            cond(|c| c.if_modified_since = Some(lm)),
            false,
            "if-modified-since Last-Modified",
        ),
        (
            cond(|c| c.if_modified_since = Some(past)),
            true,
            "if-modified-since earlier",
        ),
        (
            cond(|c| c.if_unmodified_since = Some(lm)),
            true,
            "if-unmodified-since Last-Modified",
        ),
        (
            cond(|c| c.if_unmodified_since = Some(past)),
            false,
            "if-unmodified-since earlier",
        ),
    ];
    for (i, (conditions, succeeds, what)) in cases.into_iter().enumerate() {
        let dst = format!("copy/cond-{i}");
        let mut input = copy_input(bucket, src, MetadataDirective::Copy);
        input.conditions = conditions;
        let r = o.copy_object(bucket, &dst, &input).await;
        if succeeds {
            ok(r, what);
            assert_eq!(get_bytes(o, bucket, &dst).await, body, "{what}");
        } else {
            expect_err(r, "PreconditionFailed", what);
            expect_err(o.head_object(bucket, &dst, &no_conditions()).await, "NoSuchKey", what);
        }
    }

    for key in all_keys(o, bucket, "copy/").await {
        ok(o.delete_object(bucket, &key, None).await, "cleanup");
    }
}

/// A multipart upload from start to end: parts out of order, list_parts, the ETag, ranges over parts.
pub async fn multipart(o: &dyn Origin, bucket: &str) {
    let key = "mp/big";
    let headers = ContentHeaders {
        content_type: Some("application/x-perch-test".into()),
        metadata: BTreeMap::from([("m".into(), "1".into())]),
        ..Default::default()
    };
    let part1 = pattern(5 * MIB, 10);
    let part2 = pattern(5 * MIB + 3, 11);
    let part3 = pattern(1000, 12);

    let id = ok(
        o.create_multipart_upload(bucket, key, &headers, &[], None).await,
        "create upload",
    );
    let uploads = ok(o.list_multipart_uploads(bucket, "mp/").await, "list uploads");
    assert_eq!(uploads.len(), 1, "{uploads:?}");
    assert_eq!(
        (uploads[0].key.as_str(), uploads[0].upload_id.as_str()),
        (key, id.as_str())
    );
    assert!(ok(o.list_parts(bucket, key, &id).await, "list no parts").is_empty());

    // Out of order, and part 2 uploaded twice: the last one counts.
    let upload = |n: i32, data: Vec<u8>| {
        let id = id.clone();
        async move {
            ok(
                o.upload_part(bucket, key, &id, n, &PutBody::Bytes(data.into()), &Checksums::default())
                    .await,
                &format!("upload part {n}"),
            )
            .etag
        }
    };
    let e3 = upload(3, part3.clone()).await;
    upload(2, pattern(5 * MIB, 99)).await;
    let e1 = upload(1, part1.clone()).await;
    let e2 = upload(2, part2.clone()).await;
    assert_eq!(e1, md5_etag(&part1));
    assert_eq!(e2, md5_etag(&part2));
    assert_eq!(e3, md5_etag(&part3));

    let parts = ok(o.list_parts(bucket, key, &id).await, "list parts");
    let got: Vec<(i32, &str, u64)> = parts.iter().map(|p| (p.part_number, p.etag.as_str(), p.size)).collect();
    assert_eq!(
        got,
        vec![
            (1, e1.as_str(), part1.len() as u64),
            (2, e2.as_str(), part2.len() as u64),
            (3, e3.as_str(), part3.len() as u64),
        ]
    );

    // Nothing is visible before completion.
    expect_err(
        o.head_object(bucket, key, &no_conditions()).await,
        "NoSuchKey",
        "an upload in progress",
    );

    let completed = [
        CompletedPart {
            part_number: 1,
            etag: e1.clone(),
            checksums: Checksums::default(),
        },
        CompletedPart {
            part_number: 2,
            etag: e2.clone(),
            checksums: Checksums::default(),
        },
        CompletedPart {
            part_number: 3,
            etag: e3.clone(),
            checksums: Checksums::default(),
        },
    ];
    let etag = ok(
        o.complete_multipart_upload(bucket, key, &id, &completed).await,
        "complete",
    )
    .etag;
    assert_eq!(etag, multipart_etag(&[&part1, &part2, &part3]));

    let whole: Vec<u8> = [part1.as_slice(), &part2, &part3].concat();
    let (meta, got) = get(o, bucket, key).await;
    assert_eq!(meta.etag, etag);
    assert_eq!(meta.size, whole.len() as u64);
    assert_eq!(meta.headers.content_type, headers.content_type, "the upload's headers");
    assert_eq!(meta.headers.metadata, headers.metadata);
    assert_same_body(&got, &whole, "the completed object");

    // A range across the boundary of parts 1 and 2.
    let b = part1.len() as u64;
    let (span, got) = get_range(
        o,
        bucket,
        key,
        ByteRange::FromTo {
            first: b - 10,
            last: Some(b + 9),
        },
    )
    .await;
    assert_eq!(span, Some((b - 10, b + 9)));
    assert_eq!(got, &whole[b as usize - 10..b as usize + 10]);

    let listed = ok(
        o.list_objects(bucket, &query(Some("mp/"), None, 1000)).await,
        "list mp/",
    );
    assert_eq!(keys_of(&listed.objects), vec![key]);
    assert_eq!(listed.objects[0].etag, etag);
    assert_eq!(listed.objects[0].size, whole.len() as u64);

    // The upload is gone.
    assert!(ok(o.list_multipart_uploads(bucket, "mp/").await, "list uploads").is_empty());
    expect_err(
        o.list_parts(bucket, key, &id).await,
        "NoSuchUpload",
        "list parts of a completed upload",
    );

    // Each part by its number: its size and the part count.
    for (n, part) in [(1, &part1), (2, &part2), (3, &part3)] {
        let head = ok(o.head_part(bucket, key, n).await, &format!("head part {n}"));
        assert_eq!(head.size, part.len() as u64, "the size of part {n}");
        assert_eq!(head.parts_count, Some(3), "the part count, with part {n}");
    }

    // A copy of a multipart object is a single-part object.
    let out = ok(
        o.copy_object(bucket, "mp/copy", &copy_input(bucket, key, MetadataDirective::Copy))
            .await,
        "copy",
    );
    assert_eq!(out.etag, md5_etag(&whole), "the ETag of a copied multipart object");

    // A single small part is a valid upload: the last part may be small.
    let id = ok(
        o.create_multipart_upload(bucket, "mp/one", &ContentHeaders::default(), &[], None)
            .await,
        "create",
    );
    let small = pattern(10, 13);
    let e = ok(
        o.upload_part(
            bucket,
            "mp/one",
            &id,
            1,
            &PutBody::Bytes(small.clone().into()),
            &Checksums::default(),
        )
        .await,
        "part",
    )
    .etag;
    let etag = ok(
        o.complete_multipart_upload(
            bucket,
            "mp/one",
            &id,
            &[CompletedPart {
                part_number: 1,
                etag: e,
                checksums: Checksums::default(),
            }],
        )
        .await,
        "complete one part",
    )
    .etag;
    assert_eq!(etag, multipart_etag(&[&small]));
    assert_eq!(get_bytes(o, bucket, "mp/one").await, small);

    for key in ["mp/big", "mp/copy", "mp/one"] {
        ok(o.delete_object(bucket, key, None).await, "cleanup");
    }
}

/// Multipart failures: part order, missing or mismatched parts, small parts, aborts, unknown uploads,
/// and the order of list_multipart_uploads.
pub async fn multipart_errors(o: &dyn Origin, bucket: &str) {
    let key = "mpe/x";
    let id = ok(
        o.create_multipart_upload(bucket, key, &ContentHeaders::default(), &[], None)
            .await,
        "create",
    );
    let small1 = pattern(100, 20);
    let small2 = pattern(100, 21);
    let e1 = ok(
        o.upload_part(
            bucket,
            key,
            &id,
            1,
            &PutBody::Bytes(small1.clone().into()),
            &Checksums::default(),
        )
        .await,
        "part 1",
    )
    .etag;
    let e2 = ok(
        o.upload_part(
            bucket,
            key,
            &id,
            2,
            &PutBody::Bytes(small2.clone().into()),
            &Checksums::default(),
        )
        .await,
        "part 2",
    )
    .etag;
    let part = |n: i32, etag: &str| CompletedPart {
        part_number: n,
        etag: etag.to_owned(),
        checksums: Checksums::default(),
    };

    expect_err(
        o.complete_multipart_upload(bucket, key, &id, &[part(2, &e2), part(1, &e1)])
            .await,
        "Rejected 400 InvalidPartOrder",
        "parts out of order",
    );
    expect_err(
        o.complete_multipart_upload(bucket, key, &id, &[part(1, &e2)]).await,
        "Rejected 400 InvalidPart",
        "a part with another part's ETag",
    );
    expect_err(
        o.complete_multipart_upload(bucket, key, &id, &[part(1, &e1), part(3, &e2)])
            .await,
        "Rejected 400 InvalidPart",
        "a part never uploaded",
    );
    expect_err(
        o.complete_multipart_upload(bucket, key, &id, &[part(1, &e1), part(2, &e2)])
            .await,
        "Rejected 400 EntityTooSmall",
        "a small part before the last",
    );
    // Failed completions leave the upload as it was.
    let parts = ok(o.list_parts(bucket, key, &id).await, "list parts after failures");
    assert_eq!(parts.iter().map(|p| p.part_number).collect::<Vec<_>>(), vec![1, 2]);
    expect_err(
        o.head_object(bucket, key, &no_conditions()).await,
        "NoSuchKey",
        "nothing completed",
    );

    // Abort.
    ok(o.abort_multipart_upload(bucket, key, &id).await, "abort");
    assert!(ok(o.list_multipart_uploads(bucket, "mpe/").await, "list uploads").is_empty());
    expect_err(
        o.list_parts(bucket, key, &id).await,
        "NoSuchUpload",
        "list parts of an aborted upload",
    );
    expect_err(
        o.upload_part(
            bucket,
            key,
            &id,
            3,
            &PutBody::Bytes(Bytes::from_static(b"late")),
            &Checksums::default(),
        )
        .await,
        "NoSuchUpload",
        "upload into an aborted upload",
    );
    expect_err(
        o.complete_multipart_upload(bucket, key, &id, &[part(1, &e1)]).await,
        "NoSuchUpload",
        "complete an aborted upload",
    );
    expect_err(
        o.abort_multipart_upload(bucket, key, &id).await,
        "NoSuchUpload",
        "abort twice",
    );

    // Unknown ids, and ids of another key.
    let bogus = "bm90LWFuLXVwbG9hZC1pZA";
    expect_err(
        o.list_parts(bucket, key, bogus).await,
        "NoSuchUpload",
        "list parts of an unknown upload",
    );
    expect_err(
        o.upload_part(
            bucket,
            key,
            bogus,
            1,
            &PutBody::Bytes(Bytes::from_static(b"x")),
            &Checksums::default(),
        )
        .await,
        "NoSuchUpload",
        "upload into an unknown upload",
    );
    expect_err(
        o.abort_multipart_upload(bucket, key, bogus).await,
        "NoSuchUpload",
        "abort an unknown upload",
    );

    // Listing uploads: by key, then by initiation.
    let b1 = ok(
        o.create_multipart_upload(bucket, "mpe/u-b", &ContentHeaders::default(), &[], None)
            .await,
        "create u-b",
    );
    let a = ok(
        o.create_multipart_upload(bucket, "mpe/u-a", &ContentHeaders::default(), &[], None)
            .await,
        "create u-a",
    );
    let b2 = ok(
        o.create_multipart_upload(bucket, "mpe/u-b", &ContentHeaders::default(), &[], None)
            .await,
        "create u-b again",
    );
    let c = ok(
        o.create_multipart_upload(bucket, "mpe/v", &ContentHeaders::default(), &[], None)
            .await,
        "create v",
    );
    let listed = ok(
        o.list_multipart_uploads(bucket, "mpe/u-").await,
        "list uploads by prefix",
    );
    let got: Vec<&str> = listed.iter().map(|u| u.key.as_str()).collect();
    assert_eq!(got, vec!["mpe/u-a", "mpe/u-b", "mpe/u-b"]);
    assert_eq!(listed[0].upload_id, a);
    let mut ids = vec![listed[1].upload_id.clone(), listed[2].upload_id.clone()];
    ids.sort();
    let mut expected = vec![b1.clone(), b2.clone()];
    expected.sort();
    assert_eq!(ids, expected);
    assert!(listed[1].initiated <= listed[2].initiated, "same key: by initiation");
    expect_err(
        o.list_parts(bucket, "mpe/u-a", &b1).await,
        "NoSuchUpload",
        "an upload id is tied to its key",
    );
    let all = ok(o.list_multipart_uploads(bucket, "mpe/").await, "list all uploads");
    assert_eq!(all.len(), 4);
    for (k, id) in [("mpe/u-b", &b1), ("mpe/u-a", &a), ("mpe/u-b", &b2), ("mpe/v", &c)] {
        ok(o.abort_multipart_upload(bucket, k, id).await, "abort");
    }
    assert!(ok(o.list_multipart_uploads(bucket, "mpe/").await, "list uploads").is_empty());

    let missing = format!("{bucket}-missing");
    expect_err(
        o.create_multipart_upload(&missing, key, &ContentHeaders::default(), &[], None)
            .await,
        "NoSuchBucket",
        "create an upload in a missing bucket",
    );
}

// Checksums computed here independently of the origins (crc32fast, sha2; crc-fast for CRC32C and CRC64NVME).

pub fn b64(raw: &[u8]) -> String {
    aws_smithy_types::base64::encode(raw)
}

pub fn crc32_of(data: &[u8]) -> Vec<u8> {
    crc32fast::hash(data).to_be_bytes().to_vec()
}

pub fn crc32c_of(data: &[u8]) -> Vec<u8> {
    (crc_fast::checksum(crc_fast::CrcAlgorithm::Crc32Iscsi, data) as u32)
        .to_be_bytes()
        .to_vec()
}

pub fn crc64nvme_of(data: &[u8]) -> Vec<u8> {
    crc_fast::checksum(crc_fast::CrcAlgorithm::Crc64Nvme, data)
        .to_be_bytes()
        .to_vec()
}

pub fn sha1_of(data: &[u8]) -> Vec<u8> {
    <sha1::Sha1 as sha1::Digest>::digest(data).to_vec()
}

pub fn sha256_of(data: &[u8]) -> Vec<u8> {
    sha2::Sha256::digest(data).to_vec()
}

/// S3's COMPOSITE checksum of a multipart object: `base64(hash(concat(part digests)))-<parts>`.
pub fn composite_checksum(hash: fn(&[u8]) -> Vec<u8>, parts: &[&[u8]]) -> String {
    let digests: Vec<u8> = parts.iter().flat_map(|p| hash(p)).collect();
    format!("{}-{}", b64(&hash(&digests)), parts.len())
}

/// Asserts that `got` holds exactly `expected` as its `algorithm` checksum. With `moto`, a
/// composite value may also come without its `-<parts>`: moto 5.2.1 answers HeadObject so (and
/// S3Origin reads a completed upload's checksum from a HEAD there). That is moto's deviation
/// from S3, accepted for moto only.
fn assert_object_checksum(got: &Checksums, algorithm: ChecksumAlgorithm, expected: &str, moto: bool, what: &str) {
    let value = got.get(algorithm);
    let moto_form = expected.split_once('-').map(|(bare, _)| bare);
    let matches = value == Some(expected) || (moto && value.is_some() && value == moto_form);
    assert!(
        matches,
        "{what}: {algorithm:?} checksum {value:?}, expected {expected:?}"
    );
    assert_eq!(got.iter().count(), 1, "{what}: only the upload's algorithm: {got:?}");
    if !moto {
        let kind = if expected.contains('-') {
            ChecksumType::Composite
        } else {
            ChecksumType::FullObject
        };
        assert_eq!(got.checksum_type(), Some(kind), "{what}: the checksum type");
    }
}

/// One multipart upload with `checksum` (whose digest is `hash`), each part sent with its
/// checksum, checked from start to end: UploadPart's answer, ListParts, CompleteMultipartUpload,
/// HEAD and GET, against the object's checksum computed here (COMPOSITE, or of the whole object).
async fn checksummed_upload(
    o: &dyn Origin,
    bucket: &str,
    key: &str,
    checksum: MultipartChecksum,
    hash: fn(&[u8]) -> Vec<u8>,
    parts: &[&[u8]],
    moto: bool,
) {
    let expected = match checksum.checksum_type {
        ChecksumType::Composite => composite_checksum(hash, parts),
        ChecksumType::FullObject => b64(&hash(&parts.concat())),
    };
    let expected = expected.as_str();
    let a = checksum.algorithm;
    let what = format!("{key} ({} {})", a.as_str(), checksum.checksum_type.as_str());
    let id = ok(
        o.create_multipart_upload(bucket, key, &ContentHeaders::default(), &[], Some(checksum))
            .await,
        &format!("{what}: create"),
    );
    let mut completed = Vec::new();
    for (i, data) in parts.iter().enumerate() {
        let n = i as i32 + 1;
        let sums = Checksums::only(a, b64(&hash(data)));
        let out = ok(
            o.upload_part(bucket, key, &id, n, &PutBody::Bytes(data.to_vec().into()), &sums)
                .await,
            &format!("{what}: part {n}"),
        );
        assert_eq!(out.etag, md5_etag(data), "{what}: part {n} ETag");
        assert_eq!(out.checksums, sums, "{what}: UploadPart answers the part's checksum");
        completed.push(CompletedPart {
            part_number: n,
            etag: out.etag,
            checksums: sums,
        });
    }
    let listed = ok(o.list_parts(bucket, key, &id).await, &format!("{what}: list parts"));
    assert_eq!(listed.len(), parts.len(), "{what}: {listed:?}");
    for (p, c) in listed.iter().zip(&completed) {
        // moto 5.2.1's ListParts carries no checksums (S3's does).
        if !(moto && p.checksums.is_empty()) {
            assert_eq!(
                p.checksums, c.checksums,
                "{what}: ListParts gives part {}'s checksum",
                p.part_number
            );
        }
    }
    let out = ok(
        o.complete_multipart_upload(bucket, key, &id, &completed).await,
        &format!("{what}: complete"),
    );
    assert_eq!(out.etag, multipart_etag(parts), "{what}: ETag");
    assert_object_checksum(
        &out.checksums,
        a,
        expected,
        moto,
        &format!("{what}: CompleteMultipartUpload"),
    );
    let meta = ok(
        o.head_object(bucket, key, &no_conditions()).await,
        &format!("{what}: head"),
    );
    assert_object_checksum(&meta.checksums, a, expected, moto, &format!("{what}: HEAD"));
    let (meta, body) = get(o, bucket, key).await;
    assert_object_checksum(&meta.checksums, a, expected, moto, &format!("{what}: GET"));
    assert_same_body(&body, &parts.concat(), &what);
    ok(o.delete_object(bucket, key, None).await, "cleanup");
}

/// Flexible checksums of multipart uploads (`x-amz-checksum-algorithm` at creation): each part
/// keeps its checksum; the object gets a COMPOSITE checksum (`base64(hash(part digests))-<parts>`,
/// the default but for CRC64NVME) or a FULL_OBJECT one (the checksum of the whole body);
/// CompleteMultipartUpload answers it and HEAD and GET return it. A part checksum named in
/// CompleteMultipartUpload must be the part's (400 InvalidPart).
///
/// `moto`: the server is moto 5.2.1, whose deviations from S3 are accepted, for it only: a
/// composite checksum without its `-<parts>` on HEAD, no part checksums in ListParts. The checks
/// moto fails outright (CRC32C and CRC64NVME, the declared part checksums it does not compare,
/// the combinations it does not refuse) run only when `moto` is false.
pub async fn multipart_checksums(o: &dyn Origin, bucket: &str, moto: bool) {
    let p1 = pattern(5 * MIB, 40);
    let p2 = pattern(5 * MIB + 7, 41);
    let p3 = pattern(1000, 42);
    let three: [&[u8]; 3] = [&p1, &p2, &p3];
    let new = |a, t| MultipartChecksum::new(a, t).expect("a valid combination");

    let crc32 = new(ChecksumAlgorithm::Crc32, None);
    assert_eq!(
        crc32.checksum_type,
        ChecksumType::Composite,
        "CRC32 is COMPOSITE by default"
    );
    checksummed_upload(o, bucket, "mpc/crc32", crc32, crc32_of, &three, moto).await;

    let sha256 = new(ChecksumAlgorithm::Sha256, None);
    let two: [&[u8]; 2] = [&p1, &p3];
    checksummed_upload(o, bucket, "mpc/sha256", sha256, sha256_of, &two, moto).await;

    let crc32_full = new(ChecksumAlgorithm::Crc32, Some(ChecksumType::FullObject));
    checksummed_upload(o, bucket, "mpc/crc32-full", crc32_full, crc32_of, &three, moto).await;

    if moto {
        return;
    }
    let crc32c_full = new(ChecksumAlgorithm::Crc32c, Some(ChecksumType::FullObject));
    checksummed_upload(o, bucket, "mpc/crc32c-full", crc32c_full, crc32c_of, &three, moto).await;

    let crc32c = new(ChecksumAlgorithm::Crc32c, None);
    checksummed_upload(o, bucket, "mpc/crc32c", crc32c, crc32c_of, &two, moto).await;

    let crc64 = new(ChecksumAlgorithm::Crc64nvme, None);
    assert_eq!(
        crc64.checksum_type,
        ChecksumType::FullObject,
        "CRC64NVME is FULL_OBJECT"
    );
    checksummed_upload(o, bucket, "mpc/crc64nvme", crc64, crc64nvme_of, &three, moto).await;

    let sha1 = new(ChecksumAlgorithm::Sha1, None);
    checksummed_upload(o, bucket, "mpc/sha1", sha1, sha1_of, &[&p3], moto).await;

    // The combinations S3 refuses.
    for (a, t) in [
        (ChecksumAlgorithm::Sha256, ChecksumType::FullObject),
        (ChecksumAlgorithm::Sha1, ChecksumType::FullObject),
        (ChecksumAlgorithm::Crc64nvme, ChecksumType::Composite),
    ] {
        expect_err(
            MultipartChecksum::new(a, Some(t)),
            "Rejected 400 InvalidRequest",
            "a refused combination",
        );
        let refused = MultipartChecksum {
            algorithm: a,
            checksum_type: t,
        };
        expect_err(
            o.create_multipart_upload(bucket, "mpc/refused", &ContentHeaders::default(), &[], Some(refused))
                .await,
            "Rejected 400 InvalidRequest",
            &format!("create with {} {}", a.as_str(), t.as_str()),
        );
    }

    // A part checksum named in CompleteMultipartUpload is checked against the part's.
    let key = "mpc/declared";
    let id = ok(
        o.create_multipart_upload(bucket, key, &ContentHeaders::default(), &[], Some(crc32))
            .await,
        "create",
    );
    let mut completed = Vec::new();
    for (i, data) in [&p1, &p3].into_iter().enumerate() {
        let sums = Checksums::only(ChecksumAlgorithm::Crc32, b64(&crc32_of(data)));
        let out = ok(
            o.upload_part(
                bucket,
                key,
                &id,
                i as i32 + 1,
                &PutBody::Bytes(data.clone().into()),
                &sums,
            )
            .await,
            "part",
        );
        completed.push(CompletedPart {
            part_number: i as i32 + 1,
            etag: out.etag,
            checksums: sums,
        });
    }
    let mut wrong = completed.clone();
    wrong[1].checksums = completed[0].checksums.clone();
    expect_err(
        o.complete_multipart_upload(bucket, key, &id, &wrong).await,
        "Rejected 400 InvalidPart",
        "a part declared with another part's checksum",
    );
    // A COMPOSITE checksum needs every part's checksum named.
    let mut missing = completed.clone();
    missing[0].checksums = Checksums::default();
    expect_err(
        o.complete_multipart_upload(bucket, key, &id, &missing).await,
        "Rejected 400 InvalidRequest",
        "a part declared without its checksum",
    );
    let out = ok(
        o.complete_multipart_upload(bucket, key, &id, &completed).await,
        "complete after failures",
    );
    let expected = composite_checksum(crc32_of, &[&p1, &p3]);
    assert_object_checksum(
        &out.checksums,
        ChecksumAlgorithm::Crc32,
        &expected,
        moto,
        "after failures",
    );
    ok(o.delete_object(bucket, key, None).await, "cleanup");
}

/// CreateBucket, HeadBucket, ListBuckets, DeleteBucket.
pub async fn buckets(o: &dyn Origin, bucket: &str) {
    let aux = format!("{bucket}-aux");
    let before = SystemTime::now();
    ok(o.create_bucket(&aux).await, "create a second bucket");
    let after = SystemTime::now();
    ok(o.head_bucket(&aux).await, "head it");
    expect_err(
        o.create_bucket(&aux).await,
        "Rejected 409 BucketAlreadyOwnedByYou",
        "create it again",
    );

    let list = ok(o.list_buckets().await, "list buckets");
    let names: Vec<&str> = list.iter().map(|b| b.name.as_str()).collect();
    let mut sorted = names.clone();
    sorted.sort();
    assert_eq!(names, sorted, "buckets by name");
    assert!(names.contains(&bucket) && names.contains(&aux.as_str()), "{names:?}");
    let info = list.iter().find(|b| b.name == aux).map(|b| b.created);
    if let Some(created) = info {
        assert_time_near(created, before, after, 60, "creation time of a bucket");
    }

    put(o, bucket, "bk/x", b"in the first bucket").await;
    put(o, &aux, "bk/x", b"in the second bucket").await;
    assert_eq!(
        get_bytes(o, &aux, "bk/x").await,
        b"in the second bucket",
        "buckets are separate"
    );
    assert_eq!(get_bytes(o, bucket, "bk/x").await, b"in the first bucket");
    expect_err(
        o.delete_bucket(&aux).await,
        "Rejected 409 BucketNotEmpty",
        "delete a bucket with an object",
    );
    ok(o.head_bucket(&aux).await, "a refused delete leaves the bucket");
    ok(o.delete_object(&aux, "bk/x", None).await, "empty it");
    ok(o.delete_bucket(&aux).await, "delete it");
    expect_err(o.head_bucket(&aux).await, "NoSuchBucket", "head a deleted bucket");
    expect_err(o.delete_bucket(&aux).await, "NoSuchBucket", "delete a deleted bucket");
    expect_err(
        o.get_object(&aux, "bk/x", None, &no_conditions()).await,
        "NoSuchBucket",
        "get from a deleted bucket",
    );
    let names: Vec<String> = ok(o.list_buckets().await, "list buckets")
        .into_iter()
        .map(|b| b.name)
        .collect();
    assert!(!names.contains(&aux), "{names:?}");

    // A deleted bucket can be created again, empty.
    ok(o.create_bucket(&aux).await, "create it again");
    let page = ok(
        o.list_objects(&aux, &query(None, None, 1000)).await,
        "list the new bucket",
    );
    assert_eq!(page, ListPage::default());
    ok(o.delete_bucket(&aux).await, "delete it again");

    ok(o.delete_object(bucket, "bk/x", None).await, "cleanup");
}

/// Keys are strings, not paths: `a`, `a/` and `a/b` coexist; dots, spaces, unicode and long keys.
pub async fn keys(o: &dyn Origin, bucket: &str) {
    put(o, bucket, "k/dir/", b"the dir marker").await;
    put(o, bucket, "k/dir/file", b"the file").await;
    put(o, bucket, "k/dir", b"the bare name").await;
    assert_eq!(get_bytes(o, bucket, "k/dir/").await, b"the dir marker");
    assert_eq!(get_bytes(o, bucket, "k/dir/file").await, b"the file");
    assert_eq!(get_bytes(o, bucket, "k/dir").await, b"the bare name");
    assert_eq!(
        all_keys(o, bucket, "k/dir").await,
        vec!["k/dir", "k/dir/", "k/dir/file"]
    );
    ok(o.delete_object(bucket, "k/dir/", None).await, "delete the marker");
    assert_eq!(
        get_bytes(o, bucket, "k/dir/file").await,
        b"the file",
        "the key under it stays"
    );
    assert_eq!(get_bytes(o, bucket, "k/dir").await, b"the bare name");
    ok(o.delete_object(bucket, "k/dir", None).await, "delete the bare name");
    assert_eq!(get_bytes(o, bucket, "k/dir/file").await, b"the file");
    ok(o.delete_object(bucket, "k/dir/file", None).await, "delete the file");

    // A key and the keys under it, written in the other order.
    put(o, bucket, "k/nest/a/b", b"deep").await;
    put(o, bucket, "k/nest/a", b"shallow").await;
    put(o, bucket, "k/nest/a/", b"marker").await;
    assert_eq!(get_bytes(o, bucket, "k/nest/a").await, b"shallow");
    assert_eq!(get_bytes(o, bucket, "k/nest/a/").await, b"marker");
    assert_eq!(get_bytes(o, bucket, "k/nest/a/b").await, b"deep");

    let long = format!("k/{}", "L".repeat(1022));
    let odd = [
        "k/../../x",
        "k/a/../b",
        "k/./c",
        "k/..",
        "k/%2e%2e/enc",
        "k/%2F%00",
        "k/sp ace  double",
        "k/ünïcødé/ключ/鍵",
        "k/emoji 😀",
        "k//double//slash",
        "k/trailing.",
        "k/q?x=1&y=2#frag",
        "k/plus+and=eq;semi,comma",
        "k/back\\slash",
        "k/tilde~'quote'\"dq\"",
        "k/<angle>&amp;",
        long.as_str(),
    ];
    for (i, key) in odd.iter().enumerate() {
        put(o, bucket, key, format!("body {i}").as_bytes()).await;
    }
    for (i, key) in odd.iter().enumerate() {
        assert_eq!(
            get_bytes(o, bucket, key).await,
            format!("body {i}").as_bytes(),
            "body of {key:?}"
        );
        let meta = ok(
            o.head_object(bucket, key, &no_conditions()).await,
            &format!("head {key:?}"),
        );
        assert_eq!(meta.etag, md5_etag(format!("body {i}").as_bytes()));
    }
    let mut expected: Vec<String> = odd.iter().map(|s| s.to_string()).collect();
    expected.extend(["k/nest/a", "k/nest/a/", "k/nest/a/b"].map(String::from));
    expected.sort();
    assert_eq!(
        all_keys(o, bucket, "k/").await,
        expected,
        "every odd key listed, in byte order"
    );

    // Unicode prefixes and delimiters.
    let page = ok(
        o.list_objects(bucket, &query(Some("k/ü"), Some("/"), 1000)).await,
        "list k/ü by /",
    );
    assert_eq!(page.common_prefixes, vec!["k/ünïcødé/"]);
    let page = ok(
        o.list_objects(bucket, &query(Some("k/ünïcødé/"), Some("鍵"), 1000))
            .await,
        "by 鍵",
    );
    assert_eq!(page.common_prefixes, vec!["k/ünïcødé/ключ/鍵"]);

    // Too long.
    let too_long = format!("k/{}", "L".repeat(1023));
    expect_err(
        o.put_object(bucket, &too_long, &put_input("x")).await,
        "Rejected 400 KeyTooLongError",
        "a 1025-byte key",
    );

    for key in all_keys(o, bucket, "k/").await {
        ok(o.delete_object(bucket, &key, None).await, &format!("delete {key:?}"));
    }
    assert!(all_keys(o, bucket, "k/").await.is_empty());
}
