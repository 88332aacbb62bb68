//! A replica perch serves reads of the shared bucket a primary writes and never writes to it: its
//! own writes go to its overlay (or are refused with `--replica-writes refuse`), WAL segments are
//! fetched for its Postgres with `perch wal fetch`, and an OrioleDB standby's traffic is answered
//! as OrioleDB expects with nothing reaching the origin but reads.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart, Delete, ObjectIdentifier};
use perch_testkit::bodies::pattern;
use perch_testkit::origin_proxy::ProxyControl;
use perch_testkit::raw_client::{Req, Resp, Style, key_path};
use perch_testkit::sdk::{moto_client, perch_client};
use perch_testkit::servers::{MOTO_ACCESS_KEY_ID, MOTO_SECRET_ACCESS_KEY, MotoServer, PerchServer, ProxyServer};
use perch_testkit::sigv4::Keys;

use crate::support::machine;
use crate::support::perch::{admin_get, perch_binary, perch_metric, put_into_moto, start_perch};
use crate::support::raw::list_keys;
use crate::support::sdk::{
    HttpResponse, all_keys, bytes_of, create_bucket, expect_err, get_bytes, ok, presigned_get, put, send_presigned,
    upload_in_parts,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replica_serves_reads_and_refuses_writes() {
    let _turn = machine::share();
    let moto = MotoServer::start();
    let tmp = tempfile::tempdir().expect("temp dir");
    let m = moto_client(&moto);

    // A primary writes, then stops.
    let primary = start_perch(&tmp.path().join("primary"), Some(&moto.endpoint), &[]);
    let p = perch_client(&primary);
    create_bucket(&p, "rep").await;
    let etag_a = put(&p, "rep", "a", b"alpha").await;
    put(&p, "rep", "dir/b", b"beta").await;
    let upload_id = ok(
        p.create_multipart_upload().bucket("rep").key("pending").send().await,
        "create an upload",
    )
    .upload_id()
    .expect("id")
    .to_owned();
    let part_etag = ok(
        p.upload_part()
            .bucket("rep")
            .key("pending")
            .upload_id(&upload_id)
            .part_number(1)
            .body(ByteStream::from_static(b"first part"))
            .send()
            .await,
        "upload a part",
    )
    .e_tag()
    .expect("etag")
    .to_owned();
    let status = primary.terminate(Duration::from_secs(30));
    assert!(status.success(), "primary exited with {status}");

    let replica = start_perch(
        &tmp.path().join("replica"),
        Some(&moto.endpoint),
        &["--role", "replica", "--replica-writes", "refuse"],
    );
    let r = perch_client(&replica);

    // Reads.
    assert_eq!(get_bytes(&r, "rep", "a").await, b"alpha");
    let head = ok(r.head_object().bucket("rep").key("dir/b").send().await, "head dir/b");
    assert_eq!(head.content_length(), Some(4));
    assert_eq!(all_keys(&r, "rep", None).await, ["a", "dir/b"]);
    let v1 = ok(r.list_objects().bucket("rep").delimiter("/").send().await, "list v1");
    let keys: Vec<&str> = v1.contents().iter().filter_map(|o| o.key()).collect();
    let prefixes: Vec<&str> = v1.common_prefixes().iter().filter_map(|p| p.prefix()).collect();
    assert_eq!(keys, ["a"]);
    assert_eq!(prefixes, ["dir/"]);
    let versions = ok(r.list_object_versions().bucket("rep").send().await, "versions");
    assert_eq!(versions.versions().len(), 2);
    let buckets = ok(r.list_buckets().send().await, "list buckets");
    let names: Vec<&str> = buckets.buckets().iter().filter_map(|b| b.name()).collect();
    assert_eq!(names, ["rep"]);
    ok(r.head_bucket().bucket("rep").send().await, "head bucket");
    ok(r.get_bucket_location().bucket("rep").send().await, "bucket location");
    // Multipart uploads are staged in the Perch that received them (docs/write-back.md): the
    // primary's upload in progress is not the replica's to list.
    let uploads = ok(r.list_multipart_uploads().bucket("rep").send().await, "uploads");
    assert_eq!(uploads.uploads().len(), 0);
    expect_err(
        r.list_parts()
            .bucket("rep")
            .key("pending")
            .upload_id(&upload_id)
            .send()
            .await,
        404,
        Some("NoSuchUpload"),
    );
    let _ = part_etag;
    let req = presigned_get(&r, "rep", "a", Duration::from_secs(60)).await;
    let answer = send_presigned(&req, &[], b"");
    assert_eq!((answer.status, answer.body.as_slice()), (200, &b"alpha"[..]));

    // Writes.
    #[track_caller]
    fn refused<T: std::fmt::Debug, E>(result: Result<T, aws_sdk_s3::error::SdkError<E, HttpResponse>>, what: &str)
    where
        E: aws_sdk_s3::error::ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    {
        let err = expect_err(result, 403, Some("AccessDenied"));
        let message = aws_sdk_s3::error::ProvideErrorMetadata::message(&err).unwrap_or_default();
        assert!(
            message.to_ascii_lowercase().contains("replica"),
            "{what}: the refusal says why: {message:?}"
        );
    }
    refused(
        r.put_object()
            .bucket("rep")
            .key("new")
            .body(ByteStream::from_static(b"new"))
            .send()
            .await,
        "PutObject",
    );
    refused(
        r.put_object()
            .bucket("rep")
            .key("a")
            .body(ByteStream::from(pattern(100_000, 9)))
            .send()
            .await,
        "PutObject over an existing key",
    );
    refused(r.delete_object().bucket("rep").key("a").send().await, "DeleteObject");
    refused(
        r.delete_objects()
            .bucket("rep")
            .delete(
                Delete::builder()
                    .objects(ObjectIdentifier::builder().key("a").build().expect("id"))
                    .objects(ObjectIdentifier::builder().key("dir/b").build().expect("id"))
                    .build()
                    .expect("delete"),
            )
            .send()
            .await,
        "DeleteObjects",
    );
    refused(
        r.copy_object()
            .bucket("rep")
            .key("copy")
            .copy_source("rep/a")
            .send()
            .await,
        "CopyObject",
    );
    refused(
        r.create_multipart_upload().bucket("rep").key("mp").send().await,
        "CreateMultipartUpload",
    );
    refused(
        r.upload_part()
            .bucket("rep")
            .key("pending")
            .upload_id(&upload_id)
            .part_number(2)
            .body(ByteStream::from_static(b"part"))
            .send()
            .await,
        "UploadPart",
    );
    refused(
        r.complete_multipart_upload()
            .bucket("rep")
            .key("pending")
            .upload_id(&upload_id)
            .multipart_upload(
                CompletedMultipartUpload::builder()
                    .parts(CompletedPart::builder().part_number(1).e_tag(&part_etag).build())
                    .build(),
            )
            .send()
            .await,
        "CompleteMultipartUpload",
    );
    refused(
        r.abort_multipart_upload()
            .bucket("rep")
            .key("pending")
            .upload_id(&upload_id)
            .send()
            .await,
        "AbortMultipartUpload",
    );
    refused(r.create_bucket().bucket("other").send().await, "CreateBucket");
    refused(r.delete_bucket().bucket("rep").send().await, "DeleteBucket");
    // Reads still work after the refusals (the connection was not left in a bad state).
    assert_eq!(get_bytes(&r, "rep", "a").await, b"alpha");

    // Nothing changed at the origin.
    let buckets = ok(m.list_buckets().send().await, "moto: list buckets");
    let names: Vec<&str> = buckets.buckets().iter().filter_map(|b| b.name()).collect();
    assert_eq!(names, ["rep"]);
    assert_eq!(all_keys(&m, "rep", None).await, ["a", "dir/b"]);
    let got = ok(m.get_object().bucket("rep").key("a").send().await, "moto: get a");
    assert_eq!(got.e_tag(), Some(etag_a.as_str()));
    assert_eq!(bytes_of(got.body).await, b"alpha");
    assert_eq!(get_bytes(&m, "rep", "dir/b").await, b"beta");
    // The primary staged its multipart upload locally: the origin has none.
    let uploads = ok(m.list_multipart_uploads().bucket("rep").send().await, "moto: uploads");
    assert!(uploads.uploads().is_empty(), "{:?}", uploads.uploads());
}

const CONTROL: &str = "data/orioledb_data/control";
const LOCK: &str = "data/orioledb_data/s3_lock";
const UNDO: &str = "orioledb_undo/0000000000system";

fn moto_addr(moto: &MotoServer) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], moto.port))
}

