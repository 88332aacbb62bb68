//! The admin port beyond loopback: Perch refuses to start there without PERCH_ADMIN_TOKEN; with
//! it, /status (which names keys) needs `Authorization: Bearer <token>` while /healthz, /readyz
//! and /metrics stay open; `perch status` and `perch flush` send the token. On loopback without a
//! token everything stays open (the other tests rely on it).

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};

use perch_testkit::bodies::pattern;
use perch_testkit::raw_client::{Req, Style};

use crate::support::machine;
use crate::support::perch::{Perch, perch_binary};
use crate::support::raw::create_bucket;

const TOKEN: &str = "an-admin-token-of-some-length";

/// `perch serve` with the admin listener on all addresses (port 0); the ports it printed.
struct Served {
    child: Child,
    s3: SocketAddr,
    /// The admin port, reached on loopback.
    admin: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn command(dir: &tempfile::TempDir, admin_listen: &str) -> Command {
    let mut cmd = Command::new(perch_binary());
    cmd.args([
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--admin-listen",
        admin_listen,
        "--data-dir",
    ])
    .arg(dir.path().join("perch"))
    .env_remove("PERCH_ADMIN_TOKEN")
    .env_remove("PERCH_ACCESS_KEY_ID")
    .env_remove("PERCH_SECRET_ACCESS_KEY")
    .env_remove("RUST_BACKTRACE")
    .env_remove("RUST_LIB_BACKTRACE")
    .stdin(Stdio::null());
    cmd
}

fn serve_everywhere(token: &str) -> Served {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut child = command(&dir, "0.0.0.0:0")
        .env("PERCH_ADMIN_TOKEN", token)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start perch");
    let mut line = String::new();
    let stdout = child.stdout.take().expect("stdout");
    BufReader::new(stdout)
        .read_line(&mut line)
        .expect("read the listening line");
    let field = |name: &str| -> SocketAddr {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(name))
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in {line:?}"))
    };
    let s3 = field("s3=");
    let admin = field("admin=");
    assert!(admin.ip().is_unspecified(), "{line}");
    Served {
        child,
        s3,
        admin: SocketAddr::from(([127, 0, 0, 1], admin.port())),
        _dir: dir,
    }
}

fn admin(addr: SocketAddr, path: &str, token: Option<&str>) -> (u16, String) {
    admin_call(addr, "GET", path, token)
}

/// `method` `path` on the admin listener at `addr`, with the token as a bearer when given.
fn admin_call(addr: SocketAddr, method: &str, path: &str, token: Option<&str>) -> (u16, String) {
    let mut req = Req::unsigned(method, addr, path);
    if let Some(t) = token {
        req = req.header("Authorization", &format!("Bearer {t}"));
    }
    let r = req.go(addr);
    (r.status, r.text())
}

/// `perch <command> --admin ADDR`, with PERCH_ADMIN_TOKEN set to `token` or unset.
fn perch_cli(args: &[&str], admin: SocketAddr, token: Option<&str>) -> std::process::Output {
    let mut cmd = Command::new(perch_binary());
    cmd.args(args).args(["--admin", &admin.to_string()]);
    match token {
        Some(t) => cmd.env("PERCH_ADMIN_TOKEN", t),
        None => cmd.env_remove("PERCH_ADMIN_TOKEN"),
    };
    cmd.output().expect("run perch")
}

#[test]
fn beyond_loopback_perch_needs_a_token_and_says_so() {
    let _turn = machine::share();
    let dir = tempfile::tempdir().expect("temp dir");
    for addr in ["0.0.0.0:0", "[::]:0"] {
        let out = command(&dir, addr)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .output()
            .expect("run perch");
        assert!(
            !out.status.success(),
            "perch served the admin port on {addr} without a token"
        );
        let err = String::from_utf8_lossy(&out.stderr);
        let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
        assert_eq!(lines.len(), 1, "one line, not {err:?}");
        assert!(lines[0].contains("PERCH_ADMIN_TOKEN"), "{err}");
        assert!(
            String::from_utf8_lossy(&out.stdout).is_empty(),
            "it must not announce listeners"
        );
    }
    // A short token is refused too.
    let out = command(&dir, "0.0.0.0:0")
        .env("PERCH_ADMIN_TOKEN", "short")
        .output()
        .expect("run perch");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("at least 16"));
}

