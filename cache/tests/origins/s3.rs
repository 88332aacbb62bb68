//! `S3Origin` against a real S3 server (moto on loopback): the operations, the error classes,
//! and the latency of sequential small GETs on a kept-alive, TCP_NODELAY connection.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use futures::StreamExt;
use perch_cache::*;

use perch_testkit::servers::MotoServer;

fn config(endpoint: &str) -> S3OriginConfig {
    S3OriginConfig {
        endpoint: endpoint.to_owned(),
        // Not us-east-1: there S3 (and moto) answer 200 to re-creating one's own bucket.
        region: "eu-west-1".to_owned(),
        access_key_id: Some("testing".to_owned()),
        secret_access_key: Some("testing".to_owned()),
        connect_timeout: Duration::from_secs(2),
        read_timeout: Duration::from_secs(20),
    }
}

fn origin(moto: &MotoServer) -> S3Origin {
    S3Origin::new(config(&moto.endpoint)).expect("S3Origin::new")
}

fn put(body: &'static [u8]) -> PutInput {
    PutInput {
        headers: ContentHeaders::default(),
        checksums: Checksums::default(),
        body: PutBody::Bytes(Bytes::from_static(body)),
        if_match: None,
        if_none_match: None,
        content_md5: None,
        extra_headers: Vec::new(),
    }
}

async fn read_all(out: GetOutput) -> Vec<u8> {
    let mut body = out.body;
    let mut all = Vec::new();
    while let Some(chunk) = body.next().await {
        all.extend_from_slice(&chunk.expect("body chunk"));
    }
    all
}