fn moto_req(moto: &MotoServer, method: &str, key: &str) -> Resp {
    let addr = moto_addr(moto);
    Req::object(method, addr, Style::Path, &key_path(key))
        .keys(Some(Keys::new(MOTO_ACCESS_KEY_ID, MOTO_SECRET_ACCESS_KEY)))
        .go(addr)
}

/// Creates the OrioleDB bucket straight in moto: the primary's bucket.
fn create_moto_bucket(moto: &MotoServer) {
    let addr = moto_addr(moto);
    let r = Req::bucket("PUT", addr, Style::Path, "")
        .keys(Some(Keys::new(MOTO_ACCESS_KEY_ID, MOTO_SECRET_ACCESS_KEY)))
        .go(addr);
    assert_eq!(r.status, 200, "create the bucket in moto: {}", r.summary());
}

/// GET through a perch, OrioleDB style; panics unless 200 with `body`; returns `X-Cache`.
#[track_caller]
fn get_is(addr: SocketAddr, key: &str, body: &[u8], what: &str) -> String {
    let r = Req::object("GET", addr, Style::Virtual, &key_path(key)).go(addr);
    assert_eq!(r.status, 200, "{what}: GET {key}: {}", r.summary());
    assert!(
        r.body == body,
        "{what}: GET {key}: other bytes ({} bytes)",
        r.body.len()
    );
    r.header("X-Cache").unwrap_or_default().to_owned()
}

