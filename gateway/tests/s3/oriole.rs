//! OrioleDB's request sequences, from the OrioleDB-shaped client, against both origins.
//!
//! The client is OrioleDB's, byte for byte as the traces in /work/shared/oriole show it: a new TCP
//! connection per request, virtual-hosted `Host: orioledb.localhost:PORT`, SigV4 over
//! `host;x-amz-content-sha256;x-amz-date` with the real body SHA-256, no User-Agent,
//! `Content-Type: application/octet-stream` on PUT, `Expect: 100-continue` on bodies over 1 MiB.

use std::net::SocketAddr;

use perch_testkit::bodies::{md5_etag, pattern};
use perch_testkit::raw_client::{EXPECT_THRESHOLD, Req, Style, key_path};
use perch_testkit::servers::MotoServer;

use crate::support::machine;
use crate::support::perch::Perch;
use crate::support::raw::{assert_error, create_bucket, list_keys};

/// PUT as OrioleDB does; asserts S3's exact answer: 200, empty body, ETag = quoted MD5.
#[track_caller]
fn put_ok(addr: SocketAddr, style: Style, key: &str, body: &[u8], extra: &[(&str, &str)], what: &str) {
    let mut req = Req::object("PUT", addr, style, &key_path(key)).body(body.to_vec());
    for (n, v) in extra {
        req = req.header(n, v);
    }
    let r = req.send(addr).unwrap_or_else(|e| panic!("{what}: PUT {key}: {e}"));
    assert_eq!(r.status, 200, "{what}: PUT {key}: {}", r.summary());
    assert!(
        r.body.is_empty(),
        "{what}: PUT {key} answered with a body: {}",
        r.summary()
    );
    assert_eq!(
        r.header("ETag"),
        Some(md5_etag(body).as_str()),
        "{what}: PUT {key}: ETag must be the quoted MD5 of the body: {}",
        r.summary()
    );
    if body.len() > EXPECT_THRESHOLD {
        assert!(
            r.got_continue,
            "{what}: PUT {key} with Expect: 100-continue: the body was sent only after 100 Continue"
        );
    }
}

#[track_caller]
fn get_ok(addr: SocketAddr, style: Style, key: &str, body: &[u8], what: &str) {
    let r = Req::object("GET", addr, style, &key_path(key)).go(addr);
    assert_eq!(r.status, 200, "{what}: GET {key}: HTTP {}: {}", r.status, r.text());
    assert_eq!(r.body.len(), body.len(), "{what}: GET {key}: length");
    assert!(r.body == body, "{what}: GET {key}: the bytes differ from those PUT");
    assert_eq!(
        r.header("ETag"),
        Some(md5_etag(body).as_str()),
        "{what}: GET {key}: ETag"
    );
}

#[track_caller]
fn delete_204(addr: SocketAddr, style: Style, key: &str, what: &str) {
    let r = Req::object("DELETE", addr, style, &key_path(key)).go(addr);
    assert_eq!(r.status, 204, "{what}: DELETE {key}: {}", r.summary());
    assert!(r.body.is_empty(), "{what}: DELETE {key}: {}", r.summary());
}

#[track_caller]
fn get_404(addr: SocketAddr, style: Style, key: &str, what: &str) {
    let r = Req::object("GET", addr, style, &key_path(key)).go(addr);
    assert_error(&r, 404, "NoSuchKey", &format!("{what}: GET {key} after DELETE"));
    assert!(
        r.text().contains("<Error>"),
        "{what}: a 404 carries an S3 XML error: {}",
        r.summary()
    );
}