fn no_conditions() -> Conditions {
    Conditions::default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn objects_round_trip_with_headers_and_checksums() {
    let moto = MotoServer::start();
    let o = origin(&moto);
    o.create_bucket("round-trip").await.expect("create bucket");
    o.head_bucket("round-trip").await.expect("head bucket");
    assert!(
        o.list_buckets()
            .await
            .expect("list buckets")
            .iter()
            .any(|b| b.name == "round-trip")
    );

    let headers = ContentHeaders {
        content_type: Some("text/plain; charset=utf-8".to_owned()),
        cache_control: Some("max-age=60".to_owned()),
        content_encoding: Some("identity".to_owned()),
        content_disposition: Some("attachment; filename=\"hw.txt\"".to_owned()),
        content_language: Some("en".to_owned()),
        expires: Some("Wed, 21 Oct 2015 07:28:00 GMT".to_owned()),
        metadata: BTreeMap::from([
            ("color".to_owned(), "blue".to_owned()),
            ("x-y".to_owned(), "1 2".to_owned()),
        ]),
        storage_class: None,
        tags: Vec::new(),
        origin_tag_count: None,
        opaque_etag_encryption: None,
    };
    // The crc32 of "hello world", base64 (S3 takes one checksum per object).
    let checksums = Checksums {
        crc32: Some("DUoRhQ==".to_owned()),
        ..Checksums::default()
    };
    let input = PutInput {
        headers: headers.clone(),
        checksums: checksums.clone(),
        ..put(b"hello world")
    };
    let written = o.put_object("round-trip", "dir/hello.txt", &input).await.expect("put");
    assert_eq!(
        written.etag, "\"5eb63bbbe01eeed093cb22bb8f5acdc3\"",
        "the ETag keeps its quotes"
    );

    let meta = o
        .head_object("round-trip", "dir/hello.txt", &no_conditions())
        .await
        .expect("head");
    assert_eq!(meta.size, 11);
    assert_eq!(meta.etag, written.etag);
    assert_eq!(meta.headers, headers);
    assert_eq!(meta.checksums, checksums, "HEAD returns the stored checksum");
    let age = SystemTime::now()
        .duration_since(meta.last_modified)
        .expect("last modified in the past");
    assert!(age < Duration::from_secs(300), "last_modified {age:?} ago");

    let got = o
        .get_object("round-trip", "dir/hello.txt", None, &no_conditions())
        .await
        .expect("get");
    assert_eq!(got.range, None);
    assert_eq!(got.meta.size, 11);
    assert_eq!(got.meta.headers, headers);
    assert_eq!(got.meta.checksums, checksums);
    assert_eq!(read_all(got).await, b"hello world");

    // Another algorithm, as the client gave it.
    let sha = Checksums {
        sha256: Some("uU0nuZNNPgilLlLX2n2r+sSE7+N6U4DukIj3rOLvzek=".to_owned()),
        ..Checksums::default()
    };
    let input = PutInput {
        checksums: sha.clone(),
        ..put(b"hello world")
    };
    let written_sha = o
        .put_object("round-trip", "sha", &input)
        .await
        .expect("put with sha256");
    assert_eq!(
        written_sha.checksums.sha256, sha.sha256,
        "the PUT answer carries the checksum"
    );
    let got = o
        .get_object("round-trip", "sha", None, &no_conditions())
        .await
        .expect("get sha");
    assert_eq!(got.meta.checksums, sha);
    assert_eq!(read_all(got).await, b"hello world");

    let part = o
        .get_object(
            "round-trip",
            "dir/hello.txt",
            Some(ByteRange::FromTo {
                first: 2,
                last: Some(5),
            }),
            &no_conditions(),
        )
        .await
        .expect("ranged get");
    assert_eq!(part.range, Some((2, 5)));
    assert_eq!(part.meta.size, 11, "size is the whole object's");
    assert_eq!(read_all(part).await, b"llo ");
    let tail = o
        .get_object(
            "round-trip",
            "dir/hello.txt",
            Some(ByteRange::Suffix(3)),
            &no_conditions(),
        )
        .await
        .expect("suffix");
    assert_eq!(tail.range, Some((8, 10)));
    assert_eq!(read_all(tail).await, b"rld");
    let open = o
        .get_object(
            "round-trip",
            "dir/hello.txt",
            Some(ByteRange::FromTo { first: 6, last: None }),
            &no_conditions(),
        )
        .await
        .expect("open range");
    assert_eq!(open.range, Some((6, 10)));
    assert_eq!(read_all(open).await, b"world");

    // Conditional reads.
    let same = Conditions {
        if_none_match: Some(meta.etag.clone()),
        ..Conditions::default()
    };
    assert!(matches!(
        o.get_object("round-trip", "dir/hello.txt", None, &same).await,
        Err(OriginError::NotModified { .. })
    ));
    assert!(matches!(
        o.head_object("round-trip", "dir/hello.txt", &same).await,
        Err(OriginError::NotModified { .. })
    ));
    let other = Conditions {
        if_match: Some("\"0000\"".to_owned()),
        ..Conditions::default()
    };
    assert!(matches!(
        o.get_object("round-trip", "dir/hello.txt", None, &other).await,
        Err(OriginError::PreconditionFailed)
    ));
    assert!(matches!(
        o.head_object("round-trip", "dir/hello.txt", &other).await,
        Err(OriginError::PreconditionFailed)
    ));
    let matching = Conditions {
        if_match: Some(meta.etag.clone()),
        ..Conditions::default()
    };
    o.head_object("round-trip", "dir/hello.txt", &matching)
        .await
        .expect("if-match on the current etag");

    // Copy, keeping then replacing the headers.
    let copy = CopyInput {
        src_bucket: "round-trip".to_owned(),
        src_key: "dir/hello.txt".to_owned(),
        conditions: Conditions::default(),
        directive: MetadataDirective::Copy,
        storage_class: None,
        tags: None,
        checksum_algorithm: None,
    };
    let copied = o
        .copy_object("round-trip", "copy of hello+.txt", &copy)
        .await
        .expect("copy");
    assert_eq!(copied.etag, written.etag);
    let meta2 = o
        .head_object("round-trip", "copy of hello+.txt", &no_conditions())
        .await
        .expect("head copy");
    assert_eq!(meta2.headers, headers);
    let replaced = ContentHeaders {
        content_type: Some("application/octet-stream".to_owned()),
        metadata: BTreeMap::from([("k".to_owned(), "v".to_owned())]),
        ..ContentHeaders::default()
    };
    let copy = CopyInput {
        directive: MetadataDirective::Replace(replaced.clone()),
        ..copy
    };
    o.copy_object("round-trip", "dir/replaced", &copy)
        .await
        .expect("copy replace");
    let meta3 = o
        .head_object("round-trip", "dir/replaced", &no_conditions())
        .await
        .expect("head replaced");
    assert_eq!(meta3.headers.content_type, replaced.content_type);
    assert_eq!(meta3.headers.metadata, replaced.metadata);
    // (moto checks only x-amz-copy-source-if-none-match of the four copy conditions.)
    let failing = CopyInput {
        conditions: Conditions {
            if_none_match: Some(written.etag.clone()),
            ..Conditions::default()
        },
        ..copy.clone()
    };
    let refused = o.copy_object("round-trip", "dir/nope", &failing).await;
    assert!(matches!(refused, Err(OriginError::PreconditionFailed)), "{refused:?}");

    o.delete_object("round-trip", "dir/replaced", None)
        .await
        .expect("delete");
    o.delete_object("round-trip", "dir/replaced", None)
        .await
        .expect("deleting an absent key succeeds");
    assert!(matches!(
        o.head_object("round-trip", "dir/replaced", &no_conditions()).await,
        Err(OriginError::NoSuchKey)
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_bodies_stream_both_ways() {
    let moto = MotoServer::start();
    let o = origin(&moto);
    o.create_bucket("files").await.expect("create bucket");
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("big");
    let data: Vec<u8> = (0..3 * 1024 * 1024 + 17)
        .map(|i: u32| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    std::fs::write(&path, &data).expect("write file");
    let input = PutInput {
        body: PutBody::File {
            path: path.clone(),
            len: data.len() as u64,
        },
        ..put(b"")
    };
    o.put_object("files", "big", &input).await.expect("put file");
    // The same input again: a retry re-reads the file.
    o.put_object("files", "big", &input).await.expect("put file again");

    let got = o.get_object("files", "big", None, &no_conditions()).await.expect("get");
    assert_eq!(got.meta.size, data.len() as u64);
    let mut body = got.body;
    let (mut chunks, mut all) = (0, Vec::new());
    while let Some(chunk) = body.next().await {
        all.extend_from_slice(&chunk.expect("chunk"));
        chunks += 1;
    }
    assert!(all == data, "the body comes back intact");
    assert!(chunks > 1, "the body streams in chunks ({chunks})");

    let missing = PutInput {
        body: PutBody::File {
            path: dir.path().join("absent"),
            len: 3,
        },
        ..put(b"")
    };
    assert!(matches!(
        o.put_object("files", "x", &missing).await,
        Err(OriginError::Io(_))
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listing_pages_and_prefixes() {
    let moto = MotoServer::start();
    let o = origin(&moto);
    o.create_bucket("list").await.expect("create bucket");
    let keys = ["a/1", "a/2", "a/b/3", "b", "c d+e%f", "z\u{e9}"];
    for k in keys {
        o.put_object("list", k, &put(b"x")).await.expect("put");
    }

    let all = o
        .list_objects(
            "list",
            &ListQuery {
                max_keys: 1000,
                ..ListQuery::default()
            },
        )
        .await
        .expect("list");
    let names: Vec<_> = all.objects.iter().map(|e| e.key.as_str()).collect();
    assert_eq!(names, keys, "keys come back decoded and sorted");
    assert_eq!(all.next, None);
    assert!(all.objects.iter().all(|e| e.size == 1 && e.etag.starts_with('"')));

    let top = o
        .list_objects(
            "list",
            &ListQuery {
                delimiter: Some("/".to_owned()),
                max_keys: 1000,
                ..ListQuery::default()
            },
        )
        .await
        .expect("list with delimiter");
    assert_eq!(top.common_prefixes, ["a/"]);
    assert_eq!(
        top.objects.iter().map(|e| e.key.as_str()).collect::<Vec<_>>(),
        ["b", "c d+e%f", "z\u{e9}"]
    );

    let under_a = o
        .list_objects(
            "list",
            &ListQuery {
                prefix: Some("a/".to_owned()),
                delimiter: Some("/".to_owned()),
                max_keys: 1000,
                ..ListQuery::default()
            },
        )
        .await
        .expect("list a/");
    assert_eq!(under_a.common_prefixes, ["a/b/"]);
    assert_eq!(
        under_a.objects.iter().map(|e| e.key.as_str()).collect::<Vec<_>>(),
        ["a/1", "a/2"]
    );

    let mut seen = Vec::new();
    let mut query = ListQuery {
        max_keys: 2,
        ..ListQuery::default()
    };
    loop {
        let page = o.list_objects("list", &query).await.expect("page");
        assert!(page.objects.len() <= 2);
        seen.extend(page.objects.into_iter().map(|e| e.key));
        match page.next {
            Some(next) => query.continuation = Some(next),
            None => break,
        }
    }
    assert_eq!(seen, keys, "pages cover every key once");

    let after = o
        .list_objects(
            "list",
            &ListQuery {
                start_after: Some("a/b/3".to_owned()),
                max_keys: 1000,
                ..ListQuery::default()
            },
        )
        .await
        .expect("start after");
    assert_eq!(after.objects.first().map(|e| e.key.as_str()), Some("b"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multipart_uploads() {
    let moto = MotoServer::start();
    let o = origin(&moto);
    o.create_bucket("multipart").await.expect("create bucket");
    let headers = ContentHeaders {
        content_type: Some("application/x-test".to_owned()),
        metadata: BTreeMap::from([("m".to_owned(), "1".to_owned())]),
        ..ContentHeaders::default()
    };
    let id = o
        .create_multipart_upload("multipart", "big/obj", &headers, &[], None)
        .await
        .expect("create upload");
    let other = o
        .create_multipart_upload("multipart", "other", &ContentHeaders::default(), &[], None)
        .await
        .expect("second upload");

    let dir = tempfile::tempdir().expect("tempdir");
    let part1 = vec![b'a'; 5 * 1024 * 1024];
    let path = dir.path().join("part1");
    std::fs::write(&path, &part1).expect("write part");
    let e1 = o
        .upload_part(
            "multipart",
            "big/obj",
            &id,
            1,
            &PutBody::File {
                path,
                len: part1.len() as u64,
            },
            &Checksums::default(),
        )
        .await
        .expect("part 1")
        .etag;
    let e2 = o
        .upload_part(
            "multipart",
            "big/obj",
            &id,
            2,
            &PutBody::Bytes(Bytes::from_static(b"tail")),
            &Checksums::default(),
        )
        .await
        .expect("part 2")
        .etag;
    assert!(e1.starts_with('"') && e2.starts_with('"'));

    let parts = o.list_parts("multipart", "big/obj", &id).await.expect("list parts");
    let got: Vec<_> = parts.iter().map(|p| (p.part_number, p.size)).collect();
    assert_eq!(got, [(1, 5 * 1024 * 1024), (2, 4)]);
    assert_eq!(parts[0].etag, e1);

    let uploads = o.list_multipart_uploads("multipart", "").await.expect("list uploads");
    let mut found: Vec<_> = uploads.iter().map(|u| (u.key.as_str(), u.upload_id.as_str())).collect();
    found.sort();
    assert_eq!(found, [("big/obj", id.as_str()), ("other", other.as_str())]);
    let big = o
        .list_multipart_uploads("multipart", "big/")
        .await
        .expect("list uploads by prefix");
    assert_eq!(big.len(), 1);

    let etag = o
        .complete_multipart_upload(
            "multipart",
            "big/obj",
            &id,
            &[
                CompletedPart {
                    part_number: 1,
                    etag: e1,
                    checksums: Checksums::default(),
                },
                CompletedPart {
                    part_number: 2,
                    etag: e2,
                    checksums: Checksums::default(),
                },
            ],
        )
        .await
        .expect("complete")
        .etag;
    assert!(etag.starts_with('"') && etag.ends_with("-2\""), "multipart etag {etag}");
    let meta = o
        .head_object("multipart", "big/obj", &no_conditions())
        .await
        .expect("head");
    assert_eq!(meta.size, 5 * 1024 * 1024 + 4);
    assert_eq!(meta.headers.content_type, headers.content_type);
    assert_eq!(meta.headers.metadata, headers.metadata);

    o.abort_multipart_upload("multipart", "other", &other)
        .await
        .expect("abort");
    assert!(matches!(
        o.list_parts("multipart", "other", &other).await,
        Err(OriginError::NoSuchUpload)
    ));
    // (An upload_part after the abort is a 404 NoSuchUpload on S3, but a 500 on moto.)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_are_classified() {
    let moto = MotoServer::start();
    let o = origin(&moto);
    o.create_bucket("errors").await.expect("create bucket");
    o.put_object("errors", "k", &put(b"data")).await.expect("put");

    // 404s, with and without a body.
    assert!(matches!(
        o.get_object("errors", "absent", None, &no_conditions()).await,
        Err(OriginError::NoSuchKey)
    ));
    assert!(matches!(
        o.head_object("errors", "absent", &no_conditions()).await,
        Err(OriginError::NoSuchKey)
    ));
    assert!(matches!(
        o.head_bucket("nobucket").await,
        Err(OriginError::NoSuchBucket)
    ));
    assert!(matches!(
        o.get_object("nobucket", "k", None, &no_conditions()).await,
        Err(OriginError::NoSuchBucket)
    ));
    assert!(matches!(
        o.list_objects(
            "nobucket",
            &ListQuery {
                max_keys: 10,
                ..ListQuery::default()
            }
        )
        .await,
        Err(OriginError::NoSuchBucket)
    ));
    assert!(matches!(
        o.delete_bucket("nobucket").await,
        Err(OriginError::NoSuchBucket)
    ));
    assert!(matches!(
        o.abort_multipart_upload("errors", "k", "no-such-upload").await,
        Err(OriginError::NoSuchUpload)
    ));

    // 412 on a conditional write.
    let create_only = PutInput {
        if_none_match: Some("*".to_owned()),
        content_md5: None,
        ..put(b"other")
    };
    assert!(matches!(
        o.put_object("errors", "k", &create_only).await,
        Err(OriginError::PreconditionFailed)
    ));
    o.put_object("errors", "fresh", &create_only)
        .await
        .expect("if-none-match * on an absent key");

    // 416.
    let beyond = Some(ByteRange::FromTo { first: 100, last: None });
    assert!(matches!(
        o.get_object("errors", "k", beyond, &no_conditions()).await,
        Err(OriginError::InvalidRange { .. })
    ));

    // Other 4xx keep the origin's status and code.
    match o.delete_bucket("errors").await {
        Err(OriginError::Rejected { status: 409, code, .. }) => assert_eq!(code, "BucketNotEmpty"),
        other => panic!("delete of a non-empty bucket: {other:?}"),
    }
    // Creating one's own bucket again (outside us-east-1, which answers 200).
    match o.create_bucket("errors").await {
        Err(OriginError::Rejected { status: 409, code, .. }) => assert_eq!(code, "BucketAlreadyOwnedByYou"),
        other => panic!("create of an existing bucket: {other:?}"),
    }

    // A 400 keeps its code.
    match o.create_bucket("ab").await {
        Err(OriginError::Rejected { status: 400, code, .. }) => assert_eq!(code, "InvalidBucketName"),
        other => panic!("create of a two-letter bucket: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_origin_is_transient() {
    // A port that was just free: nothing listens, the connection is refused.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    };
    let o = S3Origin::new(config(&format!("http://127.0.0.1:{port}"))).expect("new");
    let started = Instant::now();
    let err = o
        .head_object("b", "k", &no_conditions())
        .await
        .expect_err("nothing listens");
    assert!(err.is_transient(), "{err:?}");
    let err = o
        .get_object("b", "k", None, &no_conditions())
        .await
        .expect_err("nothing listens");
    assert!(err.is_transient(), "{err:?}");
    let err = o.put_object("b", "k", &put(b"x")).await.expect_err("nothing listens");
    assert!(err.is_transient(), "{err:?}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "no SDK retries: {:?}",
        started.elapsed()
    );

    // A server that accepts and never answers: the attempt times out.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let _hold = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((sock, _)) = listener.accept().await {
            held.push(sock);
        }
    });
    let cfg = S3OriginConfig {
        read_timeout: Duration::from_millis(300),
        ..config(&format!("http://{addr}"))
    };
    let o = S3Origin::new(cfg).expect("new");
    let started = Instant::now();
    let err = o
        .head_object("b", "k", &no_conditions())
        .await
        .expect_err("silent server");
    assert!(err.is_transient(), "{err:?}");
    assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configuration_is_checked_and_anonymous_works() {
    let half = S3OriginConfig {
        secret_access_key: None,
        ..config("http://127.0.0.1:1")
    };
    assert!(S3Origin::new(half).is_err(), "one key without the other is an error");
    assert!(
        S3Origin::new(config("127.0.0.1:9000")).is_err(),
        "the endpoint needs a scheme"
    );

    let moto = MotoServer::start();
    let anon = S3OriginConfig {
        access_key_id: None,
        secret_access_key: None,
        ..config(&moto.endpoint)
    };
    let o = S3Origin::new(anon).expect("anonymous origin");
    o.create_bucket("anon")
        .await
        .expect("unsigned create bucket (moto does not check signatures)");
    o.put_object("anon", "k", &put(b"v")).await.expect("unsigned put");
    // moto, like S3, refuses an unsigned read of a private object: a 403 without a body.
    match o.get_object("anon", "k", None, &no_conditions()).await {
        Err(OriginError::Rejected { status: 403, code, .. }) => assert_eq!(code, "AccessDenied"),
        other => panic!("unsigned get of a private object: {other:?}"),
    }

    // us-east-1 sends no location constraint (moto refuses one naming us-east-1); the
    // other named regions send theirs (the other tests use eu-west-1).
    let us = S3OriginConfig {
        region: "us-east-1".to_owned(),
        ..config(&moto.endpoint)
    };
    S3Origin::new(us)
        .expect("origin in us-east-1")
        .create_bucket("in-us")
        .await
        .expect("create bucket in us-east-1");

    // The default region, `auto`, as for Tigris, signs every request with it. (moto takes
    // `auto` for a real region and wants it as a location constraint, which Tigris does not:
    // the bucket is made in us-east-1.)
    let auto = S3OriginConfig {
        region: "auto".to_owned(),
        ..config(&moto.endpoint)
    };
    let o = S3Origin::new(auto).expect("origin in region auto");
    o.head_bucket("in-us").await.expect("head bucket in region auto");
    o.put_object("in-us", "k", &put(b"auto"))
        .await
        .expect("put in region auto");
    let got = o
        .get_object("in-us", "k", None, &no_conditions())
        .await
        .expect("get in region auto");
    assert_eq!(read_all(got).await, b"auto");
}

/// A minimal keep-alive HTTP/1.1 server answering every request as S3 answers a small GET
/// or PUT, head and body in separate writes. Its own sockets have TCP_NODELAY, so only the
/// client's setting shows. Returns its address and a count of the connections it accepted.
async fn keep_alive_server() -> (std::net::SocketAddr, Arc<std::sync::atomic::AtomicUsize>) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let connections = Arc::new(AtomicUsize::new(0));
    let count = connections.clone();
    tokio::spawn(async move {
        while let Ok((sock, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            sock.set_nodelay(true).expect("nodelay");
            tokio::spawn(async move {
                let mut sock = BufReader::new(sock);
                loop {
                    let (mut method, mut length) = (String::new(), 0usize);
                    loop {
                        let mut line = String::new();
                        if sock.read_line(&mut line).await.unwrap_or(0) == 0 {
                            return;
                        }
                        if method.is_empty() {
                            method = line.split(' ').next().unwrap_or_default().to_owned();
                        }
                        let lower = line.to_ascii_lowercase();
                        if let Some(v) = lower.strip_prefix("content-length:") {
                            length = v.trim().parse().unwrap_or(0);
                        }
                        if line == "\r\n" {
                            break;
                        }
                    }
                    let mut body = vec![0; length];
                    if sock.read_exact(&mut body).await.is_err() {
                        return;
                    }
                    let etag = "\"781e5e245d69b566979b86e28d23f2c7\"";
                    let (head, body): (String, &[u8]) = if method == "GET" {
                        (
                            format!(
                                "HTTP/1.1 200 OK\r\nContent-Length: 10\r\nETag: {etag}\r\n\
                                 Last-Modified: Wed, 21 Oct 2015 07:28:00 GMT\r\n\
                                 Content-Type: application/octet-stream\r\n\r\n"
                            ),
                            b"0123456789",
                        )
                    } else {
                        (
                            format!("HTTP/1.1 200 OK\r\nContent-Length: 0\r\nETag: {etag}\r\n\r\n"),
                            b"",
                        )
                    };
                    let sock = sock.get_mut();
                    if sock.write_all(head.as_bytes()).await.is_err() {
                        return;
                    }
                    if !body.is_empty() && sock.write_all(body).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (addr, connections)
}

/// Prints the mean time of sequential small requests over one kept-alive connection. With
/// TCP_NODELAY on the origin sockets a request takes well under 2 ms on loopback; without it
/// a PUT waits for a delayed ACK, ~40 ms. (moto closes its connection after each answer, so
/// the keep-alive measurement uses a small local server; the moto figure is printed too.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sequential_small_requests_are_fast() {
    let n = 100u32;
    let (addr, connections) = keep_alive_server().await;
    let o = S3Origin::new(config(&format!("http://{addr}"))).expect("new");
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("small");
    std::fs::write(&path, b"0123456789").expect("write");
    let file = PutInput {
        body: PutBody::File { path, len: 10 },
        ..put(b"")
    };

    let mut means = Vec::new();
    for what in ["GET", "PUT bytes", "PUT file"] {
        let mut total = Duration::ZERO;
        for i in 0..n + 5 {
            let started = Instant::now();
            match what {
                "GET" => {
                    let got = o.get_object("b", "k", None, &no_conditions()).await.expect("get");
                    assert_eq!(read_all(got).await, b"0123456789");
                }
                "PUT bytes" => {
                    o.put_object("b", "k", &put(b"0123456789")).await.expect("put");
                }
                _ => {
                    o.put_object("b", "k", &file).await.expect("put file");
                }
            }
            if i >= 5 {
                total += started.elapsed();
            }
        }
        means.push(format!("{what} {:?}", total / n));
    }
    let used = connections.load(std::sync::atomic::Ordering::SeqCst);
    println!(
        "S3Origin, keep-alive server on loopback, {n} sequential 10-byte requests each: mean {}; {used} connection(s)",
        means.join(", ")
    );
    // Two pools (GETs and HEADs are sent beside the SDK, with a pool of their own): one
    // connection each, or one more whenever a request sets out before the last one's is back in
    // the pool, which a loaded machine (tests beside this one) makes happen now and then; without
    // the pools it would be one a request.
    assert!(
        used <= 10,
        "sequential requests reuse pooled connections ({used} for {} requests)",
        3 * (n + 5)
    );

    let moto = MotoServer::start();
    let o = origin(&moto);
    o.create_bucket("latency").await.expect("create bucket");
    o.put_object("latency", "small", &put(b"0123456789"))
        .await
        .expect("put");
    let started = Instant::now();
    for _ in 0..n {
        let got = o
            .get_object("latency", "small", None, &no_conditions())
            .await
            .expect("get");
        assert_eq!(read_all(got).await.len(), 10);
    }
    println!(
        "S3Origin on moto (a new connection per request): {n} sequential 10-byte GETs: mean {:?}",
        started.elapsed() / n
    );
}

/// The shared conformance suite (`conformance.rs`) over `S3Origin` and moto, whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "moto quirks stop it in its second area, `conditions` (see the area tests below)"]
async fn conformance_suite() {
    let moto = MotoServer::start();
    let o: Arc<dyn Origin> = Arc::new(origin(&moto));
    crate::conformance::run_all(o, "conformance").await;
}

/// Each area of the suite alone, on its own server, so that one failure does not hide the others.
/// The ignored ones fail on moto (5.2.1) where moto differs from S3, not on `S3Origin`: run them
/// with `--ignored` against a server that behaves as S3 does.
macro_rules! conformance_area {
    ($($(#[$attr:meta])* $name:ident),* $(,)?) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        $(#[$attr])*
        async fn $name() {
            let moto = MotoServer::start();
            let o = origin(&moto);
            o.create_bucket("area").await.expect("create bucket");
            crate::conformance::$name(&o, "area").await;
        }
    )*};
}

mod area {
    use super::*;
    conformance_area!(
        objects,
        #[ignore = "moto: HEAD with If-Match true and If-Unmodified-Since false answers 412 (S3: 200)"]
        conditions,
        #[ignore = "moto: an unquoted If-Match ETag does not match on HEAD (S3 accepts it)"]
        condition_forms,
        conditional_puts,
        ranges,
        listing,
        #[ignore = "moto: CopyObject ignores x-amz-copy-source-if-match (and -if-modified/-unmodified-since)"]
        copy,
        storage_classes,
        multipart,
        #[ignore = "moto: parts out of order answer EntityTooSmall, not InvalidPartOrder"]
        multipart_errors,
        #[ignore = "moto: a 1025-byte key is accepted (S3: 400 KeyTooLongError)"]
        keys,
        buckets,
    );

    /// Multipart checksums, with moto's deviations from S3 accepted (see the area's comment).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn multipart_checksums() {
        let moto = MotoServer::start();
        let o = origin(&moto);
        o.create_bucket("area").await.expect("create bucket");
        crate::conformance::multipart_checksums(&o, "area", true).await;
    }
}