#[track_caller]
fn status_of(addr: SocketAddr, method: &str, key: &str, body: &[u8], headers: &[(&str, &str)]) -> u16 {
    let mut req = Req::object(method, addr, Style::Virtual, &key_path(key)).body(body.to_vec());
    for (n, v) in headers {
        req = req.header(n, v);
    }
    req.go(addr).status
}

/// Every request the origin proxy passed to moto that was not a read.
fn origin_writes(proxy: &ProxyControl) -> Vec<String> {
    proxy
        .log()
        .into_iter()
        .filter(|r| !matches!(r["method"].as_str(), Some("GET") | Some("HEAD")))
        .map(|r| format!("{} {}", r["method"], r["key"]))
        .collect()
}

fn start_replica(dir: &Path, proxy: &ProxyServer) -> PerchServer {
    start_perch(dir, Some(&proxy.endpoint), &["--role", "replica"])
}

#[test]
fn replica_overlay_reads_back_lists_survives_restart_and_never_uploads() {
    let _turn = machine::share();
    let moto = MotoServer::start();
    let proxy = ProxyServer::start(&moto.endpoint, &[]);
    let tmp = tempfile::tempdir().expect("temp dir");
    // The primary's bucket: a write-once part and checkpoint file, its control and undo files,
    // its lock, a WAL segment.
    create_moto_bucket(&moto);
    let part = pattern(8192, 1);
    put_into_moto(&moto, "orioledb_data/1/1/2.0.0", &part);
    put_into_moto(&moto, "data/1/global/pg_control", b"primary pg_control 1");
    put_into_moto(&moto, CONTROL, b"primary control 1");
    put_into_moto(&moto, UNDO, b"primary undo 1");
    put_into_moto(&moto, LOCK, b"primary!");
    put_into_moto(&moto, "wal/000000010000000000000001", b"segment 1");

    let replica = start_replica(&tmp.path().join("replica"), &proxy);
    let r = replica.addr;
    // Seeding pinned the rewritten keys but the root control file: a standby that made a
    // restartpoint refuses to start on the primary's (ahead of its own progress), and writes none
    // itself while in recovery; a 404 reads as "no checkpoint in the bucket". Write-once keys
    // come from the shared bucket.
    assert_eq!(
        status_of(r, "GET", CONTROL, b"", &[]),
        404,
        "the primary's root control file"
    );
    get_is(r, UNDO, b"primary undo 1", "seeded");
    get_is(r, "orioledb_data/1/1/2.0.0", &part, "shared part");

    // The primary checkpoints on: a new control file, its undo file deleted. The replica keeps
    // the copies pinned at seeding (never the primary's live ones, never a 404).
    put_into_moto(&moto, CONTROL, b"primary control 2");
    assert_eq!(
        moto_req(&moto, "DELETE", UNDO).status,
        204,
        "the primary deletes its undo file"
    );
    assert_eq!(
        status_of(r, "GET", CONTROL, b"", &[]),
        404,
        "the primary's root control file after it moved on"
    );
    get_is(r, UNDO, b"primary undo 1", "undo deleted by the primary");

    // The lock: judged against the overlay only (the primary holds its own in the bucket).
    let take = [("If-None-Match", "*")];
    assert_eq!(
        status_of(r, "PUT", LOCK, b"replica1", &take),
        200,
        "the replica takes its lock"
    );
    assert_eq!(status_of(r, "PUT", LOCK, b"replica2", &take), 412, "a held lock");
    get_is(r, LOCK, b"replica1", "the replica's lock");
    assert_eq!(status_of(r, "DELETE", LOCK, b"", &[]), 204);
    assert_eq!(
        status_of(r, "PUT", LOCK, b"replica3", &take),
        200,
        "the lock after its DELETE"
    );

    // Its own checkpoint: read back.
    let big = pattern(1_500_000, 2);
    assert_eq!(status_of(r, "PUT", "orioledb_data/2/1/2.0.0", &big, &[]), 200);
    assert_eq!(
        status_of(r, "PUT", "data/2/global/pg_control", b"replica pg_control 2", &[]),
        200
    );
    assert_eq!(status_of(r, "PUT", CONTROL, b"replica control 2", &[]), 200);
    assert_eq!(get_is(r, "orioledb_data/2/1/2.0.0", &big, "own part"), "OVERLAY");
    get_is(r, CONTROL, b"replica control 2", "own control");
    // A shared key it deletes is gone for it (and only for it).
    assert_eq!(status_of(r, "DELETE", "orioledb_data/1/1/2.0.0", b"", &[]), 204);
    assert_eq!(status_of(r, "GET", "orioledb_data/1/1/2.0.0", b"", &[]), 404);

    let expected = [
        "data/1/global/pg_control",
        "data/2/global/pg_control",
        CONTROL,
        LOCK,
        "orioledb_data/2/1/2.0.0",
        UNDO,
        "wal/000000010000000000000001",
    ];
    assert_eq!(list_keys(r), expected, "the replica's listing");
    // With a delimiter, the common prefix whose every key the replica deleted is gone too (it
    // was listed, though nothing under it could be read).
    let page = Req::bucket(
        "GET",
        r,
        Style::Path,
        "list-type=2&prefix=orioledb_data%2F&delimiter=%2F",
    )
    .go(r);
    assert_eq!(page.status, 200, "{}", page.summary());
    let prefixes: Vec<String> = perch_testkit::raw_client::xml_values(&page.text(), "Prefix")
        .into_iter()
        .filter(|p| p != "orioledb_data/")
        .collect();
    assert_eq!(prefixes, ["orioledb_data/2/"], "{}", page.text());

    // A restart: the overlay is read back, not seeded again.
    let status = replica.terminate(Duration::from_secs(30));
    assert!(status.success(), "replica exited with {status}");
    let replica = start_replica(&tmp.path().join("replica"), &proxy);
    let r = replica.addr;
    get_is(r, CONTROL, b"replica control 2", "own control after a restart");
    get_is(r, UNDO, b"primary undo 1", "pinned undo after a restart");
    get_is(r, "orioledb_data/2/1/2.0.0", &big, "own part after a restart");
    assert_eq!(status_of(r, "GET", "orioledb_data/1/1/2.0.0", b"", &[]), 404);
    assert_eq!(
        status_of(r, "PUT", LOCK, b"replica4", &take),
        412,
        "the lock survives a restart"
    );
    assert_eq!(list_keys(r), expected, "the listing after a restart");
    assert!(
        perch_metric(&replica, "perch_replica_overlay_writes_total").is_none(),
        "no overlay write since the restart"
    );

    // Nothing but reads reached the origin; the primary's bucket is as the primary left it.
    assert_eq!(origin_writes(&proxy.control()), Vec::<String>::new());
    assert_eq!(moto_req(&moto, "GET", CONTROL).body, b"primary control 2");
    assert_eq!(moto_req(&moto, "GET", LOCK).body, b"primary!");
    assert_eq!(moto_req(&moto, "GET", "data/2/global/pg_control").status, 404);
    assert_eq!(moto_req(&moto, "GET", "orioledb_data/1/1/2.0.0").body, part);
}