/// The sequence of one OrioleDB run: WAL/data PUT (2 MiB, Expect), read back, delete; the lock
/// taken with `If-None-Match: *`, refused while held, released and taken again; "directory"
/// keys PUT twice beside keys under them.
fn oriole_sequence(perch: &Perch, style: Style, prefix: &str) {
    let addr = perch.addr();
    let what = format!("{style:?}-hosted");
    let what = what.as_str();

    // A 2 MiB part/WAL-like PUT with Expect: 100-continue.
    let key = format!("{prefix}wal/000000010000000000000001");
    let body = pattern(2 << 20, 1);
    put_ok(addr, style, &key, &body, &[], what);
    get_ok(addr, style, &key, &body, what);
    delete_204(addr, style, &key, what);
    get_404(addr, style, &key, what);

    // A 1 MiB part: no Expect (exactly at the threshold), as OrioleDB sends data parts.
    let part = format!("{prefix}data/1/orioledb_data/16384/1-1.map");
    let part_body = pattern(1 << 20, 2);
    put_ok(addr, style, &part, &part_body, &[], what);
    get_ok(addr, style, &part, &part_body, what);

    // The lock.
    let lock = format!("{prefix}data/orioledb_data/s3_lock");
    let holder = b"1234567\n".to_vec();
    put_ok(addr, style, &lock, &holder, &[("If-None-Match", "*")], what);
    let r = Req::object("PUT", addr, style, &key_path(&lock))
        .body(b"7654321\n".to_vec())
        .header("If-None-Match", "*")
        .go(addr);
    assert_error(&r, 412, "PreconditionFailed", &format!("{what}: second lock PUT"));
    get_ok(
        addr,
        style,
        &lock,
        &holder,
        &format!("{what}: the refused lock PUT changed nothing"),
    );
    delete_204(addr, style, &lock, what);
    let holder2 = b"2345678\n".to_vec();
    put_ok(addr, style, &lock, &holder2, &[("If-None-Match", "*")], what);
    get_ok(addr, style, &lock, &holder2, what);

    // A zero-byte "directory" key, PUT twice, beside a key under it (either order).
    let dir = format!("{prefix}data/1/pg_tblspc/");
    let under = format!("{prefix}data/1/pg_tblspc/16384/PG_17/file");
    let under_body = pattern(3000, 3);
    put_ok(addr, style, &dir, b"", &[], what);
    put_ok(addr, style, &under, &under_body, &[], what);
    put_ok(addr, style, &dir, b"", &[], what);
    get_ok(addr, style, &dir, b"", what);
    get_ok(addr, style, &under, &under_body, what);
    let dir2 = format!("{prefix}data/1/global/");
    let under2 = format!("{prefix}data/1/global/pg_control");
    put_ok(addr, style, &under2, b"control", &[], what);
    put_ok(addr, style, &dir2, b"", &[], what);
    put_ok(addr, style, &dir2, b"", &[], what);
    get_ok(addr, style, &dir2, b"", what);
    get_ok(addr, style, &under2, b"control", what);

    // A prefix with keys under it but no marker object is not an object.
    for prefix_only in [format!("{prefix}data/1/"), format!("{prefix}data/1")] {
        let r = Req::object("GET", addr, style, &key_path(&prefix_only)).go(addr);
        assert_error(
            &r,
            404,
            "NoSuchKey",
            &format!("{what}: GET of the bare prefix {prefix_only}"),
        );
    }

    let keys = list_keys(addr);
    for k in [&part, &lock, &dir, &under, &dir2, &under2] {
        assert!(keys.contains(k), "{what}: the listing lacks {k}: {keys:?}");
    }
    assert!(
        !keys.contains(&key),
        "{what}: the deleted {key} is still listed: {keys:?}"
    );
}

fn run_all(perch: &Perch) {
    create_bucket(perch.addr());
    oriole_sequence(perch, Style::Virtual, "");
    // The same with path-style addressing (`Host: 127.0.0.1:PORT`, `/orioledb/key`), on other keys.
    oriole_sequence(perch, Style::Path, "path-style/");
    // Virtual-hosted and path style name the same objects.
    let addr = perch.addr();
    let body = pattern(5000, 9);
    put_ok(addr, Style::Virtual, "both/k", &body, &[], "virtual PUT, path GET");
    get_ok(addr, Style::Path, "both/k", &body, "virtual PUT, path GET");
    delete_204(addr, Style::Path, "both/k", "path DELETE, virtual GET");
    get_404(addr, Style::Virtual, "both/k", "path DELETE, virtual GET");
}

#[test]
fn oriole_client_against_directory_origin() {
    let _turn = machine::share();
    let perch = Perch::dir(&[]);
    let _log = perch.log_on_panic();
    run_all(&perch);
}

#[test]
fn oriole_client_against_moto_origin() {
    let _turn = machine::share();
    let moto = MotoServer::start();
    let perch = Perch::s3(&moto.endpoint, &[]);
    let _log = perch.log_on_panic();
    run_all(&perch);
}
