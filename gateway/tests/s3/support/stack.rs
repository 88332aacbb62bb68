//! moto, the origin proxy in front of it and perch in front of the proxy, restartable.
//!
//! perch restarts on the same data dir, cleanly or after `kill -9`. The proxy counts the requests
//! that reach moto; the cache's files on disk and perch's metrics are read by label. Requests go
//! through the OrioleDB-shaped raw client (so that every response header, `X-Cache` included, can
//! be checked) or through aws-sdk-s3 (`sdk`).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use aws_sdk_s3::config::RequestChecksumCalculation;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use perch_testkit::bodies::md5_etag;
use perch_testkit::origin_proxy::ProxyControl;
use perch_testkit::raw_client::{BUCKET, Req, Resp, Style, key_path};
use perch_testkit::sdk::{moto_client, perch_client};
use perch_testkit::servers::{MotoServer, PerchServer, ProxyServer};

use super::perch::{self, LogOnPanic, admin_get, moto_keys_env, perch_binary, s3_origin, start_with, wait_until};
use super::raw::create_bucket;
use super::sdk::{bytes_of, ok};

/// The size of a checked block of a cached file (`perch_cache::blobs::BLOCK`).
pub const BLOCK: usize = 1 << 20;

/// moto, the proxy in front of it, and perch in front of the proxy.
/// Fields drop in order: perch first, moto last.
pub struct Stack {
    perch: Option<PerchServer>,
    /// The origin proxy's control API.
    pub proxy: ProxyControl,
    _proxy: ProxyServer,
    pub moto: MotoServer,
    /// perch's `--data-dir` (kept across restarts).
    pub data_dir: PathBuf,
    /// The cache flags perch is started with.
    args: Vec<String>,
    /// More environment for the next starts of perch (e.g. `PERCH_FAIL_POINT`).
    pub env: Vec<(String, String)>,
    pub rt: tokio::runtime::Runtime,
    _tmp: tempfile::TempDir,
}

impl Stack {
    /// Starts the three servers, perch with `args` (e.g. `["--cache-disk-bytes", "3MiB"]`), and
    /// creates the bucket through perch.
    #[track_caller]
    pub fn start(args: &[&str]) -> Stack {
        let tmp = tempfile::tempdir().expect("temp dir");
        let data_dir = tmp.path().join("perch");
        Stack::start_in(tmp, data_dir, args)
    }

    /// `start`, with perch's `--data-dir` at `data_dir` (e.g. a small filesystem the test
    /// mounted there: its log goes beside it, `<data_dir>.log`).
    #[track_caller]
    pub fn start_on(data_dir: &Path, args: &[&str]) -> Stack {
        let tmp = tempfile::tempdir().expect("temp dir");
        Stack::start_in(tmp, data_dir.to_owned(), args)
    }

    #[track_caller]
    fn start_in(tmp: tempfile::TempDir, data_dir: PathBuf, args: &[&str]) -> Stack {
        let moto = MotoServer::start();
        let proxy = ProxyServer::start(&moto.endpoint, &[]);
        let (mut all, _) = s3_origin(&proxy.endpoint);
        all.extend(args.iter().map(|s| s.to_string()));
        // No database checkpoint follows a stop here: stop once the journal is empty.
        if !args.contains(&"--drain-quiet") {
            all.extend(["--drain-quiet".to_owned(), "0s".to_owned()]);
        }
        let mut stack = Stack {
            perch: None,
            proxy: proxy.control(),
            _proxy: proxy,
            moto,
            data_dir,
            args: all,
            env: Vec::new(),
            rt: tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("tokio runtime"),
            _tmp: tmp,
        };
        stack.launch();
        create_bucket(stack.addr());
        stack
    }

    #[track_caller]
    fn launch(&mut self) {
        assert!(self.perch.is_none(), "perch is already running");
        let mut env = moto_keys_env();
        env.extend(self.env.iter().cloned());
        self.perch = Some(start_with(&self.data_dir, self.args.clone(), env));
    }