/// A replica that first meets the bucket before the primary's first checkpoint (an empty bucket:
/// the entrypoint's probe lists it) holds nothing as of a checkpoint yet, and records no seeding:
/// once the primary has checkpointed, the replica's first read pins the primary's undo files. (It
/// recorded its seeding with nothing pinned, and served a 404 for those keys for good.)
#[test]
fn a_replica_that_met_the_bucket_before_any_checkpoint_is_seeded_after_the_first() {
    let _turn = machine::share();
    let moto = MotoServer::start();
    let proxy = ProxyServer::start(&moto.endpoint, &[]);
    let tmp = tempfile::tempdir().expect("temp dir");
    create_moto_bucket(&moto);
    let replica = start_replica(&tmp.path().join("replica"), &proxy);
    let r = replica.addr;
    assert_eq!(
        list_keys(r),
        Vec::<String>::new(),
        "the empty bucket, through the replica"
    );
    assert_eq!(status_of(r, "GET", UNDO, b"", &[]), 404, "no undo file yet");
    // The primary's first checkpoint.
    put_into_moto(&moto, UNDO, b"primary undo 1");
    put_into_moto(&moto, "data/1/global/pg_control", b"primary pg_control 1");
    put_into_moto(&moto, CONTROL, b"primary control 1");
    get_is(r, UNDO, b"primary undo 1", "pinned after the first checkpoint");
    // Pinned: the primary's next checkpoint does not change the replica's copy.
    put_into_moto(&moto, UNDO, b"primary undo 2");
    put_into_moto(&moto, CONTROL, b"primary control 2");
    get_is(r, UNDO, b"primary undo 1", "the pinned copy");
    assert_eq!(origin_writes(&proxy.control()), Vec::<String>::new());
}

