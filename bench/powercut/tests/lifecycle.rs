//! The daemon's life: killed itself, a busy mountpoint, a bad request.

mod common;

use common::{Harness, read, write};

#[test]
fn a_killed_daemon_is_cleaned_up_by_the_next_mount() {
    require_fuse!();
    let h = Harness::new();
    let d = h.mount();
    write(&h.p("f"), b"volatile", false);
    d.kill();
    // The mount is stale now.
    let mut result = std::fs::read_dir(&h.mnt).map(drop);
    for _ in 0..200 {
        if result.is_err() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
        result = std::fs::read_dir(&h.mnt).map(drop);
    }
    let err = result.unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::ENOTCONN), "{err}");
    let d = h.mount();
    assert!(
        h.daemon_log().contains("unmounting its mount lazily"),
        "{}",
        h.daemon_log()
    );
    // No cut happened: everything the backing directory holds counts as durable.
    assert_eq!(read(&h.p("f")).as_deref(), Some(&b"volatile"[..]));
    let (d, _) = h.cut_and_remount(d, 0, None);
    assert_eq!(read(&h.p("f")).as_deref(), Some(&b"volatile"[..]));
    h.shutdown(d);
}

#[test]
fn a_busy_mountpoint_or_control_socket_is_refused() {
    require_fuse!();
    let h = Harness::new();
    let d = h.mount();
    let err = match h.try_mount() {
        Ok(_) => panic!("a second daemon mounted over a live one"),
        Err(e) => e,
    };
    assert!(
        err.contains("is busy: a live fuse filesystem is mounted there"),
        "{err}"
    );
    // Another mountpoint, the same control socket.
    let other = Harness::new();
    let out = std::process::Command::new(common::BIN)
        .args(["mount", "--backing"])
        .arg(&other.backing)
        .arg("--mountpoint")
        .arg(&other.mnt)
        .arg("--control")
        .arg(&h.ctl)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("is in use by a live daemon"), "{stderr}");
    // The first daemon is unharmed.
    write(&h.p("still"), b"ok", true);
    h.shutdown(d);
}

#[test]
fn control_requests_and_errors() {
    require_fuse!();
    let h = Harness::new();
    let d = h.mount();
    let (ok, _, err) = h.cli(&["cut", "--seed", "1", "--mode", "q"]);
    assert!(!ok && err.contains("not a mode"), "{err}");
    let reply = perch_powercut::control::request(&h.ctl, &perch_powercut::control::Request::Ping).unwrap();
    assert!(reply.is_empty());
    // A raw bad line gets ERR.
    use std::io::{BufRead, BufReader, Write};
    let mut s = std::os::unix::net::UnixStream::connect(&h.ctl).unwrap();
    writeln!(s, "FROB").unwrap();
    let first = BufReader::new(s).lines().next().unwrap().unwrap();
    assert!(first.starts_with("ERR unknown request"), "{first}");
    assert_eq!(
        h.status().last().map(String::as_str),
        Some("files 0 dirty_pages 0 ops 0")
    );
    h.shutdown(d);
    // With no daemon, the CLI says so.
    let (ok, _, err) = h.cli(&["status"]);
    assert!(!ok && err.contains("connect to control socket"), "{err}");
}

#[test]
fn many_files_with_few_descriptors() {
    require_fuse!();
    let h = Harness::new();
    // Idle files' descriptors are closed above 64 open ones and reopened from file handles.
    let d = h.try_mount_with(&[], &[("PERCH_POWERCUT_FD_BUDGET", "64")]).unwrap();
    std::fs::create_dir(h.p("d")).unwrap();
    common::fsync(&h.mnt);
    for i in 0..400 {
        write(&h.p(&format!("d/f{i}")), format!("content {i}").as_bytes(), i % 2 == 0);
    }
    common::fsync(&h.p("d"));
    for i in 0..400 {
        // Even files synced; odd ones not: their data is pending and their descriptors stay.
        assert_eq!(
            read(&h.p(&format!("d/f{i}"))).unwrap(),
            format!("content {i}").as_bytes()
        );
    }
    for i in (0..400).step_by(7) {
        std::fs::rename(h.p(&format!("d/f{i}")), h.p(&format!("d/r{i}"))).unwrap();
    }
    let (d, lines) = h.cut_and_remount(d, 0, None);
    for i in 0..400 {
        let renamed = i % 7 == 0;
        let got = read(&h.p(&format!("d/f{i}")));
        assert!(read(&h.p(&format!("d/r{i}"))).is_none(), "{lines:?}");
        let want: &[u8] = if i % 2 == 0 {
            format!("content {i}").into_bytes().leak()
        } else {
            b""
        };
        assert_eq!(got.as_deref(), Some(want), "f{i} (renamed {renamed})");
    }
    h.shutdown(d);
}
