//! Listings through aws-sdk-s3, against both origins: ListObjectsV2, ListObjects and versions.

use std::collections::BTreeMap;

use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::EncodingType;
use perch_testkit::bodies::pattern;
use perch_testkit::sdk::{moto_client, perch_client};
use perch_testkit::servers::MotoServer;

use crate::support::machine;
use crate::support::perch::start_perch;
use crate::support::sdk::{assert_recent, create_bucket, for_each_origin, ok, put, url_decode};

const LIST_KEYS: [&str; 7] = [
    "alpha/1",
    "alpha/2",
    "alpha/sub/3",
    "beta",
    "gamma/x/1",
    "gamma/y",
    "zeta",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_objects_v2() {
    let _turn = machine::share();
    for_each_origin(|gw| async move {
        let c = &gw.client;
        let b = "list-v2";
        create_bucket(c, b).await;
        let mut etags = BTreeMap::new();
        for (i, k) in LIST_KEYS.iter().enumerate() {
            etags.insert(*k, put(c, b, k, &pattern(10 + i, i as u64)).await);
        }

        let out = ok(c.list_objects_v2().bucket(b).send().await, "list all");
        assert_eq!(out.name(), Some(b));
        assert_eq!(out.key_count(), Some(7));
        assert_eq!(out.is_truncated(), Some(false));
        assert_eq!(out.next_continuation_token(), None);
        let keys: Vec<&str> = out.contents().iter().filter_map(|o| o.key()).collect();
        assert_eq!(keys, LIST_KEYS);
        for (i, o) in out.contents().iter().enumerate() {
            assert_eq!(o.size(), Some(10 + i as i64));
            assert_eq!(o.e_tag(), Some(etags[LIST_KEYS[i]].as_str()));
            assert_recent(o.last_modified(), "listed LastModified");
        }

        let out = ok(c.list_objects_v2().bucket(b).prefix("alpha/").send().await, "prefix");
        let keys: Vec<&str> = out.contents().iter().filter_map(|o| o.key()).collect();
        assert_eq!(keys, ["alpha/1", "alpha/2", "alpha/sub/3"]);
        assert_eq!(out.prefix(), Some("alpha/"));

        let out = ok(c.list_objects_v2().bucket(b).delimiter("/").send().await, "delimiter");
        let keys: Vec<&str> = out.contents().iter().filter_map(|o| o.key()).collect();
        let prefixes: Vec<&str> = out.common_prefixes().iter().filter_map(|p| p.prefix()).collect();
        assert_eq!(keys, ["beta", "zeta"]);
        assert_eq!(prefixes, ["alpha/", "gamma/"]);
        assert_eq!(out.key_count(), Some(4));
        assert_eq!(out.delimiter(), Some("/"));

        let out = ok(
            c.list_objects_v2()
                .bucket(b)
                .prefix("alpha/")
                .delimiter("/")
                .send()
                .await,
            "prefix and delimiter",
        );
        let keys: Vec<&str> = out.contents().iter().filter_map(|o| o.key()).collect();
        let prefixes: Vec<&str> = out.common_prefixes().iter().filter_map(|p| p.prefix()).collect();
        assert_eq!(keys, ["alpha/1", "alpha/2"]);
        assert_eq!(prefixes, ["alpha/sub/"]);

        let out = ok(
            c.list_objects_v2().bucket(b).prefix("nothing-here").send().await,
            "empty prefix",
        );
        assert!(out.contents().is_empty());
        assert_eq!(out.key_count(), Some(0));

        // Pages of 2, through continuation tokens.
        let mut seen = Vec::new();
        let mut pages = 0;
        let mut token: Option<String> = None;
        loop {
            let out = ok(
                c.list_objects_v2()
                    .bucket(b)
                    .max_keys(2)
                    .set_continuation_token(token.take())
                    .send()
                    .await,
                "page",
            );
            pages += 1;
            assert_eq!(out.max_keys(), Some(2));
            assert!(out.contents().len() <= 2);
            assert_eq!(out.key_count(), Some(out.contents().len() as i32));
            seen.extend(out.contents().iter().filter_map(|o| o.key()).map(str::to_owned));
            if out.is_truncated() == Some(true) {
                token = Some(
                    out.next_continuation_token()
                        .expect("a truncated page has a token")
                        .to_owned(),
                );
            } else {
                assert_eq!(out.next_continuation_token(), None);
                break;
            }
            assert!(pages < 10, "the listing does not end");
        }
        assert_eq!(seen, LIST_KEYS);
        assert_eq!(pages, 4);

        // Pages of 1 with a delimiter: each common prefix once.
        let mut seen = Vec::new();
        let mut token: Option<String> = None;
        for _ in 0..10 {
            let out = ok(
                c.list_objects_v2()
                    .bucket(b)
                    .delimiter("/")
                    .max_keys(1)
                    .set_continuation_token(token.take())
                    .send()
                    .await,
                "page with a delimiter",
            );
            assert_eq!(out.contents().len() + out.common_prefixes().len(), 1);
            seen.extend(out.contents().iter().filter_map(|o| o.key()).map(str::to_owned));
            seen.extend(
                out.common_prefixes()
                    .iter()
                    .filter_map(|p| p.prefix())
                    .map(str::to_owned),
            );
            match out.next_continuation_token() {
                Some(t) if out.is_truncated() == Some(true) => token = Some(t.to_owned()),
                _ => break,
            }
        }
        assert_eq!(seen, ["alpha/", "beta", "gamma/", "zeta"]);

        // start-after.
        let out = ok(
            c.list_objects_v2().bucket(b).start_after("alpha/2").send().await,
            "start-after",
        );
        let keys: Vec<&str> = out.contents().iter().filter_map(|o| o.key()).collect();
        assert_eq!(keys, ["alpha/sub/3", "beta", "gamma/x/1", "gamma/y", "zeta"]);
        assert_eq!(out.start_after(), Some("alpha/2"));
        let out = ok(
            c.list_objects_v2().bucket(b).start_after("b").max_keys(2).send().await,
            "start-after, one page",
        );
        let keys: Vec<&str> = out.contents().iter().filter_map(|o| o.key()).collect();
        assert_eq!(keys, ["beta", "gamma/x/1"]);
        assert_eq!(out.is_truncated(), Some(true));
        let out = ok(
            c.list_objects_v2()
                .bucket(b)
                .start_after("b")
                .continuation_token(out.next_continuation_token().expect("token"))
                .send()
                .await,
            "start-after, next page",
        );
        let keys: Vec<&str> = out.contents().iter().filter_map(|o| o.key()).collect();
        assert_eq!(keys, ["gamma/y", "zeta"]);

        // encoding-type=url.
        let e = "list-encoded";
        create_bucket(c, e).await;
        for k in ["a b", "p+q%r", "ü/x", "ü/y", "z&<>"] {
            put(c, e, k, k.as_bytes()).await;
        }
        let out = ok(
            c.list_objects_v2()
                .bucket(e)
                .delimiter("/")
                .encoding_type(EncodingType::Url)
                .send()
                .await,
            "encoding-type=url",
        );
        assert_eq!(out.encoding_type(), Some(&EncodingType::Url));
        let raw: Vec<&str> = out
            .contents()
            .iter()
            .filter_map(|o| o.key())
            .chain(out.common_prefixes().iter().filter_map(|p| p.prefix()))
            .collect();
        for r in &raw {
            assert!(
                r.bytes().all(|b| b.is_ascii_graphic() && !b"&<>".contains(&b)),
                "{r:?} is not URL-encoded"
            );
        }
        let keys: Vec<String> = out.contents().iter().filter_map(|o| o.key()).map(url_decode).collect();
        let prefixes: Vec<String> = out
            .common_prefixes()
            .iter()
            .filter_map(|p| p.prefix())
            .map(url_decode)
            .collect();
        assert_eq!(keys, ["a b", "p+q%r", "z&<>"]);
        assert_eq!(prefixes, ["ü/"]);
        // Without it, the keys come back as they are.
        let out = ok(c.list_objects_v2().bucket(e).send().await, "plain listing");
        let keys: Vec<&str> = out.contents().iter().filter_map(|o| o.key()).collect();
        assert_eq!(keys, ["a b", "p+q%r", "z&<>", "ü/x", "ü/y"]);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_objects_v1_and_versions() {
    let _turn = machine::share();
    for_each_origin(|gw| async move {
        let c = &gw.client;
        let b = "list-v1";
        create_bucket(c, b).await;
        let keys = ["a/1", "a/2", "b", "c/1", "c/2", "d"];
        let mut etags = BTreeMap::new();
        for k in keys {
            etags.insert(k, put(c, b, k, k.as_bytes()).await);
        }

        let out = ok(c.list_objects().bucket(b).send().await, "v1 all");
        let got: Vec<&str> = out.contents().iter().filter_map(|o| o.key()).collect();
        assert_eq!(got, keys);
        assert_eq!(out.is_truncated(), Some(false));

        // Pages of 1 with a delimiter, resuming at NextMarker: a common prefix is not repeated.
        let mut seen = Vec::new();
        let mut marker: Option<String> = None;
        let mut pages = 0;
        loop {
            let out = ok(
                c.list_objects()
                    .bucket(b)
                    .delimiter("/")
                    .max_keys(1)
                    .set_marker(marker.take())
                    .send()
                    .await,
                "v1 page with a delimiter",
            );
            pages += 1;
            assert_eq!(out.contents().len() + out.common_prefixes().len(), 1);
            seen.extend(out.contents().iter().filter_map(|o| o.key()).map(str::to_owned));
            seen.extend(
                out.common_prefixes()
                    .iter()
                    .filter_map(|p| p.prefix())
                    .map(str::to_owned),
            );
            if out.is_truncated() == Some(true) {
                let next = out
                    .next_marker()
                    .expect("a truncated page with a delimiter has a NextMarker");
                assert_eq!(Some(next), seen.last().map(String::as_str));
                marker = Some(next.to_owned());
            } else {
                break;
            }
            assert!(pages < 10, "the listing does not end");
        }
        assert_eq!(seen, ["a/", "b", "c/", "d"]);

        // Pages of 2 without a delimiter, resuming at the last key.
        let mut seen = Vec::new();
        let mut marker: Option<String> = None;
        for _ in 0..10 {
            let out = ok(
                c.list_objects()
                    .bucket(b)
                    .max_keys(2)
                    .set_marker(marker.take())
                    .send()
                    .await,
                "v1 page",
            );
            assert!(out.contents().len() <= 2);
            seen.extend(out.contents().iter().filter_map(|o| o.key()).map(str::to_owned));
            // S3 names a NextMarker only with a delimiter.
            assert_eq!(out.next_marker(), None, "a v1 page without a delimiter");
            if out.is_truncated() != Some(true) {
                break;
            }
            marker = Some(seen.last().cloned().expect("a marker"));
        }
        assert_eq!(seen, keys);

        let out = ok(c.list_objects().bucket(b).prefix("c/").send().await, "v1 prefix");
        let got: Vec<&str> = out.contents().iter().filter_map(|o| o.key()).collect();
        assert_eq!(got, ["c/1", "c/2"]);
        let out = ok(c.list_objects().bucket(b).marker("b").send().await, "v1 marker");
        let got: Vec<&str> = out.contents().iter().filter_map(|o| o.key()).collect();
        assert_eq!(got, ["c/1", "c/2", "d"]);

        // ListObjectVersions: every object once, as the "null" version, latest.
        let out = ok(c.list_object_versions().bucket(b).send().await, "versions");
        let got: Vec<&str> = out.versions().iter().filter_map(|v| v.key()).collect();
        assert_eq!(got, keys);
        for v in out.versions() {
            let k = v.key().expect("key");
            assert_eq!(v.version_id(), Some("null"), "{k}");
            assert_eq!(v.is_latest(), Some(true), "{k}");
            assert_eq!(v.e_tag(), Some(etags[k].as_str()), "{k}");
            assert_eq!(v.size(), Some(k.len() as i64), "{k}");
        }
        assert!(out.delete_markers().is_empty());
        assert_eq!(out.is_truncated(), Some(false));
        let out = ok(
            c.list_object_versions().bucket(b).delimiter("/").send().await,
            "versions with a delimiter",
        );
        let got: Vec<&str> = out.versions().iter().filter_map(|v| v.key()).collect();
        let prefixes: Vec<&str> = out.common_prefixes().iter().filter_map(|p| p.prefix()).collect();
        assert_eq!(got, ["b", "d"]);
        assert_eq!(prefixes, ["a/", "c/"]);

        // ListObjectVersions pages of 2, resuming at NextKeyMarker.
        let mut seen = Vec::new();
        let mut key_marker: Option<String> = None;
        for _ in 0..10 {
            let out = ok(
                c.list_object_versions()
                    .bucket(b)
                    .max_keys(2)
                    .set_key_marker(key_marker.take())
                    .send()
                    .await,
                "versions page",
            );
            assert!(out.versions().len() <= 2);
            seen.extend(out.versions().iter().filter_map(|v| v.key()).map(str::to_owned));
            if out.is_truncated() != Some(true) {
                break;
            }
            let next = out.next_key_marker().expect("a truncated page has a NextKeyMarker");
            assert_eq!(Some(next), seen.last().map(String::as_str));
            key_marker = Some(next.to_owned());
        }
        assert_eq!(seen, keys);

        // v1 pages of 1 under a prefix, with a delimiter: nested common prefixes once each.
        let n = "list-v1-nested";
        create_bucket(c, n).await;
        for k in ["p/a/1", "p/a/2", "p/a/x/3", "p/b", "p/c/1", "p/c/2", "p/d", "q/1"] {
            put(c, n, k, k.as_bytes()).await;
        }
        let mut seen = Vec::new();
        let mut marker: Option<String> = None;
        for _ in 0..10 {
            let out = ok(
                c.list_objects()
                    .bucket(n)
                    .prefix("p/")
                    .delimiter("/")
                    .max_keys(1)
                    .set_marker(marker.take())
                    .send()
                    .await,
                "v1 nested page",
            );
            seen.extend(out.contents().iter().filter_map(|o| o.key()).map(str::to_owned));
            seen.extend(
                out.common_prefixes()
                    .iter()
                    .filter_map(|p| p.prefix())
                    .map(str::to_owned),
            );
            if out.is_truncated() != Some(true) {
                break;
            }
            marker = Some(out.next_marker().expect("NextMarker").to_owned());
        }
        assert_eq!(seen, ["p/a/", "p/b", "p/c/", "p/d"]);
        // The same through ListObjectsV2 continuation tokens.
        let mut seen = Vec::new();
        let mut token: Option<String> = None;
        for _ in 0..10 {
            let out = ok(
                c.list_objects_v2()
                    .bucket(n)
                    .prefix("p/")
                    .delimiter("/")
                    .max_keys(1)
                    .set_continuation_token(token.take())
                    .send()
                    .await,
                "v2 nested page",
            );
            seen.extend(out.contents().iter().filter_map(|o| o.key()).map(str::to_owned));
            seen.extend(
                out.common_prefixes()
                    .iter()
                    .filter_map(|p| p.prefix())
                    .map(str::to_owned),
            );
            match out.next_continuation_token() {
                Some(t) if out.is_truncated() == Some(true) => token = Some(t.to_owned()),
                _ => break,
            }
        }
        assert_eq!(seen, ["p/a/", "p/b", "p/c/", "p/d"]);
    })
    .await;
}

/// The names a client walks through page by page (keys and common prefixes, in order), with
/// pages of `max` and, when `delimiter` is given, ListObjects (v1) resuming at NextMarker, else
/// ListObjectsV2 resuming at its continuation token. No page may be empty but truncated, and no
/// resume position may name a key under Perch's own prefix (tokens are `p1` + hex of a name).
async fn walk(c: &aws_sdk_s3::Client, bucket: &str, max: i32, delimiter: Option<&str>) -> Vec<String> {
    const RESERVED_HEX: &str = "2e70657263682f"; // ".perch/"
    let mut names = Vec::new();
    let mut after: Option<String> = None;
    for _ in 0..20 {
        let (page, truncated, next) = match delimiter {
            Some(d) => {
                let out = ok(
                    c.list_objects()
                        .bucket(bucket)
                        .delimiter(d)
                        .max_keys(max)
                        .set_marker(after.take())
                        .send()
                        .await,
                    "v1 page",
                );
                let mut page: Vec<String> = out
                    .contents()
                    .iter()
                    .filter_map(|o| o.key())
                    .map(str::to_owned)
                    .collect();
                page.extend(
                    out.common_prefixes()
                        .iter()
                        .filter_map(|p| p.prefix())
                        .map(str::to_owned),
                );
                page.sort();
                (
                    page,
                    out.is_truncated() == Some(true),
                    out.next_marker().map(str::to_owned),
                )
            }
            None => {
                let out = ok(
                    c.list_objects_v2()
                        .bucket(bucket)
                        .max_keys(max)
                        .set_continuation_token(after.take())
                        .send()
                        .await,
                    "v2 page",
                );
                let page = out
                    .contents()
                    .iter()
                    .filter_map(|o| o.key())
                    .map(str::to_owned)
                    .collect();
                (
                    page,
                    out.is_truncated() == Some(true),
                    out.next_continuation_token().map(str::to_owned),
                )
            }
        };
        assert!(
            !(page.is_empty() && truncated),
            "an empty page said to be truncated (max {max})"
        );
        names.extend(page);
        if !truncated {
            return names;
        }
        let next = next.expect("a truncated page says where the next one starts");
        assert!(
            !next.starts_with(".perch/") && !next.contains(RESERVED_HEX),
            "a page boundary names Perch's prefix: {next} (max {max}, delimiter {delimiter:?})"
        );
        after = Some(next);
    }
    panic!("the listing never ended (max {max})");
}

/// Perch's own prefix (`.perch/`: the hot set, the lease) is never listed, by a primary or by a
/// replica, and never named by a page boundary: pages of any size walk past it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn perchs_own_prefix_is_never_listed_nor_named_by_a_page_boundary() {
    let _turn = machine::share();
    let moto = MotoServer::start();
    let tmp = tempfile::tempdir().expect("temp dir");
    let m = moto_client(&moto);
    let b = "reserved";
    ok(m.create_bucket().bucket(b).send().await, "create the bucket in moto");
    for k in [
        ".a",
        ".perch/hot-set",
        ".perch/lease",
        ".perch/x/deep",
        ".perchy",
        "a",
        "b/c",
    ] {
        ok(
            m.put_object()
                .bucket(b)
                .key(k)
                .body(ByteStream::from_static(b"x"))
                .send()
                .await,
            "put into moto",
        );
    }
    for (name, role) in [("primary", &[][..]), ("replica", &["--role", "replica"][..])] {
        let perch = start_perch(&tmp.path().join(name), Some(&moto.endpoint), role);
        let c = perch_client(&perch);
        for max in 1..=5 {
            assert_eq!(
                walk(&c, b, max, None).await,
                [".a", ".perchy", "a", "b/c"],
                "{name}: ListObjectsV2, pages of {max}"
            );
            assert_eq!(
                walk(&c, b, max, Some("/")).await,
                [".a", ".perchy", "a", "b/"],
                "{name}: ListObjects with a delimiter, pages of {max}"
            );
        }
        let out = ok(
            c.list_objects_v2().bucket(b).prefix(".perch/").send().await,
            "prefix .perch/",
        );
        assert_eq!(
            (out.key_count(), out.contents().len()),
            (Some(0), 0),
            "{name}: prefix .perch/"
        );
        let out = ok(c.list_object_versions().bucket(b).send().await, "versions");
        let keys: Vec<&str> = out.versions().iter().filter_map(|v| v.key()).collect();
        assert_eq!(keys, [".a", ".perchy", "a", "b/c"], "{name}: ListObjectVersions");
    }
}