/// Before the primary's first checkpoint a replica pins nothing, so its own write of an undo
/// file stands: every request used to pin the primary's copies again, over the replica's own.
#[test]
fn a_replicas_own_write_before_any_checkpoint_is_not_replaced_by_the_primarys() {
    let _turn = machine::share();
    let moto = MotoServer::start();
    let proxy = ProxyServer::start(&moto.endpoint, &[]);
    let tmp = tempfile::tempdir().expect("temp dir");
    create_moto_bucket(&moto);
    put_into_moto(&moto, UNDO, b"primary undo, no checkpoint yet");
    let replica = start_replica(&tmp.path().join("replica"), &proxy);
    let r = replica.addr;
    assert_eq!(status_of(r, "PUT", UNDO, b"the replica's own", &[]), 200);
    get_is(r, UNDO, b"the replica's own", "the replica's own write");
    get_is(r, UNDO, b"the replica's own", "still the replica's own");
    assert_eq!(origin_writes(&proxy.control()), Vec::<String>::new());
}

/// A PUT and a DELETE of one key at once on a replica leave one of them whole: the object, or
/// the marker that hides the shared bucket's copy. The PUT is held (a test-only pause point)
/// between writing the object and removing the marker, and the DELETE comes meanwhile: it used to
/// write its marker and remove the object, then the PUT removed the marker, and the primary's
/// copy showed again.
#[test]
fn a_put_and_a_delete_of_one_key_at_once_on_a_replica_leave_one_of_them() {
    let _turn = machine::share();
    let moto = MotoServer::start();
    let proxy = ProxyServer::start(&moto.endpoint, &[]);
    let tmp = tempfile::tempdir().expect("temp dir");
    create_moto_bucket(&moto);
    let key = "orioledb_data/1/1/9.0.0";
    put_into_moto(&moto, key, b"the primary's");
    let (mut args, mut env) = crate::support::perch::s3_origin(&proxy.endpoint);
    args.extend(["--role".to_owned(), "replica".to_owned()]);
    env.push(("PERCH_PAUSE_POINT".to_owned(), "replica_put:1500".to_owned()));
    let replica = crate::support::perch::start_with(&tmp.path().join("replica"), args, env);
    let r = replica.addr;
    let put = std::thread::spawn(move || status_of(r, "PUT", key, b"the replica's", &[]));
    let deadline = Instant::now() + Duration::from_secs(10);
    while !replica.log_text().contains("pause point replica_put reached") {
        assert!(Instant::now() < deadline, "the PUT never reached its pause point");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(status_of(r, "DELETE", key, b"", &[]), 204);
    assert_eq!(put.join().expect("the PUT"), 200);
    let got = Req::object("GET", r, Style::Path, &key_path(key)).go(r);
    assert_eq!(got.status, 404, "the DELETE came last: {}", got.summary());
    assert_eq!(origin_writes(&proxy.control()), Vec::<String>::new());
}

/// `/status` of a perch, as JSON.
fn status_json(perch: &PerchServer) -> serde_json::Value {
    let (code, text) = admin_get(perch, "/status");
    assert_eq!(code, 200, "/status: {text}");
    serde_json::from_str(&text).expect("/status is JSON")
}

/// A replica never uploads, so the uploader never sees an outage: `perch status` reports the
/// origin's fault from the replica's own reads while they keep failing, and clears it at the
/// first answer.
#[test]
fn a_replica_reports_an_origin_outage_its_reads_meet() {
    let _turn = machine::share();
    let moto = MotoServer::start();
    let proxy = ProxyServer::start(&moto.endpoint, &[]);
    let tmp = tempfile::tempdir().expect("temp dir");
    create_moto_bucket(&moto);
    put_into_moto(&moto, "orioledb_data/1/1/2.0.0", b"part");
    let replica = start_perch(
        &tmp.path().join("replica"),
        Some(&proxy.endpoint),
        &["--role", "replica", "--origin-retry-deadline", "30s"],
    );
    let st = status_json(&replica);
    assert!(st["origin_fault"].is_null(), "no fault before the outage: {st}");

    proxy.control().faults(r#"{"outage": true}"#);
    // A cold read waits on the origin through the outage, retrying; meanwhile the fault shows.
    let addr = replica.addr;
    let reader =
        std::thread::spawn(move || get_is(addr, "orioledb_data/1/1/2.0.0", b"part", "read through the outage"));
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let st = status_json(&replica);
        if st["origin_fault"].is_string() {
            break;
        }
        assert!(Instant::now() < deadline, "the outage never showed: {st}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = Command::new(perch_binary())
        .args(["status", "--admin", &replica.admin.to_string()])
        .output()
        .expect("perch status runs");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("origin: retrying after:"), "perch status: {text}");

    // The origin answers again: the read is served and the fault is gone.
    proxy.control().faults("{}");
    reader.join().expect("the reader");
    let st = status_json(&replica);
    assert!(st["origin_fault"].is_null(), "the answer ends the fault: {st}");
    assert_eq!(origin_writes(&proxy.control()), Vec::<String>::new());
}

/// `perch wal fetch FILE PATH` in `pgdata`, against `perch`: (exit code, stderr, time taken).
fn wal_fetch(perch: &PerchServer, pgdata: &Path, file: &str) -> (Option<i32>, String, Duration) {
    let started = Instant::now();
    let out = std::process::Command::new(perch_binary())
        .args(["wal", "fetch", file, "pg_wal/RECOVERYXLOG"])
        .current_dir(pgdata)
        .env("PERCH_WAL_ENDPOINT", &perch.endpoint)
        .env("PERCH_WAL_BUCKET", perch_testkit::raw_client::BUCKET)
        .env_remove("PERCH_ACCESS_KEY_ID")
        .env_remove("PERCH_SECRET_ACCESS_KEY")
        .output()
        .expect("run perch wal fetch");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
        started.elapsed(),
    )
}

#[test]
fn wal_fetch_writes_the_newest_segment_and_fails_at_once_when_absent() {
    let _turn = machine::share();
    let moto = MotoServer::start();
    let proxy = ProxyServer::start(&moto.endpoint, &[]);
    let tmp = tempfile::tempdir().expect("temp dir");
    create_moto_bucket(&moto);
    let replica = start_replica(&tmp.path().join("replica"), &proxy);
    let pgdata = tmp.path().join("pgdata");
    std::fs::create_dir_all(pgdata.join("pg_wal")).expect("pg_wal");
    let target = pgdata.join("pg_wal/RECOVERYXLOG");
    let seg = "000000010000000000000003";

    // Absent: exit 1 at once, nothing written.
    for file in [seg, "00000002.history"] {
        let (code, err, took) = wal_fetch(&replica, &pgdata, file);
        assert_eq!(code, Some(1), "{file} absent: {err}");
        assert!(took < Duration::from_secs(5), "{file}: answered in {took:?}");
        assert!(!target.exists(), "{file}: nothing written");
    }
    let (code, err, _) = wal_fetch(&replica, &pgdata, "../escape");
    assert_eq!(code, Some(2), "a path is not a WAL file name: {err}");

    // Present: written whole; then the primary uploads the segment again, grown: the newest.
    let first = pattern(3 << 20, 3);
    put_into_moto(&moto, &format!("wal/{seg}"), &first);
    let (code, err, _) = wal_fetch(&replica, &pgdata, seg);
    assert_eq!(code, Some(0), "{err}");
    assert!(
        std::fs::read(&target).expect("RECOVERYXLOG") == first,
        "the segment's bytes"
    );
    let second = pattern(3 << 20, 4);
    put_into_moto(&moto, &format!("wal/{seg}"), &second);
    let reads_before = proxy.control().count("GET", &format!("wal/{seg}"));
    let (code, err, _) = wal_fetch(&replica, &pgdata, seg);
    assert_eq!(code, Some(0), "{err}");
    assert!(
        std::fs::read(&target).expect("RECOVERYXLOG") == second,
        "the re-uploaded segment, not a cached copy"
    );
    // A key pair Perch does not take: named as this command's, not blamed on Perch's origin keys.
    let out = std::process::Command::new(perch_binary())
        .args(["wal", "fetch", seg, "pg_wal/RECOVERYXLOG"])
        .current_dir(&pgdata)
        .env("PERCH_WAL_ENDPOINT", &replica.endpoint)
        .env("PERCH_WAL_BUCKET", perch_testkit::raw_client::BUCKET)
        .env_remove("PERCH_ACCESS_KEY_ID")
        .env("PERCH_SECRET_ACCESS_KEY", "not-the-secret")
        .output()
        .expect("run perch wal fetch");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("refused this command's signature") && err.contains("PERCH_SECRET_ACCESS_KEY"),
        "a wrong secret is named: {err}"
    );
    assert!(!err.contains("origin keys"), "not blamed on Perch's origin keys: {err}");
    let left: Vec<_> = std::fs::read_dir(pgdata.join("pg_wal"))
        .expect("pg_wal")
        .map(|e| e.expect("entry").file_name())
        .collect();
    assert_eq!(left, ["RECOVERYXLOG"], "no temp file left behind");
    assert_eq!(
        proxy.control().count("GET", &format!("wal/{seg}")),
        reads_before + 1,
        "each fetch reads the bucket"
    );

    // The lag gauge: the upload time of the newest WAL the replica has read.
    let uploaded = perch_metric(&replica, "perch_replica_wal_newest_upload_timestamp_seconds").unwrap_or(0.0);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs_f64();
    assert!(
        (now - uploaded).abs() < 120.0,
        "newest WAL uploaded at {uploaded}, now {now}"
    );
    assert_eq!(
        perch_metric(&replica, "perch_replica_wal_reads_total{result=\"found\"}"),
        Some(2.0)
    );
    assert_eq!(origin_writes(&proxy.control()), Vec::<String>::new());
}