    pub fn perch(&self) -> &PerchServer {
        self.perch.as_ref().expect("perch is not running")
    }

    pub fn addr(&self) -> SocketAddr {
        self.perch().addr
    }

    /// Stops perch with SIGTERM (it must exit 0) and starts it again on the same data dir.
    pub fn restart_clean(&mut self) {
        self.stop_clean();
        self.launch();
    }

    /// Kills perch with SIGKILL and starts it again on the same data dir.
    pub fn restart_after_kill(&mut self) {
        self.kill();
        self.launch();
    }

    /// SIGTERM (perch must exit 0); `start_again` brings perch back.
    pub fn stop_clean(&mut self) {
        let perch = self.perch.take().expect("perch is not running");
        let status = perch.terminate(Duration::from_secs(30));
        assert!(status.success(), "perch exited with {status} after SIGTERM");
    }

    /// Waits for perch to exit by itself (after a `send_sigterm`), which it must do with 0.
    pub fn wait_stopped(&mut self, limit: Duration) {
        let perch = self.perch.take().expect("perch is not running");
        let status = perch.wait(limit);
        assert!(status.success(), "perch exited with {status}");
    }

    /// SIGKILL, as a crash; `start_again` brings perch back.
    pub fn kill(&mut self) {
        self.perch.take().expect("perch is not running").kill();
    }

    pub fn start_again(&mut self) {
        self.launch();
    }

    /// Starts perch on an empty data dir, as a new Machine with a new volume would (perch must
    /// be stopped); `extra` flags are added to the stack's for this and later starts.
    pub fn start_on_empty_volume(&mut self, extra: &[&str]) {
        assert!(self.perch.is_none(), "stop perch first");
        std::fs::remove_dir_all(&self.data_dir).expect("remove the data dir");
        self.args.extend(extra.iter().map(|s| s.to_string()));
        self.launch();
    }

    /// Runs `perch serve` on the data dir with the stack's flags and expects it to refuse to
    /// start: returns its stderr.
    pub fn start_refused(&self) -> String {
        let mut env = moto_keys_env();
        env.push(("NO_COLOR".to_owned(), "1".to_owned()));
        let out = std::process::Command::new(perch_binary())
            .arg("serve")
            .args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0", "--data-dir"])
            .arg(&self.data_dir)
            .args(&self.args)
            .env_remove("PERCH_ACCESS_KEY_ID")
            .env_remove("PERCH_SECRET_ACCESS_KEY")
            .envs(env)
            .stdin(std::process::Stdio::null())
            .output()
            .expect("run perch serve");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            !out.status.success() && !stdout.contains("listening"),
            "perch started: {stdout}"
        );
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    /// Reaps a perch that died by itself (a fail point), so that `start_again` can follow.
    pub fn reap(&mut self) {
        if let Some(p) = self.perch.take() {
            p.kill();
        }
    }

    /// `perch flush` against the running perch: returns once everything acknowledged is in the
    /// origin (panics after `limit`).
    #[track_caller]
    pub fn flush(&self, limit: Duration) {
        perch::flush(self.perch(), limit);
    }

    /// Perch's `/status` (the write-back backlog).
    pub fn status(&self) -> serde_json::Value {
        let (code, text) = admin_get(self.perch(), "/status");
        assert_eq!(code, 200, "/status: {text}");
        serde_json::from_str(&text).expect("/status is JSON")
    }

    /// Prints perch's log and the proxy's records if the test fails (keep it after the stack).
    pub fn log_on_panic(&self) -> LogOnPanic {
        // `PerchServer` logs to `<data-dir>.log`, whichever perch of the stack runs.
        LogOnPanic::new("stack", &self.data_dir.with_extension("log")).with_proxy(self.proxy)
    }

    // -----------------------------------------------------------------------------------------
    // Requests to perch (raw client, path style)

    pub fn req(&self, method: &str, key: &str) -> Req {
        Req::object(method, self.addr(), Style::Path, &key_path(key))
    }

