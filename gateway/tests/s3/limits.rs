//! What one client can hold, over raw sockets: a header sent too slowly, an idle kept-alive
//! connection, a body that stalls or trickles, an answer the client stops reading, bodies and
//! headers over their size, and connections and requests over their counts. Each is cut or made
//! to wait, and leaves nothing behind (no spooled body, no object, no staged part); OrioleDB's
//! own traffic never meets the defaults.

use std::io::{BufReader, ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use perch_testkit::bodies::pattern;
use perch_testkit::raw_client::{BUCKET, Req, Resp, Style, read_body, read_head, xml_values};

use crate::support::machine;
use crate::support::perch::{Perch, wait_until};
use crate::support::raw::{assert_error, create_bucket};

/// A perch with `args`, the bucket and one known object.
fn setup(args: &[&str]) -> Perch {
    let perch = Perch::dir(args);
    create_bucket(perch.addr());
    let r = Req::object("PUT", perch.addr(), Style::Path, "known")
        .body(pattern(100, 1))
        .go(perch.addr());
    assert_eq!(r.status, 200, "{}", r.summary());
    perch
}

/// Nothing spooled is left, `key` was not stored, and perch still serves.
#[track_caller]
fn assert_nothing_left(perch: &Perch, key: &str, what: &str) {
    let mut left = Vec::new();
    let clean = wait_until(Duration::from_secs(5), || {
        left = perch.spool_entries();
        left.is_empty()
    });
    assert!(clean, "{what}: spooled bodies left in <data-dir>/tmp: {left:?}");
    let r = Req::object("GET", perch.addr(), Style::Path, key).go(perch.addr());
    assert_error(&r, 404, "NoSuchKey", &format!("{what}: GET {key} afterwards"));
    let r = Req::object("GET", perch.addr(), Style::Path, "known").go(perch.addr());
    assert_eq!(r.status, 200, "{what}: perch no longer serves: {}", r.summary());
}

fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect");
    s.set_nodelay(true).expect("nodelay");
    s
}

/// Reads until the peer closes the connection (EOF or reset) or `limit` passes; returns the
/// bytes read and whether it closed.
fn read_until_closed(s: &mut TcpStream, limit: Duration) -> (usize, bool) {
    let start = Instant::now();
    let mut buf = vec![0u8; 1 << 16];
    let mut total = 0;
    while start.elapsed() < limit {
        s.set_read_timeout(Some(Duration::from_millis(100))).expect("timeout");
        match s.read(&mut buf) {
            Ok(0) => return (total, true),
            Ok(n) => total += n,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => return (total, true),
        }
    }
    (total, false)
}

/// One answer read from a connection that stays open (keep-alive).
fn read_answer(reader: &mut BufReader<TcpStream>, method: &str) -> Resp {
    let (status, headers) = read_head(reader).expect("an answer");
    let body = read_body(reader, method, status, &headers).expect("its body");
    Resp {
        status,
        headers,
        body,
        got_continue: false,
    }
}

/// Whether an answer starts on `s` within `wait`.
fn answered_within(s: &TcpStream, wait: Duration) -> bool {
    s.set_read_timeout(Some(wait)).expect("timeout");
    let mut byte = [0u8; 1];
    let answered = matches!(s.peek(&mut byte), Ok(n) if n > 0);
    s.set_read_timeout(Some(Duration::from_secs(30))).expect("timeout");
    answered
}