/// One request of a standby's trace (`bench/traces/standby-*.jsonl`).
#[derive(serde::Deserialize)]
struct TraceRequest {
    phase: String,
    method: String,
    /// Empty for a listing, whose parameters are in `query`.
    key: String,
    #[serde(default)]
    query: String,
    if_none_match: Option<String>,
    body_bytes: usize,
    status: u16,
    resp_body_bytes: usize,
}

/// Bodies the replay sends and seeds are cut to this: a replica's answers do not depend on their
/// size, and the recorded WAL segments alone are half a gigabyte.
const REPLAY_BODY_MAX: usize = 256 << 10;

/// Replays a standby's trace against a replica over a bucket that holds what the standby read
/// (WAL segments appear when the trace first finds them, as the primary archived them). Every
/// answer must be the one OrioleDB got and accepted, but for the root control file: 404 until
/// the standby writes its own (the primary's is never served). Nothing but reads may reach the
/// origin. Returns the replica, for more checks, with what keeps it running.
fn replay_standby_trace(
    text: &str,
) -> (
    Vec<TraceRequest>,
    PerchServer,
    MotoServer,
    ProxyServer,
    tempfile::TempDir,
) {
    let trace: Vec<TraceRequest> = text
        .lines()
        .map(|l| serde_json::from_str(l).expect("trace line"))
        .collect();
    let moto = MotoServer::start();
    let proxy = ProxyServer::start(&moto.endpoint, &[]);
    let tmp = tempfile::tempdir().expect("temp dir");
    // The primary's bucket: what the standby reads, its control and undo files, its lock.
    create_moto_bucket(&moto);
    put_into_moto(&moto, CONTROL, &pattern(8192, 7));
    put_into_moto(&moto, UNDO, &pattern(24576, 8));
    put_into_moto(&moto, LOCK, b"primary!");
    let size = |n: usize| n.min(REPLAY_BODY_MAX);
    let mut seeded = std::collections::HashSet::new();
    for (i, t) in trace.iter().enumerate() {
        let read = (t.method == "GET" || t.method == "HEAD") && t.status == 200;
        if read && !t.key.is_empty() && t.key != CONTROL && !t.key.starts_with("wal/") && seeded.insert(&t.key) {
            // A HEAD does not record the size: any will do.
            let len = if t.method == "HEAD" {
                8192
            } else {
                size(t.resp_body_bytes)
            };
            put_into_moto(&moto, &t.key, &pattern(len, i as u64));
        }
    }
    let replica = start_replica(&tmp.path().join("replica"), &proxy);
    let r = replica.addr;
    let mut own_control: Option<usize> = None;
    for (i, t) in trace.iter().enumerate() {
        let what = format!("{} #{i}: {} {}{}", t.phase, t.method, t.key, t.query);
        if t.key.is_empty() {
            let got = Req::bucket(&t.method, r, Style::Virtual, &t.query).go(r);
            assert_eq!(got.status, t.status, "{what}: {}", got.summary());
            continue;
        }
        if t.key.starts_with("wal/") && t.status == 200 && seeded.insert(&t.key) {
            put_into_moto(&moto, &t.key, &pattern(size(t.resp_body_bytes), i as u64));
        }
        let mut req = Req::object(&t.method, r, Style::Virtual, &key_path(&t.key));
        if t.method == "PUT" {
            req = req.body(pattern(size(t.body_bytes), 1000 + i as u64));
        }
        if let Some(v) = &t.if_none_match {
            req = req.header("If-None-Match", v);
        }
        let got = req.go(r);
        let (status, len) = match (t.key == CONTROL, own_control) {
            (true, None) if t.method == "GET" => (404, None),
            (true, Some(len)) if t.method == "GET" => (200, Some(len)),
            _ => (t.status, Some(size(t.resp_body_bytes))),
        };
        assert_eq!(
            got.status,
            status,
            "{what}: OrioleDB accepts only {status}: {}",
            got.summary()
        );
        if t.method == "GET" && status == 200 {
            assert_eq!(Some(got.body.len()), len, "{what}");
        }
        if t.method == "PUT" && t.key == CONTROL {
            own_control = Some(size(t.body_bytes));
        }
    }
    assert_eq!(origin_writes(&proxy.control()), Vec::<String>::new(), "origin writes");
    assert_eq!(moto_req(&moto, "GET", LOCK).body, b"primary!");
    (trace, replica, moto, proxy, tmp)
}