#[test]
fn with_a_token_only_probes_and_metrics_are_open() {
    let _turn = machine::share();
    let served = serve_everywhere(TOKEN);
    create_bucket(served.s3);
    let r = Req::object("PUT", served.s3, Style::Path, "secret/key-name")
        .body(pattern(10, 1))
        .go(served.s3);
    assert_eq!(r.status, 200, "{}", r.summary());

    for path in ["/healthz", "/readyz", "/metrics"] {
        let (status, body) = admin(served.admin, path, None);
        assert_eq!(status, 200, "{path} without a token: {body}");
    }
    for path in ["/status", "/status?upto=1", "/journal", "/nothing"] {
        let (status, body) = admin(served.admin, path, None);
        assert_eq!(status, 401, "{path} without a token: {body}");
        assert!(!body.contains("key-name"));
        let (status, _) = admin(served.admin, path, Some("an-admin-token-of-some-lengtX"));
        assert_eq!(status, 401, "{path} with a wrong token");
        let (status, _) = admin(served.admin, path, Some("an-admin-token-of-some-length-and-more"));
        assert_eq!(status, 401, "{path} with a longer token");
    }
    // The operator's decisions on refused versions, too.
    for path in [
        "/journal/retry?seq=999999",
        "/journal/drop?seq=999999&confirm=lose-this-write",
    ] {
        let (status, body) = admin_call(served.admin, "POST", path, None);
        assert_eq!(status, 401, "POST {path} without a token: {body}");
        let (status, body) = admin_call(served.admin, "POST", path, Some(TOKEN));
        assert_eq!(status, 404, "POST {path} with the token (no such version): {body}");
    }
    let (status, body) = admin(served.admin, "/status", Some(TOKEN));
    assert_eq!(status, 200, "/status with the token: {body}");
    assert!(body.contains("dirty_objects"), "{body}");

    // The commands send PERCH_ADMIN_TOKEN, and say what is missing without it.
    let out = perch_cli(&["status"], served.admin, Some(TOKEN));
    assert!(
        out.status.success(),
        "perch status: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("backlog:"));
    let out = perch_cli(&["flush", "--timeout", "30s"], served.admin, Some(TOKEN));
    assert!(
        out.status.success(),
        "perch flush: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    for args in [&["status"][..], &["flush", "--timeout", "5s"][..]] {
        let out = perch_cli(args, served.admin, None);
        assert!(!out.status.success(), "perch {args:?} without the token succeeded");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("PERCH_ADMIN_TOKEN"),
            "{out:?}"
        );
    }
    let out = perch_cli(&["status"], served.admin, Some("an-admin-token-of-the-wrong-kind"));
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("refused PERCH_ADMIN_TOKEN"),
        "{out:?}"
    );
}

#[test]
fn a_token_set_on_loopback_is_enforced_and_without_one_loopback_is_open() {
    let _turn = machine::share();
    let perch = Perch::start(&[], vec![("PERCH_ADMIN_TOKEN".to_owned(), TOKEN.to_owned())]);
    let (status, _) = admin(perch.server.admin, "/status", None);
    assert_eq!(status, 401, "a token that is set is asked for, whatever the address");
    let (status, _) = admin(perch.server.admin, "/status", Some(TOKEN));
    assert_eq!(status, 200);
    let (status, _) = admin(perch.server.admin, "/healthz", None);
    assert_eq!(status, 200);

    let perch = Perch::dir(&[]);
    let (status, body) = admin(perch.server.admin, "/status", None);
    assert_eq!(status, 200, "loopback without a token: {body}");
}

/// Answers that are the client's business (a 404, an unsigned request's 403, a 501 to a call Perch
/// refuses) leave no ERROR line in Perch's log as it runs by default: s3s logged one for each, a
/// conformance run left 1,293 of them, burying the faults an operator looks for. Each request's
/// `done` line still names its status.
#[test]
fn answers_that_are_the_clients_business_leave_no_error_line_in_the_log() {
    let _turn = machine::share();
    let perch = Perch::dir(&[]);
    let addr = perch.addr();
    create_bucket(addr);
    let missing = Req::object("GET", addr, Style::Path, "missing").go(addr);
    assert_eq!(missing.status, 404, "{}", missing.summary());
    let unsigned = Req::object("GET", addr, Style::Path, "missing").keys(None).go(addr);
    assert_eq!(unsigned.status, 403, "{}", unsigned.summary());
    let redirect = Req::object("PUT", addr, Style::Path, "redirected")
        .header("x-amz-website-redirect-location", "/elsewhere")
        .body(b"x".to_vec())
        .go(addr);
    assert_eq!(redirect.status, 501, "{}", redirect.summary());
    let log = perch.server.log_text();
    for status in ["404", "403", "501"] {
        assert!(
            log.contains(&format!("status={status}")),
            "no done line with {status}:\n{log}"
        );
    }
    let errors: Vec<&str> = log.lines().filter(|l| l.contains("ERROR")).collect();
    assert!(
        errors.is_empty(),
        "ERROR lines for answers to the client:\n{}",
        errors.join("\n")
    );
}