#[test]
fn a_slow_header_is_cut_and_an_idle_connection_is_closed_on_its_own_clock() {
    let _turn = machine::alone();
    let perch = setup(&["--header-timeout", "1s", "--idle-timeout", "3s"]);
    let _log = perch.log_on_panic();
    let addr = perch.addr();

    // Slowloris: a header line every 200 ms never completes the header; cut after about 1 s.
    let mut s = connect(addr);
    let start = Instant::now();
    s.write_all(format!("PUT /{}/slow HTTP/1.1\r\nHost: 127.0.0.1:{}\r\n", BUCKET, addr.port()).as_bytes())
        .expect("start line");
    let mut closed = false;
    for i in 0..25 {
        if s.write_all(format!("x-slow-{i}: x\r\n").as_bytes()).is_err() {
            closed = true;
            break;
        }
        let (_, gone) = read_until_closed(&mut s, Duration::from_millis(200));
        if gone {
            closed = true;
            break;
        }
    }
    let took = start.elapsed();
    assert!(closed, "a header trickling for 5 s was not cut");
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_millis(2500),
        "cut after {took:?}"
    );

    // A connection that opens and sends nothing is cut by the same bound.
    let mut s = connect(addr);
    let start = Instant::now();
    let (_, closed) = read_until_closed(&mut s, Duration::from_secs(5));
    assert!(closed, "a silent new connection was kept for 5 s");
    assert!(start.elapsed() < Duration::from_millis(2500), "{:?}", start.elapsed());

    // Kept alive: idle for 2 s (past the header timeout, within the idle one) it still serves
    // the next request; idle for 3 s after that, it is closed.
    let s = connect(addr);
    let mut writer = s.try_clone().expect("clone");
    let mut reader = BufReader::new(s);
    let get = Req::object("GET", addr, Style::Path, "known");
    writer.write_all(&get.head().0).expect("first GET");
    let r = read_answer(&mut reader, "GET");
    assert_eq!((r.status, r.body.clone()), (200, pattern(100, 1)), "{}", r.summary());
    std::thread::sleep(Duration::from_secs(2));
    let get = Req::object("GET", addr, Style::Path, "known");
    writer.write_all(&get.head().0).expect("second GET after 2 s idle");
    let r = read_answer(&mut reader, "GET");
    assert_eq!(r.status, 200, "a request after 2 s idle: {}", r.summary());
    let idle_from = Instant::now();
    let mut s = reader.into_inner();
    let (_, closed) = read_until_closed(&mut s, Duration::from_secs(8));
    let idle = idle_from.elapsed();
    assert!(closed, "an idle kept-alive connection was kept for 8 s");
    assert!(
        idle >= Duration::from_millis(2700) && idle < Duration::from_millis(5000),
        "closed after {idle:?} idle"
    );
}

/// Sends `req`'s head and the first `sent` bytes of its body, then keeps the connection open.
fn start_body(addr: SocketAddr, req: &Req, sent: usize) -> TcpStream {
    let mut s = connect(addr);
    s.write_all(&req.head().0).expect("head");
    s.write_all(&req.body[..sent]).expect("part of the body");
    s
}

/// The answer on `s`, however the request ended.
fn answer(s: TcpStream, method: &str) -> Resp {
    s.set_read_timeout(Some(Duration::from_secs(30))).expect("timeout");
    read_answer(&mut BufReader::new(s), method)
}