/// The trace `bench/traces/make_standby_shaped.py` derives from the primary's traces: restarts,
/// cold reads, and restartpoints that write control files.
#[test]
fn replica_answers_a_standby_shaped_trace_as_oriole_expects_with_no_origin_write() {
    let _turn = machine::share();
    let (trace, replica, _moto, _proxy, _tmp) =
        replay_standby_trace(include_str!("../../../bench/traces/standby-shaped.jsonl"));
    // The restartpoint's last writes are read back from the overlay.
    let last_control = trace
        .iter()
        .enumerate()
        .rev()
        .find(|(_, t)| t.method == "PUT" && t.key == CONTROL)
        .map(|(i, t)| pattern(t.body_bytes.min(REPLAY_BODY_MAX), 1000 + i as u64))
        .expect("the trace writes the control file");
    assert_eq!(
        get_is(replica.addr, CONTROL, &last_control, "the restartpoint's control file"),
        "OVERLAY"
    );
}

/// What a real OrioleDB standby sent its replica Perch (`bench/traces/standby-real.jsonl`, recorded
/// by bench/replica-lag.sh): seeding by the restore tool, starts and restarts, restartpoints
/// (which write no control file), WAL polling while the primary archives. Recorded before the
/// replica stopped serving the primary's root control file: the restart it records failed on it.
#[test]
fn replica_answers_a_real_standby_trace_as_oriole_expects_with_no_origin_write() {
    let _turn = machine::share();
    let (trace, replica, _moto, _proxy, _tmp) =
        replay_standby_trace(include_str!("../../../bench/traces/standby-real.jsonl"));
    assert!(
        trace.iter().any(|t| t.phase.starts_with("standby-restart")),
        "the trace holds a restart"
    );
    // A restart after restartpoints reads the root control file: the replica has none of its own.
    assert_eq!(status_of(replica.addr, "GET", CONTROL, b"", &[]), 404);
}