    #[track_caller]
    pub fn put(&self, key: &str, body: &[u8]) {
        let r = self.req("PUT", key).body(body.to_vec()).go(self.addr());
        assert_eq!(r.status, 200, "PUT {key}: {}", r.summary());
        assert_eq!(r.header("ETag"), Some(md5_etag(body).as_str()), "PUT {key}");
    }

    #[track_caller]
    pub fn get(&self, key: &str) -> Resp {
        self.req("GET", key).go(self.addr())
    }

    #[track_caller]
    pub fn get_range(&self, key: &str, range: &str) -> Resp {
        self.req("GET", key).header("Range", range).go(self.addr())
    }

    #[track_caller]
    pub fn head(&self, key: &str) -> Resp {
        self.req("HEAD", key).go(self.addr())
    }

    /// GET `key`: 200, exactly `body` (a single-part object: its MD5 is the ETag),
    /// `X-Cache: x_cache`.
    #[track_caller]
    pub fn get_expect(&self, key: &str, body: &[u8], x_cache: &str) {
        self.get_expect_etag(key, body, x_cache, &md5_etag(body));
    }

    /// GET `key`: 200, exactly `body`, the ETag `etag`, `X-Cache: x_cache`.
    #[track_caller]
    pub fn get_expect_etag(&self, key: &str, body: &[u8], x_cache: &str, etag: &str) {
        let r = self.get(key);
        assert_eq!(r.status, 200, "GET {key}: {}", r.summary());
        assert_eq!(r.header("X-Cache"), Some(x_cache), "X-Cache of GET {key}");
        assert_eq!(r.header("ETag"), Some(etag), "ETag of GET {key}");
        assert_eq!(
            r.header("Content-Length"),
            Some(body.len().to_string().as_str()),
            "GET {key}"
        );
        assert_same(&r.body, body, &format!("GET {key} ({x_cache})"));
    }

    /// HEAD `key`: 200, the length and ETag of `body`, `X-Cache: x_cache`.
    #[track_caller]
    pub fn head_expect(&self, key: &str, body: &[u8], x_cache: &str) {
        let r = self.head(key);
        assert_eq!(r.status, 200, "HEAD {key}: {}", r.summary());
        assert_eq!(r.header("X-Cache"), Some(x_cache), "X-Cache of HEAD {key}");
        assert_eq!(r.header("ETag"), Some(md5_etag(body).as_str()), "ETag of HEAD {key}");
        assert_eq!(
            r.header("Content-Length"),
            Some(body.len().to_string().as_str()),
            "HEAD {key}"
        );
    }

    /// GET `key` with `Range: bytes=spec` against the object `body`: 206, the bytes and
    /// `Content-Range` RFC 9110 gives, and `X-Cache: x_cache`.
    #[track_caller]
    pub fn range_expect(&self, key: &str, body: &[u8], spec: &str, x_cache: &str) {
        let (first, last) =
            resolve_range(spec, body.len() as u64).unwrap_or_else(|| panic!("{spec} is not satisfiable"));
        let r = self.get_range(key, &format!("bytes={spec}"));
        let what = format!("GET {key} Range: bytes={spec}");
        assert_eq!(r.status, 206, "{what}: {}", r.summary());
        assert_eq!(r.header("X-Cache"), Some(x_cache), "X-Cache of {what}");
        assert_eq!(
            r.header("Content-Range"),
            Some(format!("bytes {first}-{last}/{}", body.len()).as_str()),
            "{what}"
        );
        assert_eq!(
            r.header("Content-Length"),
            Some((last - first + 1).to_string().as_str()),
            "{what}"
        );
        assert_same(&r.body, &body[first as usize..=last as usize], &what);
    }