#[test]
fn a_body_that_stalls_or_trickles_is_cut_and_leaves_nothing() {
    let _turn = machine::alone();
    let perch = setup(&["--body-timeout", "1s", "--body-rate-min", "64KiB"]);
    let _log = perch.log_on_panic();
    let addr = perch.addr();

    // 1 MiB of a 4 MiB body, then nothing: 400 RequestTimeout about 1 s later.
    let mut put = Req::object("PUT", addr, Style::Path, "stalled").body(pattern(4 << 20, 2));
    put.expect = Some(false);
    let start = Instant::now();
    let s = start_body(addr, &put, 1 << 20);
    let r = answer(s, "PUT");
    assert_error(&r, 400, "RequestTimeout", "a body stalled after 1 MiB");
    assert!(start.elapsed() < Duration::from_secs(5), "{:?}", start.elapsed());
    assert_nothing_left(&perch, "stalled", "stalled body");

    // 1 KiB every 200 ms never stalls for 1 s, but is 5 KiB/s: under 64 KiB/s it is cut once
    // behind, at about 1 s + received / 64 KiB/s.
    let mut put = Req::object("PUT", addr, Style::Path, "trickled").body(pattern(1 << 20, 3));
    put.expect = Some(false);
    let start = Instant::now();
    let mut s = start_body(addr, &put, 0);
    let mut sent = 0;
    while sent < put.body.len() && !answered_within(&s, Duration::from_millis(200)) {
        if s.write_all(&put.body[sent..sent + 1024]).is_err() {
            break;
        }
        sent += 1024;
    }
    let r = answer(s, "PUT");
    assert_error(&r, 400, "RequestTimeout", "a body trickling at 5 KiB/s");
    assert!(start.elapsed() < Duration::from_secs(4), "{:?}", start.elapsed());
    assert!(sent < 64 << 10, "cut only after {sent} bytes");
    assert_nothing_left(&perch, "trickled", "trickled body");

    // A part that stalls is not staged.
    let r = Req::object("POST", addr, Style::Path, "parts")
        .query("uploads")
        .go(addr);
    assert_eq!(r.status, 200, "{}", r.summary());
    let upload_id = xml_values(&r.text(), "UploadId").remove(0);
    let mut part = Req::object("PUT", addr, Style::Path, "parts")
        .query(&format!("partNumber=1&uploadId={upload_id}"))
        .body(pattern(6 << 20, 4));
    part.expect = Some(false);
    let s = start_body(addr, &part, 1 << 20);
    let r = answer(s, "PUT");
    assert_error(&r, 400, "RequestTimeout", "a part stalled after 1 MiB");
    let r = Req::object("GET", addr, Style::Path, "parts")
        .query(&format!("uploadId={upload_id}"))
        .go(addr);
    assert_eq!(r.status, 200, "ListParts: {}", r.summary());
    assert!(
        xml_values(&r.text(), "Part").is_empty(),
        "a stalled part was staged: {}",
        r.text()
    );
    assert_nothing_left(&perch, "parts", "stalled part");

    // The same body sent at once is fine.
    let r = Req::object("PUT", addr, Style::Path, "prompt")
        .body(pattern(4 << 20, 2))
        .go(addr);
    assert_eq!(r.status, 200, "{}", r.summary());
}

#[test]
fn an_answer_the_client_stops_reading_is_cut() {
    let _turn = machine::share();
    let perch = setup(&["--body-timeout", "1s"]);
    let _log = perch.log_on_panic();
    let addr = perch.addr();
    let len = 48 << 20;
    let r = Req::object("PUT", addr, Style::Path, "big")
        .body(pattern(len, 5))
        .go(addr);
    assert_eq!(r.status, 200, "{}", r.summary());

    // Reads nothing for 4 s: the kernel's buffers hold a few MiB, then Perch's writes block,
    // and it gives up on the answer after 1 s of that.
    let mut s = connect(addr);
    s.write_all(&Req::object("GET", addr, Style::Path, "big").head().0)
        .expect("GET");
    std::thread::sleep(Duration::from_secs(4));
    let (got, closed) = read_until_closed(&mut s, Duration::from_secs(20));
    assert!(closed, "the connection stayed open");
    assert!(
        got < len,
        "the whole answer ({got} bytes) was sent to a client that stopped reading"
    );

    // A client that reads gets it all.
    let r = Req::object("GET", addr, Style::Path, "big").go(addr);
    assert_eq!(r.status, 200);
    assert!(r.body == pattern(len, 5), "the object read back differs");
}

