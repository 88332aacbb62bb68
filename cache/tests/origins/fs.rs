//! `FsOrigin`: the conformance suite over a temporary directory, plus what only a local directory can show:
//! reopening, crash leftovers, keys that must never become paths.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::conformance::*;
use bytes::Bytes;
use perch_cache::{
    Checksums, CompletedPart, ContentHeaders, CopyInput, FsOrigin, ListQuery, MetadataDirective, Origin, OriginError,
    PutBody, PutInput,
};

fn tempdir() -> tempfile::TempDir {
    tempfile::tempdir().expect("a temporary directory")
}

fn open(root: &Path) -> FsOrigin {
    FsOrigin::open(root).expect("open the origin")
}

/// Every path under `dir`, relative to it, sorted.
fn tree(dir: &Path) -> Vec<PathBuf> {
    fn walk(base: &Path, dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).expect("read_dir") {
            let entry = entry.expect("entry");
            let path = entry.path();
            out.push(path.strip_prefix(base).expect("under base").to_owned());
            if entry.file_type().expect("file type").is_dir() {
                walk(base, &path, out);
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}

fn is_hex(s: &str, len: usize) -> bool {
    s.len() == len && s.bytes().all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_suite() {
    let dir = tempdir();
    let origin: Arc<dyn Origin> = Arc::new(open(&dir.path().join("root")));
    assert_eq!(origin.kind(), "fs");
    run_all(origin.clone(), "conformance").await;
    // Nothing is left behind once everything is deleted.
    assert!(origin.list_buckets().await.expect("list").is_empty());
    let left = tree(&dir.path().join("root"));
    assert_eq!(left, vec![PathBuf::from(".tmp"), PathBuf::from(".uploads")], "{left:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reopen_reloads_the_index_and_serves_every_object() {
    let dir = tempdir();
    let root = dir.path().join("root");
    let mut expected: BTreeMap<(&str, String), Vec<u8>> = BTreeMap::new();
    let headers = ContentHeaders {
        content_type: Some("image/png".into()),
        cache_control: Some("immutable".into()),
        metadata: BTreeMap::from([("origin".into(), "reopen".into())]),
        ..Default::default()
    };
    let checksums = Checksums {
        sha256: Some("n4bQgYhMfWWaL+qgxVrQFaO/TxsrC4Is0V1sFbDwCgg=".into()),
        ..Default::default()
    };
    let (buckets_before, pending_upload, pending_etag);
    {
        let o = open(&root);
        o.create_bucket("alpha").await.expect("create alpha");
        o.create_bucket("beta").await.expect("create beta");
        for i in 0..60 {
            let key = format!("dir{}/obj-{i:03}", i % 4);
            let body = pattern(i * 37, i as u32);
            put(&o, "alpha", &key, &body).await;
            expected.insert(("alpha", key), body);
        }
        for key in ["a/", "a/b", "a", "../x", "ünï/cødé", "sp ace"] {
            let body = format!("odd {key}").into_bytes();
            put(&o, "alpha", key, &body).await;
            expected.insert(("alpha", key.to_owned()), body);
        }
        // Deleted and overwritten keys.
        for i in [3, 17, 42] {
            let key = format!("dir{}/obj-{i:03}", i % 4);
            o.delete_object("alpha", &key, None).await.expect("delete");
            expected.remove(&("alpha", key));
        }
        put(&o, "alpha", "a/b", b"overwritten").await;
        expected.insert(("alpha", "a/b".into()), b"overwritten".to_vec());

        let mut input = put_input(b"with headers".to_vec());
        input.headers = headers.clone();
        input.checksums = checksums.clone();
        o.put_object("beta", "headers", &input).await.expect("put with headers");
        expected.insert(("beta", "headers".into()), b"with headers".to_vec());

        // A completed multipart object and a copy.
        let p1 = pattern(5 * MIB, 1);
        let p2 = pattern(123, 2);
        let id = o
            .create_multipart_upload("beta", "multi", &headers, &[], None)
            .await
            .expect("create upload");
        let e1 = o
            .upload_part(
                "beta",
                "multi",
                &id,
                1,
                &PutBody::Bytes(p1.clone().into()),
                &Checksums::default(),
            )
            .await
            .expect("part 1")
            .etag;
        let e2 = o
            .upload_part(
                "beta",
                "multi",
                &id,
                2,
                &PutBody::Bytes(p2.clone().into()),
                &Checksums::default(),
            )
            .await
            .expect("part 2")
            .etag;
        let parts = [
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
        ];
        o.complete_multipart_upload("beta", "multi", &id, &parts)
            .await
            .expect("complete");
        expected.insert(("beta", "multi".into()), [p1, p2].concat());
        let copy = CopyInput {
            src_bucket: "beta".into(),
            src_key: "headers".into(),
            conditions: Default::default(),
            directive: MetadataDirective::Copy,
            storage_class: None,
            tags: None,
            checksum_algorithm: None,
        };
        o.copy_object("alpha", "copied", &copy).await.expect("copy");
        expected.insert(("alpha", "copied".into()), b"with headers".to_vec());

        // An upload left in progress.
        pending_upload = o
            .create_multipart_upload("alpha", "pending", &headers, &[], None)
            .await
            .expect("create pending");
        pending_etag = o
            .upload_part(
                "alpha",
                "pending",
                &pending_upload,
                1,
                &PutBody::Bytes(Bytes::from_static(b"pending part")),
                &Checksums::default(),
            )
            .await
            .expect("pending part")
            .etag;
        buckets_before = o.list_buckets().await.expect("list buckets");
    }

    let o = open(&root);
    assert_eq!(
        o.list_buckets().await.expect("list buckets"),
        buckets_before,
        "buckets and creation times"
    );
    for bucket in ["alpha", "beta"] {
        let pages = list_pages(
            &o,
            bucket,
            ListQuery {
                max_keys: 7,
                ..Default::default()
            },
        )
        .await;
        let listed: Vec<_> = pages.iter().flat_map(|p| p.objects.clone()).collect();
        let want: Vec<&String> = expected.keys().filter(|(b, _)| *b == bucket).map(|(_, k)| k).collect();
        assert_eq!(
            listed.iter().map(|e| &e.key).collect::<Vec<_>>(),
            want,
            "keys of {bucket} after reopening"
        );
        for entry in &listed {
            let body = &expected[&(bucket, entry.key.clone())];
            assert_eq!(entry.size, body.len() as u64, "size of {}", entry.key);
            let (meta, got) = get(&o, bucket, &entry.key).await;
            assert_same_body(&got, body, &entry.key);
            assert_eq!(meta.etag, entry.etag, "ETag of {}", entry.key);
            assert_eq!(
                meta.last_modified, entry.last_modified,
                "Last-Modified of {}",
                entry.key
            );
        }
    }
    let meta = o
        .head_object("beta", "headers", &Default::default())
        .await
        .expect("head");
    assert_eq!(meta.headers, headers);
    assert_eq!(meta.checksums, checksums);
    let meta = o
        .head_object("alpha", "copied", &Default::default())
        .await
        .expect("head copy");
    assert_eq!(meta.headers, headers, "a copy keeps the headers");
    assert_eq!(meta.checksums, checksums, "a copy keeps the checksums");
    let meta = o
        .head_object("beta", "multi", &Default::default())
        .await
        .expect("head multi");
    assert!(meta.etag.ends_with("-2\""), "{}", meta.etag);

    // The pending upload survived and can be completed.
    let uploads = o.list_multipart_uploads("alpha", "").await.expect("list uploads");
    assert_eq!(uploads.len(), 1);
    assert_eq!(
        (uploads[0].key.as_str(), uploads[0].upload_id.as_str()),
        ("pending", pending_upload.as_str())
    );
    let parts = o
        .list_parts("alpha", "pending", &pending_upload)
        .await
        .expect("list parts");
    assert_eq!(parts.len(), 1);
    assert_eq!(parts[0].etag, pending_etag);
    let done = [CompletedPart {
        part_number: 1,
        etag: pending_etag,
        checksums: Checksums::default(),
    }];
    o.complete_multipart_upload("alpha", "pending", &pending_upload, &done)
        .await
        .expect("complete after reopening");
    assert_eq!(get_bytes(&o, "alpha", "pending").await, b"pending part");
}

#[tokio::test]
async fn leftover_temp_files_are_removed_at_open() {
    let dir = tempdir();
    let root = dir.path().join("root");
    {
        let o = open(&root);
        o.create_bucket("b").await.expect("create");
        put(&o, "b", "kept", b"kept").await;
    }
    let tmp = root.join(".tmp");
    std::fs::write(tmp.join("0123abcd.tmp"), b"half an object").expect("write leftover");
    std::fs::create_dir(tmp.join("upload-feedbeef")).expect("leftover dir");
    std::fs::write(tmp.join("upload-feedbeef").join("upload.json"), b"{").expect("write leftover");

    let o = open(&root);
    assert_eq!(
        std::fs::read_dir(&tmp).expect("read .tmp").count(),
        0,
        "leftovers removed"
    );
    assert_eq!(get_bytes(&o, "b", "kept").await, b"kept");
    assert!(
        o.list_multipart_uploads("b", "")
            .await
            .expect("list uploads")
            .is_empty()
    );
}

#[tokio::test]
async fn failed_writes_leave_no_temp_files() {
    let dir = tempdir();
    let root = dir.path().join("root");
    let o = open(&root);
    o.create_bucket("b").await.expect("create");
    put(&o, "b", "x", b"original").await;

    // A file body shorter than announced.
    let file = dir.path().join("body");
    std::fs::write(&file, b"short").expect("write body");
    let mut input = put_input(Bytes::new());
    input.body = PutBody::File {
        path: file.clone(),
        len: 100,
    };
    expect_err(
        o.put_object("b", "x", &input).await,
        "Rejected 400 IncompleteBody",
        "a short body",
    );
    // A body that cannot be read.
    input.body = PutBody::File {
        path: dir.path().join("absent"),
        len: 1,
    };
    let err = o.put_object("b", "x", &input).await.expect_err("an absent body file");
    assert!(matches!(err, OriginError::Io(_)), "{err:?}");
    // A failed condition after the body was written.
    let mut input = put_input(b"clobber".to_vec());
    input.if_none_match = Some("*".into());
    expect_err(
        o.put_object("b", "x", &input).await,
        "PreconditionFailed",
        "If-None-Match",
    );

    assert_eq!(get_bytes(&o, "b", "x").await, b"original");
    assert_eq!(
        std::fs::read_dir(root.join(".tmp")).expect("read .tmp").count(),
        0,
        "no temp file left"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_never_become_paths() {
    let dir = tempdir();
    let root = dir.path().join("root");
    let o = open(&root);
    o.create_bucket("b").await.expect("create");
    let keys = [
        "../../x",
        "/abs",
        "/etc/passwd",
        "a/../../b",
        "..",
        ".",
        "../",
        "/",
        "//",
        "\\..\\y",
        "a\0b",
        ".tmp",
        ".tmp/../../escape",
        ".uploads/x",
        ".bucket",
        "../../../../../../../../../../tmp/perch-escape",
        "C:\\windows",
        "~/home",
    ];
    for (i, key) in keys.iter().enumerate() {
        put(&o, "b", key, format!("body {i}").as_bytes()).await;
    }
    // Through copies and multipart uploads too.
    let copy = CopyInput {
        src_bucket: "b".into(),
        src_key: "../../x".into(),
        conditions: Default::default(),
        directive: MetadataDirective::Copy,
        storage_class: None,
        tags: None,
        checksum_algorithm: None,
    };
    o.copy_object("b", "../../copied", &copy).await.expect("copy");
    let id = o
        .create_multipart_upload("b", "../../multi", &ContentHeaders::default(), &[], None)
        .await
        .expect("create upload");
    let e = o
        .upload_part(
            "b",
            "../../multi",
            &id,
            1,
            &PutBody::Bytes(Bytes::from_static(b"mp")),
            &Checksums::default(),
        )
        .await
        .expect("part")
        .etag;
    o.complete_multipart_upload(
        "b",
        "../../multi",
        &id,
        &[CompletedPart {
            part_number: 1,
            etag: e,
            checksums: Checksums::default(),
        }],
    )
    .await
    .expect("complete");

    for (i, key) in keys.iter().enumerate() {
        assert_eq!(get_bytes(&o, "b", key).await, format!("body {i}").as_bytes(), "{key:?}");
    }
    let mut all: Vec<String> = keys.iter().map(|k| k.to_string()).collect();
    all.extend(["../../copied".into(), "../../multi".into()]);
    all.sort();
    assert_eq!(all_keys(&o, "b", "").await, all);

    // Only `root` is in the temporary directory, and under it only the expected layout.
    let top: Vec<PathBuf> = std::fs::read_dir(dir.path())
        .expect("read")
        .map(|e| e.expect("entry").path())
        .collect();
    assert_eq!(top, vec![root.clone()], "nothing written beside the root");
    assert!(!Path::new("/tmp/perch-escape").exists());
    let mut objects = 0;
    for path in tree(&root) {
        let parts: Vec<&str> = path.iter().map(|p| p.to_str().expect("utf-8 path")).collect();
        match parts.as_slice() {
            [".tmp"] | [".uploads"] | ["b"] | ["b", ".bucket"] => {}
            ["b", fan] if is_hex(fan, 2) => {}
            ["b", fan, file] if is_hex(fan, 2) && is_hex(file, 64) && file.starts_with(fan) => objects += 1,
            other => panic!("unexpected path under the root: {other:?}"),
        }
    }
    assert_eq!(objects, all.len(), "one file per object");
}

#[tokio::test]
async fn bucket_names_are_checked() {
    let dir = tempdir();
    let o = open(&dir.path().join("root"));
    for name in [
        "", ".", "..", "../x", ".hidden", ".tmp", ".uploads", "a/b", "a\\b", "a\0b", "/abs",
    ] {
        expect_err(
            o.create_bucket(name).await,
            "Rejected 400 InvalidBucketName",
            &format!("create {name:?}"),
        );
        expect_err(
            o.head_bucket(name).await,
            "Rejected 400 InvalidBucketName",
            &format!("head {name:?}"),
        );
        expect_err(
            o.get_object(name, "k", None, &Default::default()).await,
            "Rejected 400 InvalidBucketName",
            &format!("get from {name:?}"),
        );
    }
    assert!(o.list_buckets().await.expect("list").is_empty());
    let top = tree(&dir.path().join("root"));
    assert_eq!(top, vec![PathBuf::from(".tmp"), PathBuf::from(".uploads")]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conditional_creates_race_to_one_winner() {
    let dir = tempdir();
    let o = Arc::new(open(&dir.path().join("root")));
    o.create_bucket("b").await.expect("create");
    let mut tasks = Vec::new();
    for i in 0..16 {
        let o = o.clone();
        tasks.push(tokio::spawn(async move {
            let mut input = put_input(format!("writer {i}").into_bytes());
            input.if_none_match = Some("*".into());
            o.put_object("b", "contended", &input).await.map(|_| i)
        }));
    }
    let mut winners = Vec::new();
    for t in tasks {
        match t.await.expect("join") {
            Ok(i) => winners.push(i),
            Err(OriginError::PreconditionFailed) => {}
            Err(e) => panic!("unexpected {e:?}"),
        }
    }
    assert_eq!(winners.len(), 1, "{winners:?}");
    assert_eq!(
        get_bytes(o.as_ref(), "b", "contended").await,
        format!("writer {}", winners[0]).as_bytes()
    );

    // Compare-and-swap by ETag: of many writers holding the same ETag, one wins.
    let etag = o
        .head_object("b", "contended", &Default::default())
        .await
        .expect("head")
        .etag;
    let mut tasks = Vec::new();
    for i in 0..16 {
        let o = o.clone();
        let etag = etag.clone();
        tasks.push(tokio::spawn(async move {
            let mut input = put_input(format!("swap {i}").into_bytes());
            input.if_match = Some(etag);
            o.put_object("b", "contended", &input).await.map(|_| i)
        }));
    }
    let mut winners = 0;
    for t in tasks {
        match t.await.expect("join") {
            Ok(_) => winners += 1,
            Err(OriginError::PreconditionFailed) => {}
            Err(e) => panic!("unexpected {e:?}"),
        }
    }
    assert_eq!(winners, 1);
}

#[tokio::test]
async fn listing_details() {
    let dir = tempdir();
    let o = open(&dir.path().join("root"));
    o.create_bucket("b").await.expect("create");
    for key in ["p/a", "p/b/1", "p/b/2", "p/c"] {
        put(&o, "b", key, b"x").await;
    }
    // A continuation token this origin did not make.
    let q = ListQuery {
        max_keys: 10,
        continuation: Some("not a token".into()),
        ..Default::default()
    };
    expect_err(
        o.list_objects("b", &q).await,
        "Rejected 400 InvalidArgument",
        "a bogus continuation token",
    );

    // Start-after inside a common prefix: the prefix sorts before the marker, so it is not returned.
    let q = ListQuery {
        prefix: Some("p/".into()),
        delimiter: Some("/".into()),
        max_keys: 10,
        start_after: Some("p/b/1".into()),
        continuation: None,
    };
    let page = o.list_objects("b", &q).await.expect("list");
    assert_eq!(keys_of(&page.objects), vec!["p/c"]);
    assert!(page.common_prefixes.is_empty());

    // An empty delimiter is no delimiter.
    let q = ListQuery {
        prefix: Some("p/".into()),
        delimiter: Some(String::new()),
        max_keys: 10,
        ..Default::default()
    };
    let page = o.list_objects("b", &q).await.expect("list");
    assert_eq!(keys_of(&page.objects), vec!["p/a", "p/b/1", "p/b/2", "p/c"]);

    // A key ending in the highest code point still pages correctly.
    put(&o, "b", "p/z\u{10FFFF}/x", b"x").await;
    put(&o, "b", "p/z\u{10FFFF}/y", b"x").await;
    put(&o, "b", "p/zz", b"x").await;
    let pages = list_pages(
        &o,
        "b",
        ListQuery {
            prefix: Some("p/".into()),
            delimiter: Some("/".into()),
            max_keys: 1,
            ..Default::default()
        },
    )
    .await;
    let all: Vec<Item> = pages.iter().flat_map(items).collect();
    assert_eq!(
        all,
        vec![
            Item::Key("p/a".into()),
            Item::Prefix("p/b/".into()),
            Item::Key("p/c".into()),
            Item::Key("p/zz".into()),
            Item::Prefix("p/z\u{10FFFF}/".into()),
        ]
    );

    // A common prefix made only of the highest code point has nothing after it.
    o.create_bucket("c").await.expect("create");
    for key in ["a", "\u{10FFFF}x", "\u{10FFFF}y"] {
        put(&o, "c", key, b"x").await;
    }
    let q = ListQuery {
        delimiter: Some("\u{10FFFF}".into()),
        max_keys: 1,
        ..Default::default()
    };
    let pages = list_pages(&o, "c", q).await;
    let all: Vec<Item> = pages.iter().flat_map(items).collect();
    assert_eq!(all, vec![Item::Key("a".into()), Item::Prefix("\u{10FFFF}".into())]);
    assert_eq!(pages.len(), 2);
}

#[tokio::test]
async fn unreadable_object_files_are_ignored_at_open() {
    let dir = tempdir();
    let root = dir.path().join("root");
    {
        let o = open(&root);
        o.create_bucket("b").await.expect("create");
        put(&o, "b", "good", b"good").await;
    }
    let fan = root.join("b").join("ab");
    std::fs::create_dir_all(&fan).expect("fan dir");
    std::fs::write(fan.join(format!("ab{}", "0".repeat(62))), b"garbage").expect("garbage");
    let o = open(&root);
    assert_eq!(all_keys(&o, "b", "").await, vec!["good"]);
    assert_eq!(get_bytes(&o, "b", "good").await, b"good");
}

/// The directory origin's own side of multipart checksums: a part sent without the upload's
/// checksum gets it computed, the upload's algorithm survives a reopen, a part checksummed with
/// another algorithm is refused, and an upload without an algorithm keeps no checksum.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multipart_checksums_of_the_directory_origin() {
    use perch_cache::{ChecksumAlgorithm, ChecksumType, MultipartChecksum};
    let dir = tempdir();
    let root = dir.path().join("root");
    let p1 = pattern(5 * MIB, 50);
    let p2 = pattern(333, 51);
    let crc32c = MultipartChecksum::new(ChecksumAlgorithm::Crc32c, None).expect("CRC32C");
    let id = {
        let o = open(&root);
        o.create_bucket("b").await.expect("create bucket");
        o.create_multipart_upload("b", "k", &ContentHeaders::default(), &[], Some(crc32c))
            .await
            .expect("create upload")
    };
    // Reopened: the upload still knows its algorithm.
    let o = open(&root);
    let computed = o
        .upload_part(
            "b",
            "k",
            &id,
            1,
            &PutBody::Bytes(p1.clone().into()),
            &Checksums::default(),
        )
        .await
        .expect("part 1 without a checksum");
    let c1 = Checksums::only(ChecksumAlgorithm::Crc32c, b64(&crc32c_of(&p1)));
    assert_eq!(computed.checksums, c1, "the part's CRC32C, computed by the origin");
    let sha = Checksums::only(ChecksumAlgorithm::Sha256, b64(&sha256_of(&p2)));
    expect_err(
        o.upload_part("b", "k", &id, 2, &PutBody::Bytes(p2.clone().into()), &sha)
            .await,
        "Rejected 400 InvalidRequest",
        "a part checksummed with another algorithm",
    );
    let c2 = Checksums::only(ChecksumAlgorithm::Crc32c, b64(&crc32c_of(&p2)));
    let e2 = o
        .upload_part("b", "k", &id, 2, &PutBody::Bytes(p2.clone().into()), &c2)
        .await
        .expect("part 2")
        .etag;
    let listed = o.list_parts("b", "k", &id).await.expect("list parts");
    assert_eq!(
        listed.iter().map(|p| p.checksums.clone()).collect::<Vec<_>>(),
        vec![c1.clone(), c2.clone()]
    );
    let done = [
        CompletedPart {
            part_number: 1,
            etag: computed.etag,
            checksums: c1,
        },
        CompletedPart {
            part_number: 2,
            etag: e2,
            checksums: c2,
        },
    ];
    let out = o
        .complete_multipart_upload("b", "k", &id, &done)
        .await
        .expect("complete");
    let expected = composite_checksum(crc32c_of, &[&p1, &p2]);
    assert_eq!(
        out.checksums,
        Checksums::only(ChecksumAlgorithm::Crc32c, expected.clone())
    );
    assert_eq!(out.checksums.checksum_type(), Some(ChecksumType::Composite));
    // Kept with the object, across a reopen.
    drop(o);
    let o = open(&root);
    let meta = o.head_object("b", "k", &no_conditions()).await.expect("head");
    assert_eq!(meta.checksums.crc32c.as_deref(), Some(expected.as_str()));

    // Without an algorithm: part checksums are echoed, not kept, and the object has none.
    let id = o
        .create_multipart_upload("b", "plain", &ContentHeaders::default(), &[], None)
        .await
        .expect("create plain upload");
    let sums = Checksums::only(ChecksumAlgorithm::Crc32, b64(&crc32_of(&p2)));
    let part = o
        .upload_part("b", "plain", &id, 1, &PutBody::Bytes(p2.clone().into()), &sums)
        .await
        .expect("plain part");
    assert_eq!(part.checksums, sums, "echoed");
    let listed = o.list_parts("b", "plain", &id).await.expect("list parts");
    assert!(listed[0].checksums.is_empty(), "{listed:?}");
    let out = o
        .complete_multipart_upload(
            "b",
            "plain",
            &id,
            &[CompletedPart {
                part_number: 1,
                etag: part.etag,
                checksums: sums,
            }],
        )
        .await
        .expect("complete plain");
    assert!(out.checksums.is_empty(), "{out:?}");
    let meta = o.head_object("b", "plain", &no_conditions()).await.expect("head plain");
    assert!(meta.checksums.is_empty());
}

#[tokio::test]
async fn a_body_that_does_not_match_its_content_md5_is_refused() {
    let dir = tempdir();
    let o = open(dir.path());
    o.create_bucket("b").await.expect("bucket");
    use md5::Digest;
    let md5_of = |b: &[u8]| aws_smithy_types::base64::encode(md5::Md5::digest(b));
    let wrong = PutInput {
        content_md5: Some(md5_of(b"another body")),
        ..put_input(&b"the body"[..])
    };
    match o.put_object("b", "k", &wrong).await {
        Err(OriginError::Rejected { status: 400, code, .. }) => assert_eq!(code, "BadDigest"),
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        o.head_object("b", "k", &no_conditions()).await,
        Err(OriginError::NoSuchKey)
    ));
    let right = PutInput {
        content_md5: Some(md5_of(b"the body")),
        ..put_input(&b"the body"[..])
    };
    o.put_object("b", "k", &right)
        .await
        .expect("a matching Content-MD5 is taken");
}

/// Parts uploaded while their upload is aborted (a client's UploadPart racing its own abort, or
/// `--multipart-expiry`): the abort leaves nothing behind. It removed the directory where it was,
/// and a part renamed into it meanwhile failed the removal and left it without its description:
/// parts that no listing, expiry or abort would ever see again. And a directory left so by an
/// older Perch goes at the next open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parts_racing_an_abort_leave_no_upload_behind() {
    let dir = tempdir();
    let o = Arc::new(open(dir.path()));
    o.create_bucket("b").await.expect("bucket");
    let part = Bytes::from(pattern(64 * 1024, 9));
    for round in 0..20 {
        let id = o
            .create_multipart_upload("b", "k", &ContentHeaders::default(), &[], None)
            .await
            .expect("create upload");
        let writers: Vec<_> = (0..4)
            .map(|w| {
                let (o, id, part) = (o.clone(), id.clone(), part.clone());
                tokio::spawn(async move {
                    for n in 0..25 {
                        let body = PutBody::Bytes(part.clone());
                        match o
                            .upload_part("b", "k", &id, w * 25 + n + 1, &body, &Checksums::default())
                            .await
                        {
                            Ok(_) => {}
                            Err(OriginError::NoSuchUpload) => return,
                            Err(e) => panic!("part {n} of writer {w}: {e}"),
                        }
                    }
                })
            })
            .collect();
        tokio::time::sleep(std::time::Duration::from_millis(2 + round % 5)).await;
        o.abort_multipart_upload("b", "k", &id).await.expect("abort");
        for w in writers {
            w.await.expect("writer");
        }
        let uploads = tree(&dir.path().join(".uploads"));
        assert!(uploads.is_empty(), "round {round}: the abort left {uploads:?}");
    }

    // A directory without its description, as an interrupted removal left it before.
    let orphan = dir.path().join(".uploads").join("0123abcd");
    std::fs::create_dir(&orphan).expect("orphan dir");
    std::fs::write(orphan.join("part-00001"), b"left").expect("orphan part");
    drop(o);
    let _reopened = open(dir.path());
    assert!(tree(&dir.path().join(".uploads")).is_empty(), "the orphan stays");
}