/// Reads by part number on a replica: of an object the primary uploaded in parts (its layout
/// learnt from the shared bucket), and of one the replica completed in its own overlay (its
/// layout kept there).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_reads_objects_by_part_number() {
    let _turn = machine::share();
    let moto = MotoServer::start();
    let tmp = tempfile::tempdir().expect("temp dir");
    let shared = [pattern(5 << 20, 21), pattern(321, 22)];
    let own = [pattern(5 << 20, 23), pattern(5 << 20, 24), pattern(99, 25)];

    let primary = start_perch(&tmp.path().join("primary"), Some(&moto.endpoint), &[]);
    let p = perch_client(&primary);
    create_bucket(&p, "rep").await;
    upload_in_parts(&p, "rep", "shared", &[&shared[0], &shared[1]]).await;
    let status = primary.terminate(Duration::from_secs(30));
    assert!(status.success(), "primary exited with {status}");

    let replica = start_perch(
        &tmp.path().join("replica"),
        Some(&moto.endpoint),
        &["--role", "replica"],
    );
    let r = perch_client(&replica);
    upload_in_parts(&r, "rep", "own", &[&own[0], &own[1], &own[2]]).await;
    // A completion announcing another size is refused before the overlay holds anything, and
    // its upload stays.
    let id = ok(
        r.create_multipart_upload().bucket("rep").key("sized").send().await,
        "create sized",
    )
    .upload_id()
    .expect("upload id")
    .to_owned();
    let part = ok(
        r.upload_part()
            .bucket("rep")
            .key("sized")
            .upload_id(&id)
            .part_number(1)
            .body(ByteStream::from_static(b"ten bytes!"))
            .send()
            .await,
        "sized: part 1",
    );
    let complete = |size: i64| {
        r.complete_multipart_upload()
            .bucket("rep")
            .key("sized")
            .upload_id(&id)
            .mpu_object_size(size)
            .multipart_upload(
                CompletedMultipartUpload::builder()
                    .parts(
                        CompletedPart::builder()
                            .part_number(1)
                            .set_e_tag(part.e_tag.clone())
                            .build(),
                    )
                    .build(),
            )
            .send()
    };
    expect_err(complete(11).await, 400, Some("InvalidRequest"));
    expect_err(r.head_object().bucket("rep").key("sized").send().await, 404, None);
    ok(complete(10).await, "sized: complete");
    assert_eq!(get_bytes(&r, "rep", "sized").await, b"ten bytes!");
    for (key, parts) in [("shared", &shared[..]), ("own", &own[..])] {
        let size: usize = parts.iter().map(Vec::len).sum();
        let mut first = 0;
        for (i, part) in parts.iter().enumerate() {
            let n = i as i32 + 1;
            let got = ok(
                r.get_object().bucket("rep").key(key).part_number(n).send().await,
                &format!("{key} part {n}"),
            );
            let span = format!("bytes {first}-{}/{size}", first + part.len() - 1);
            assert_eq!(got.content_range(), Some(span.as_str()), "{key} part {n}");
            assert_eq!(got.parts_count(), Some(parts.len() as i32), "{key} part {n}");
            assert!(bytes_of(got.body).await == *part, "{key} part {n}'s bytes");
            first += part.len();
        }
    }
    // The replica's own objects never reached the shared bucket.
    assert_eq!(all_keys(&moto_client(&moto), "rep", None).await, ["shared"]);
}