#[test]
fn bodies_over_their_bound_are_refused_before_they_are_read() {
    let _turn = machine::share();
    let perch = setup(&[]);
    let _log = perch.log_on_panic();
    let addr = perch.addr();
    // S3's own bound, the default: 5 GiB + 1 byte declared, with Expect: 100-continue.
    let over = (5u64 << 30) + 1;
    for (what, header) in [
        ("Content-Length", "Content-Length"),
        ("aws-chunked", "x-amz-decoded-content-length"),
    ] {
        let mut put = Req::object("PUT", addr, Style::Path, "huge").body(pattern(10, 6));
        put.expect = Some(true);
        if header == "Content-Length" {
            put.content_length = Some(over);
        } else {
            put = put
                .header("x-amz-decoded-content-length", &over.to_string())
                .header("Content-Encoding", "aws-chunked");
            put.content_sha256 = Some("STREAMING-UNSIGNED-PAYLOAD-TRAILER".to_owned());
        }
        let r = put.go(addr);
        assert_error(&r, 400, "EntityTooLarge", &format!("{what} of 5 GiB + 1"));
        assert!(!r.got_continue, "{what}: asked for the body of a PUT it refuses");
        assert_eq!(r.header("Connection"), Some("close"), "{}", r.summary());
        let max = xml_values(&r.text(), "MaxSizeAllowed");
        assert_eq!(max, vec![(5u64 << 30).to_string()], "{}", r.text());
    }
    // Exactly 5 GiB is allowed: Perch asks for the body (which this test does not send).
    let mut put = Req::object("PUT", addr, Style::Path, "huge").body(pattern(10, 6));
    put.expect = Some(true);
    put.content_length = Some(5 << 30);
    let mut s = connect(addr);
    s.write_all(&put.head().0).expect("head");
    let mut reader = BufReader::new(s.try_clone().expect("clone"));
    let (status, _) = read_head(&mut reader).expect("an answer");
    assert_eq!(status, 100, "a 5 GiB PUT is not refused from its length");
    drop((s, reader));
    assert_nothing_left(&perch, "huge", "5 GiB declared");
}

#[test]
fn a_lower_body_bound_is_refused_early_and_cut_when_a_body_grows_past_it() {
    let _turn = machine::share();
    let perch = setup(&["--body-bytes-max", "1MiB"]);
    let _log = perch.log_on_panic();
    let addr = perch.addr();
    let r = Req::object("PUT", addr, Style::Path, "at-bound")
        .body(pattern(1 << 20, 7))
        .go(addr);
    assert_eq!(r.status, 200, "1 MiB under a 1 MiB bound: {}", r.summary());
    let r = Req::object("PUT", addr, Style::Path, "over")
        .body(pattern((1 << 20) + 1, 7))
        .go(addr);
    assert_error(&r, 400, "EntityTooLarge", "1 MiB + 1");
    assert!(!r.got_continue);
    // A part too.
    let r = Req::object("POST", addr, Style::Path, "over").query("uploads").go(addr);
    let upload_id = xml_values(&r.text(), "UploadId").remove(0);
    let r = Req::object("PUT", addr, Style::Path, "over")
        .query(&format!("partNumber=1&uploadId={upload_id}"))
        .body(pattern(2 << 20, 8))
        .go(addr);
    assert_error(&r, 400, "EntityTooLarge", "a 2 MiB part");
    // A decoded length (signed) on a body that is not aws-chunked is not its length: s3s and the
    // spool read the Content-Length. It let a body over the bound in, to be acknowledged, and
    // refused by the origin for ever past S3's 5 GiB.
    let r = Req::object("PUT", addr, Style::Path, "over")
        .body(pattern(2 << 20, 8))
        .header("x-amz-decoded-content-length", "10")
        .go(addr);
    assert_error(
        &r,
        400,
        "EntityTooLarge",
        "a 2 MiB PUT declaring a decoded length of 10",
    );

    // A body never grows past its bound: a chunked body without a declared length is refused
    // with EntityTooLarge once it passes the bound, while it is received, and nothing is kept.
    let mut put = Req::object("PUT", addr, Style::Path, "over").body(pattern(1000, 9));
    put.content_length = Some(0);
    put.content_sha256 = Some("UNSIGNED-PAYLOAD".to_owned());
    let (head, _) = put.head();
    let head = String::from_utf8(head)
        .expect("ascii")
        .replace("Content-Length: 0\r\n", "Transfer-Encoding: chunked\r\n");
    let mut s = connect(addr);
    s.write_all(head.as_bytes()).expect("head");
    // One byte over the bound, then the last chunk: Perch has read it all when it refuses.
    let body = pattern((1 << 20) + 1, 9);
    let mut framed = Vec::new();
    for chunk in body.chunks(64 << 10) {
        framed.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
        framed.extend_from_slice(chunk);
        framed.extend_from_slice(b"\r\n");
    }
    framed.extend_from_slice(b"0\r\n\r\n");
    s.write_all(&framed).expect("chunked body");
    let r = answer(s, "PUT");
    assert_error(
        &r,
        400,
        "EntityTooLarge",
        "a chunked body without a length growing past the bound",
    );
    // aws-chunked declaring 100 decoded bytes, carrying 200 (unsigned chunks, a CRC32 trailer).
    let data = pattern(200, 11);
    let crc = base64_simd::STANDARD.encode_to_string(crc32fast::hash(&data).to_be_bytes());
    let mut body = b"c8\r\n".to_vec();
    body.extend_from_slice(&data);
    body.extend_from_slice(format!("\r\n0\r\nx-amz-checksum-crc32:{crc}\r\n\r\n").as_bytes());
    let mut put = Req::object("PUT", addr, Style::Path, "over")
        .body(body)
        .header("Content-Encoding", "aws-chunked")
        .header("x-amz-decoded-content-length", "100")
        .header("x-amz-trailer", "x-amz-checksum-crc32");
    put.content_sha256 = Some("STREAMING-UNSIGNED-PAYLOAD-TRAILER".to_owned());
    let r = put.go(addr);
    assert_error(&r, 400, "IncompleteBody", "an aws-chunked body longer than it declares");
    assert_nothing_left(&perch, "over", "bodies over the bound");
}