    /// An aws-sdk-s3 client of the running perch.
    /// Creates a multipart upload of `key` through perch and uploads `parts` to it: its id, and
    /// the parts as a completion names them.
    pub fn upload_in_parts(&self, key: &str, parts: &[Vec<u8>]) -> (String, CompletedMultipartUpload) {
        let c = self.sdk();
        self.rt.block_on(async {
            let up = c.create_multipart_upload().bucket(BUCKET).key(key).send().await;
            let id = up.expect("create").upload_id().expect("id").to_owned();
            let mut done = Vec::new();
            for (n, p) in (1..).zip(parts) {
                let out = c
                    .upload_part()
                    .bucket(BUCKET)
                    .key(key)
                    .upload_id(&id)
                    .part_number(n)
                    .body(ByteStream::from(p.clone()))
                    .send()
                    .await
                    .expect("part");
                let etag = out.e_tag().expect("etag");
                done.push(CompletedPart::builder().part_number(n).e_tag(etag).build());
            }
            (id, CompletedMultipartUpload::builder().set_parts(Some(done)).build())
        })
    }

    /// CompleteMultipartUpload of `upload_in_parts`'s upload through perch: its ETag, or the
    /// error as text.
    pub fn complete_upload(&self, key: &str, id: &str, done: &CompletedMultipartUpload) -> Result<String, String> {
        let out = self.rt.block_on(
            self.sdk()
                .complete_multipart_upload()
                .bucket(BUCKET)
                .key(key)
                .upload_id(id)
                .multipart_upload(done.clone())
                .send(),
        );
        match out {
            Ok(out) => Ok(out.e_tag().unwrap_or_default().to_owned()),
            Err(e) => Err(format!("{e:?}")),
        }
    }

    pub fn sdk(&self) -> aws_sdk_s3::Client {
        perch_client(self.perch())
    }

    /// An aws-sdk-s3 client of moto itself, behind perch's back.
    pub fn moto_sdk(&self) -> aws_sdk_s3::Client {
        moto_client(&self.moto)
    }

    /// PUT straight into moto (past perch and the proxy).
    pub fn put_behind_perchs_back(&self, key: &str, body: &[u8]) {
        self.put_into_moto(key, body, RequestChecksumCalculation::WhenSupported);
    }

    /// PUT `key` straight into moto without any checksum (as an older client, or a copy, leaves
    /// an object): the origin then keeps no checksum of it, only its ETag.
    #[track_caller]
    pub fn put_behind_perchs_back_without_checksum(&self, key: &str, body: &[u8]) {
        let out = self.put_into_moto(key, body, RequestChecksumCalculation::WhenRequired);
        assert_eq!(out.checksum_crc32(), None, "PUT {key}: a checksum was sent");
    }

    /// PUT straight into moto, with the SDK's checksums as `checksums` says; its ETag checked.
    #[track_caller]
    fn put_into_moto(
        &self,
        key: &str,
        body: &[u8],
        checksums: RequestChecksumCalculation,
    ) -> aws_sdk_s3::operation::put_object::PutObjectOutput {
        let c = self.moto_sdk();
        let out = self.rt.block_on(
            c.put_object()
                .bucket(BUCKET)
                .key(key)
                .body(aws_sdk_s3::primitives::ByteStream::from(body.to_vec()))
                .customize()
                .config_override(aws_sdk_s3::Config::builder().request_checksum_calculation(checksums))
                .send(),
        );
        let out = ok(out, &format!("PUT {key} into moto"));
        assert_eq!(out.e_tag(), Some(md5_etag(body).as_str()), "PUT {key} into moto");
        out
    }

    /// The body moto itself holds for `key` (past the proxy and perch), `None` if it holds none.
    #[track_caller]
    pub fn in_moto(&self, key: &str) -> Option<Vec<u8>> {
        let c = self.moto_sdk();
        self.rt.block_on(async {
            match c.get_object().bucket(BUCKET).key(key).send().await {
                Ok(out) => Some(bytes_of(out.body).await),
                Err(e) if e.as_service_error().is_some_and(|e| e.is_no_such_key()) => None,
                Err(e) => panic!("GET {key} from moto: {e:?}"),
            }
        })
    }

    // -----------------------------------------------------------------------------------------
    // The origin proxy

    /// `"METHOD key"` → requests that reached moto since the last reset.
    pub fn counts(&self) -> BTreeMap<String, u64> {
        self.proxy
            .counts()
            .into_iter()
            .map(|(k, v)| (k, v.as_u64().expect("a count")))
            .collect()
    }