#[test]
fn a_header_over_its_bound_is_refused() {
    let _turn = machine::share();
    let perch = setup(&["--header-bytes-max", "4KiB"]);
    let _log = perch.log_on_panic();
    let addr = perch.addr();
    let r = Req::object("GET", addr, Style::Path, "known")
        .header("x-filler", &"f".repeat(3 << 10))
        .go(addr);
    assert_eq!(r.status, 200, "a 3 KiB header under 4 KiB: {}", r.summary());
    let r = Req::object("GET", addr, Style::Path, "known")
        .header("x-filler", &"f".repeat(5 << 10))
        .go(addr);
    assert_eq!(r.status, 431, "a 5 KiB header over 4 KiB: {}", r.summary());
}

#[test]
fn requests_and_connections_over_their_counts_wait_their_turn() {
    let _turn = machine::alone();
    let perch = setup(&["--connections-max", "3", "--requests-max", "2"]);
    let _log = perch.log_on_panic();
    let addr = perch.addr();
    let held = |key: &str| {
        let mut put = Req::object("PUT", addr, Style::Path, key).body(pattern(1000, 10));
        put.expect = Some(false);
        let s = start_body(addr, &put, 10);
        (put, s)
    };
    // Two PUTs whose bodies are half sent hold both request slots.
    let (a_req, mut a) = held("a");
    let (_b_req, b) = held("b");
    std::thread::sleep(Duration::from_millis(300));
    // A third request (a third connection, within the 3 allowed) waits for a slot.
    let mut c = connect(addr);
    c.write_all(&Req::object("GET", addr, Style::Path, "known").head().0)
        .expect("GET");
    assert!(
        !answered_within(&c, Duration::from_secs(1)),
        "a third request was served with 2 in flight"
    );
    // A finished PUT frees its slot: the GET is served.
    a.write_all(&a_req.body[10..]).expect("rest of a");
    let r = answer(a, "PUT");
    assert_eq!(r.status, 200, "{}", r.summary());
    assert!(
        answered_within(&c, Duration::from_secs(5)),
        "the waiting request was not served"
    );
    let r = read_answer(&mut BufReader::new(c.try_clone().expect("clone")), "GET");
    assert_eq!(r.status, 200, "{}", r.summary());
    drop(c);

    // Connections: b and two silent ones make 3; a fourth waits in the listen queue until one
    // of them goes.
    std::thread::sleep(Duration::from_millis(300));
    let d = connect(addr);
    let _e = connect(addr);
    std::thread::sleep(Duration::from_millis(300));
    let mut f = connect(addr);
    f.write_all(&Req::object("GET", addr, Style::Path, "known").head().0)
        .expect("GET");
    assert!(
        !answered_within(&f, Duration::from_secs(1)),
        "a fourth connection was served with 3 open"
    );
    drop(d);
    assert!(
        answered_within(&f, Duration::from_secs(5)),
        "the waiting connection was not served"
    );
    let r = read_answer(&mut BufReader::new(f), "GET");
    assert_eq!(r.status, 200, "{}", r.summary());
    drop(b);
}

#[test]
fn oriole_traffic_never_meets_the_default_limits() {
    let _turn = machine::share();
    let perch = setup(&[]);
    let _log = perch.log_on_panic();
    let addr = perch.addr();
    // 21 requests in flight, each on a new connection, 1 MiB bodies and one of 64 MiB, all with
    // Expect: 100-continue, twice over.
    let threads: Vec<_> = (0..21)
        .map(|i| {
            std::thread::spawn(move || {
                let len = if i == 0 { 64 << 20 } else { (1 << 20) + 1 };
                for round in 0..2 {
                    let key = format!("orioledb_data/1/{i}-{round}");
                    let r = Req::object("PUT", addr, Style::Virtual, &key)
                        .body(pattern(len, i))
                        .go(addr);
                    assert_eq!(r.status, 200, "{key}: {}", r.summary());
                    assert!(r.got_continue, "{key}: no 100 Continue");
                    let r = Req::object("GET", addr, Style::Virtual, &key).go(addr);
                    assert_eq!(r.status, 200, "{key}: {}", r.summary());
                    assert!(r.body == pattern(len, i), "{key}: read back differs");
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("a client thread failed");
    }
}

/// A client that writes its whole body without waiting (no `Expect: 100-continue`, or one it does
/// not wait on, as the JS SDK with its own agent) and Perch refuses the request before reading
/// it: the close lingers, reading what the client still sends, so that the client's write ends
/// without a reset and it reads the refusal instead of failing with EPIPE or ECONNRESET.
#[test]
fn a_body_sent_after_an_early_refusal_does_not_lose_the_refusal() {
    let _turn = machine::share();
    let perch = setup(&[]);
    let _log = perch.log_on_panic();
    let addr = perch.addr();
    let body = pattern(8 << 20, 9);
    let wrong = perch_testkit::sigv4::Keys::new(perch_testkit::servers::DEV_ACCESS_KEY_ID, "not-the-secret");
    let cases = [
        (
            "a wrong secret, no Expect",
            Req::object("PUT", addr, Style::Path, "refused")
                .body(body.clone())
                .keys(Some(wrong)),
            false,
            403,
            "SignatureDoesNotMatch",
        ),
        (
            "a key Perch keeps for itself, Expect not waited on",
            Req::object("PUT", addr, Style::Path, ".perch/refused").body(body.clone()),
            true,
            403,
            "AccessDenied",
        ),
    ];
    for (what, mut req, expect, status, code) in cases {
        req.expect = Some(expect);
        for round in 0..5 {
            let s = connect(addr);
            s.set_write_timeout(Some(Duration::from_secs(30))).expect("timeout");
            let mut writer = s.try_clone().expect("clone");
            let (head, body) = (req.head().0, req.body.clone());
            // The head and the body at once, as a client that does not wait for an answer.
            let sent = std::thread::spawn(move || {
                writer.write_all(&head)?;
                writer.write_all(&body)
            });
            s.set_read_timeout(Some(Duration::from_secs(30))).expect("timeout");
            let mut reader = BufReader::new(s);
            let answer = read_head(&mut reader).and_then(|(status, headers)| {
                let body = read_body(&mut reader, "PUT", status, &headers)?;
                Ok(Resp {
                    status,
                    headers,
                    body,
                    got_continue: false,
                })
            });
            let sent = sent.join().expect("the writer");
            let r = answer.unwrap_or_else(|e| panic!("{what}, round {round}: the answer was lost: {e}"));
            assert_error(&r, status, code, &format!("{what}, round {round}"));
            assert_eq!(r.header("Connection"), Some("close"), "{what}: {}", r.summary());
            if let Err(e) = sent {
                panic!("{what}, round {round}: the body's write failed: {e}");
            }
        }
    }
    assert_nothing_left(&perch, "refused", "refused early");
}