    /// The proxy's counts must be exactly `want`.
    #[track_caller]
    pub fn assert_counts(&self, want: &[(&str, u64)], what: &str) {
        let want: BTreeMap<String, u64> = want.iter().map(|(k, n)| (k.to_string(), *n)).collect();
        assert_eq!(self.counts(), want, "origin requests: {what}");
    }

    /// The GET and HEAD requests that reached moto since the last reset: what the cache is about.
    /// Writes through perch reach the origin whatever the cache does, and so does the HEAD the
    /// uploader sends right after uploading a key (for the origin's Last-Modified): a HEAD whose
    /// key's previous request was a successful upload (PUT, or the POST completing a multipart
    /// upload) is not counted.
    pub fn reads(&self) -> BTreeMap<String, u64> {
        let mut last: BTreeMap<String, (String, u64)> = BTreeMap::new();
        let mut reads = BTreeMap::new();
        for r in self.proxy.log() {
            let (Some(method), Some(key)) = (r["method"].as_str(), r["key"].as_str()) else {
                continue;
            };
            let status = r["status"].as_u64().unwrap_or(0);
            let after_upload = last
                .get(key)
                .is_some_and(|(m, st)| (m == "PUT" || m == "POST") && *st == 200);
            if method == "GET" || (method == "HEAD" && !after_upload) {
                *reads.entry(format!("{method} {key}")).or_insert(0) += 1;
            }
            last.insert(key.to_owned(), (method.to_owned(), status));
        }
        reads
    }

    /// The GETs and HEADs that reached moto since the last reset must be exactly `want`.
    #[track_caller]
    pub fn assert_reads(&self, want: &[(&str, u64)], what: &str) {
        let want: BTreeMap<String, u64> = want.iter().map(|(k, n)| (k.to_string(), *n)).collect();
        assert_eq!(self.reads(), want, "origin GET/HEAD requests: {what}");
    }

    /// The proxy's records of `key`, in order.
    pub fn records(&self, key: &str) -> Vec<serde_json::Value> {
        self.proxy.log().into_iter().filter(|r| r["key"] == key).collect()
    }

    /// Sets only the given fault settings (a JSON object).
    pub fn faults(&self, json: &str) {
        self.proxy.patch(json);
    }

    /// Back to no faults.
    pub fn no_faults(&self) {
        self.proxy.faults("{}");
    }

    // -----------------------------------------------------------------------------------------
    // Metrics

    /// The value of the sample `name` (with its labels, e.g. `perch_cache_hits_total{tier="disk"}`)
    /// on perch's admin `/metrics`, which must have it.
    #[track_caller]
    pub fn metric(&self, sample: &str) -> f64 {
        let (status, text) = admin_get(self.perch(), "/metrics");
        assert_eq!(status, 200, "/metrics: {text}");
        metric_value(&text, sample).unwrap_or_else(|| panic!("no sample `{sample}` in /metrics:\n{text}"))
    }

    /// A counter of perch's, summed over its labels (or one label set, `name{label="value"}`);
    /// 0 before its first sample.
    #[track_caller]
    pub fn counter(&self, name: &str) -> f64 {
        perch::perch_metric(self.perch(), name).unwrap_or(0.0)
    }

    #[track_caller]
    pub fn assert_metric(&self, sample: &str, want: f64) {
        assert_eq!(self.metric(sample), want, "metric {sample}");
    }

    pub fn metrics_text(&self) -> String {
        admin_get(self.perch(), "/metrics").1
    }

    // -----------------------------------------------------------------------------------------
    // Files

    pub fn blobs_dir(&self) -> PathBuf {
        self.data_dir.join("cache").join("blobs")
    }

    /// Every blob file (not the temp files), with its size.
    pub fn blob_files(&self) -> Vec<(PathBuf, u64)> {
        let mut out = Vec::new();
        for fan in std::fs::read_dir(self.blobs_dir())
            .expect("read the blob dir")
            .flatten()
        {
            if fan.file_name() == "tmp" || !fan.path().is_dir() {
                continue;
            }
            for f in std::fs::read_dir(fan.path()).expect("read a blob fan dir").flatten() {
                let len = f.metadata().expect("blob metadata").len();
                out.push((f.path(), len));
            }
        }
        out.sort();
        out
    }

    /// Bytes of every file under `<data-dir>/cache/blobs`, temp files included.
    pub fn blob_bytes(&self) -> u64 {
        fn walk(dir: &Path) -> u64 {
            std::fs::read_dir(dir)
                .map(|rd| {
                    rd.flatten()
                        .map(|e| {
                            let p = e.path();
                            if p.is_dir() {
                                walk(&p)
                            } else {
                                e.metadata().map_or(0, |m| m.len())
                            }
                        })
                        .sum()
                })
                .unwrap_or(0)
        }
        walk(&self.blobs_dir())
    }

    /// Files in `<data-dir>/cache/blobs/tmp`, with their sizes.
    pub fn tmp_files(&self) -> Vec<(String, u64)> {
        std::fs::read_dir(self.blobs_dir().join("tmp"))
            .expect("read blobs/tmp")
            .flatten()
            .map(|e| {
                (
                    e.file_name().to_string_lossy().into_owned(),
                    e.metadata().map_or(0, |m| m.len()),
                )
            })
            .collect()
    }

    /// The one blob file that holds exactly `body`.
    #[track_caller]
    pub fn blob_holding(&self, body: &[u8]) -> PathBuf {
        let found: Vec<PathBuf> = self
            .blob_files()
            .into_iter()
            .filter(|(_, len)| *len == body.len() as u64)
            .filter(|(p, _)| std::fs::read(p).is_ok_and(|b| b == body))
            .map(|(p, _)| p)
            .collect();
        assert_eq!(found.len(), 1, "blob files holding the body: {found:?}");
        found.into_iter().next().expect("one")
    }
}

/// Flips one bit of the byte at `offset` of `path`, in place.
pub fn flip_byte(path: &Path, offset: u64) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, offset).expect("read the byte");
    b[0] ^= 0x10;
    f.write_all_at(&b, offset).expect("write the byte");
    f.sync_all().expect("sync");
}

/// Truncates `path` to `len` bytes.
pub fn truncate(path: &Path, len: u64) {
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    f.set_len(len).expect("truncate");
}

/// The value of one sample (`name` or `name{labels}`) in a Prometheus text exposition.
pub fn metric_value(text: &str, sample: &str) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| l.strip_prefix(sample).and_then(|rest| rest.strip_prefix(' ')))
        .and_then(|v| v.trim().parse().ok())
}

/// The inclusive span `bytes=spec` selects in `size` bytes (RFC 9110 §14.1.2), `None` when not
/// satisfiable. Written from the RFC, independently of perch.
pub fn resolve_range(spec: &str, size: u64) -> Option<(u64, u64)> {
    let (a, b) = spec.split_once('-')?;
    if a.is_empty() {
        let n: u64 = b.parse().ok()?;
        return (n > 0 && size > 0).then(|| (size.saturating_sub(n), size - 1));
    }
    let first: u64 = a.parse().ok()?;
    let last = if b.is_empty() {
        size.checked_sub(1)?
    } else {
        b.parse::<u64>().ok()?.min(size.checked_sub(1)?)
    };
    (first < size && first <= last).then_some((first, last))
}

/// Compares bodies without printing megabytes on failure.
#[track_caller]
pub fn assert_same(got: &[u8], want: &[u8], what: &str) {
    if got == want {
        return;
    }
    let first_diff = got.iter().zip(want).position(|(a, b)| a != b);
    panic!(
        "{what}: wrong body: {} bytes, expected {}; first difference at {:?}",
        got.len(),
        want.len(),
        first_diff
    );
}

/// Polls `f` every 50 ms until it holds; panics with `what` after a minute (a safety net against
/// a hang, not a performance bound).
#[track_caller]
pub fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    if !wait_until(Duration::from_secs(60), &mut f) {
        panic!("still not true after a minute: {what}");
    }
}
