//! OrioleDB trace replay: parses the recorded JSON lines (request events only) and replays them
//! in recorded order and concurrency under a fresh key prefix, checking every body and status.

use std::{
    collections::{HashMap, HashSet},
    path::{Path, PathBuf},
    sync::Arc,
    time::Instant,
};

use anyhow::{Context, bail};
use http::{HeaderName, HeaderValue, Method};
use serde::Deserialize;
use tokio::sync::mpsc;

use perch_testkit::bodies::{self, Digest32, Object};

use crate::{
    client::{Expect, HttpClient, Outcome, Req},
    engine::Progress,
    stats::Stats,
    target::{self, Target},
};

/// What a recorded request does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OpKind {
    Put,
    Get,
    Head,
    Delete,
    /// GET of the bucket (ListObjectsV2 or v1).
    List,
    HeadBucket,
    /// Anything else (multipart, bucket creation...): not replayed.
    Unsupported(String),
}

/// One recorded S3 request.
#[derive(Debug, Clone, PartialEq)]
pub struct TraceOp {
    /// Start time, epoch seconds.
    pub t: f64,
    pub kind: OpKind,
    /// The object key; `None` for bucket-level requests.
    pub key: Option<String>,
    /// The recorded query string (encoded), empty when none.
    pub query: String,
    /// Request body bytes (PUT).
    pub size: u64,
    pub status: u16,
    /// Object length when known: GET 200 body bytes, HEAD 200 `Content-Length`.
    pub object_len: Option<u64>,
    /// Requests in flight at this one's start, itself included.
    pub inflight: usize,
    /// `Range` header.
    pub range: Option<String>,
    /// `If-None-Match: *` on a PUT.
    pub if_none_match: bool,
}

impl TraceOp {
    fn is_write(&self) -> bool {
        matches!(self.kind, OpKind::Put | OpKind::Delete)
    }
}

#[derive(Deserialize)]
struct Record {
    event: String,
    #[serde(default)]
    t: f64,
    #[serde(default)]
    method: String,
    #[serde(default)]
    host: String,
    #[serde(default)]
    path: String,
    #[serde(default)]
    query: Option<String>,
    #[serde(default)]
    req_headers: serde_json::Map<String, serde_json::Value>,
    #[serde(default)]
    req_body_bytes: u64,
    #[serde(default)]
    status: u16,
    #[serde(default)]
    resp_body_bytes: u64,
    #[serde(default)]
    resp_content_length_hdr: Option<String>,
    #[serde(default)]
    inflight_at_start: usize,
}

/// A parsed trace.
#[derive(Debug, Clone)]
pub struct Trace {
    pub name: String,
    /// Requests in start order.
    pub ops: Vec<TraceOp>,
}

impl Trace {
    pub fn load(path: &Path) -> anyhow::Result<Trace> {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading trace {}", path.display()))?;
        let name = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "trace".to_owned());
        Trace::parse(&name, &text).with_context(|| format!("parsing trace {}", path.display()))
    }

    /// Parses JSON lines; only `event: "request"` records are kept, sorted by start time.
    pub fn parse(name: &str, text: &str) -> anyhow::Result<Trace> {
        let mut ops = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() {
                continue;
            }
            let record: Record = serde_json::from_str(line).with_context(|| format!("line {}", n + 1))?;
            if record.event != "request" {
                continue;
            }
            ops.push(op_of(record).with_context(|| format!("line {}", n + 1))?);
        }
        // Records are written when requests end; replay in start order.
        ops.sort_by(|a, b| a.t.total_cmp(&b.t));
        Ok(Trace {
            name: name.to_owned(),
            ops,
        })
    }

    /// Keys the trace reads before writing them (with status 2xx): they must exist before a
    /// replay, with the largest size the trace shows for them.
    pub fn seeds(&self) -> Vec<(String, u64)> {
        let mut sizes: HashMap<&str, u64> = HashMap::new();
        for op in &self.ops {
            let (Some(key), true) = (&op.key, (200..300).contains(&op.status)) else {
                continue;
            };
            let len = match op.kind {
                OpKind::Get | OpKind::Head => op
                    .object_len
                    .or_else(|| op.range.as_deref().and_then(range_end).map(|end| end + 1)),
                _ => None,
            };
            if let Some(len) = len {
                let e = sizes.entry(key.as_str()).or_default();
                *e = (*e).max(len);
            }
        }
        let mut known: HashSet<&str> = HashSet::new();
        let mut seeds = Vec::new();
        for op in &self.ops {
            let Some(key) = op.key.as_deref() else {
                continue;
            };
            if known.contains(key) {
                continue;
            }
            known.insert(key);
            if matches!(op.kind, OpKind::Get | OpKind::Head) && (200..300).contains(&op.status) {
                seeds.push((key.to_owned(), sizes.get(key).copied().unwrap_or(0)));
            }
        }
        seeds
    }

    pub fn count(&self, kind: &OpKind) -> usize {
        self.ops.iter().filter(|o| &o.kind == kind).count()
    }

    /// `202 requests: 202 PUT` and so on.
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        for (kind, name) in [
            (OpKind::Put, "PUT"),
            (OpKind::Get, "GET"),
            (OpKind::Head, "HEAD"),
            (OpKind::Delete, "DELETE"),
            (OpKind::List, "LIST"),
            (OpKind::HeadBucket, "HeadBucket"),
        ] {
            let n = self.count(&kind);
            if n > 0 {
                parts.push(format!("{n} {name}"));
            }
        }
        let skipped = self
            .ops
            .iter()
            .filter(|o| matches!(o.kind, OpKind::Unsupported(_)))
            .count();
        if skipped > 0 {
            parts.push(format!("{skipped} not replayed"));
        }
        let max_inflight = self.ops.iter().map(|o| o.inflight).max().unwrap_or(0);
        format!(
            "{} requests ({}), up to {max_inflight} in flight",
            self.ops.len(),
            parts.join(", ")
        )
    }
}

fn op_of(r: Record) -> anyhow::Result<TraceOp> {
    let header = |name: &str| r.req_headers.get(name).and_then(|v| v.as_str()).map(str::to_owned);
    let path = target::decode(&r.path, false);
    let host = r.host.rsplit_once(':').map_or(r.host.as_str(), |(h, _)| h);
    let virtual_host = host.parse::<std::net::IpAddr>().is_err() && host.contains('.');
    let rest = path.strip_prefix('/').unwrap_or(&path);
    // Path style: the first segment is the bucket.
    let key = if virtual_host {
        rest.to_owned()
    } else {
        rest.split_once('/').map(|(_, k)| k.to_owned()).unwrap_or_default()
    };
    let key = (!key.is_empty()).then_some(key);
    let query = r.query.clone().unwrap_or_default();
    let kind = match (r.method.as_str(), key.is_some()) {
        ("PUT", true) if query.is_empty() => OpKind::Put,
        ("GET", true) if query.is_empty() || query.starts_with("versionId") => OpKind::Get,
        ("HEAD", true) => OpKind::Head,
        ("DELETE", true) if query.is_empty() => OpKind::Delete,
        ("GET", false) if !query.contains("uploads") => OpKind::List,
        ("HEAD", false) => OpKind::HeadBucket,
        (m, _) => OpKind::Unsupported(format!("{m} {}{}", r.path, if query.is_empty() { "" } else { "?…" })),
    };
    if r.method.is_empty() {
        bail!("request record without a method");
    }
    let object_len = match (&kind, r.status) {
        (OpKind::Get, 200) => Some(r.resp_body_bytes),
        (OpKind::Head, 200) => r.resp_content_length_hdr.as_deref().and_then(|v| v.trim().parse().ok()),
        _ => None,
    };
    Ok(TraceOp {
        t: r.t,
        kind,
        key,
        query,
        size: r.req_body_bytes,
        status: r.status,
        object_len,
        inflight: r.inflight_at_start.max(1),
        range: header("range"),
        if_none_match: header("if-none-match").is_some_and(|v| v.trim() == "*"),
    })
}

/// The last byte a `bytes=A-B` range asks for.
fn range_end(range: &str) -> Option<u64> {
    let spec = range.trim().strip_prefix("bytes=")?;
    let (_, end) = spec.split_once('-')?;
    end.trim().parse().ok()
}

/// The inclusive byte range `range` selects in an object of `len` bytes; `None` when unsatisfiable.
pub fn resolve_range(range: &str, len: u64) -> Option<(u64, u64)> {
    let spec = range.trim().strip_prefix("bytes=")?;
    if spec.contains(',') || len == 0 {
        return None;
    }
    let (a, b) = spec.split_once('-')?;
    let (a, b) = (a.trim(), b.trim());
    if a.is_empty() {
        let n: u64 = b.parse().ok()?;
        if n == 0 {
            return None;
        }
        return Some((len.saturating_sub(n), len - 1));
    }
    let start: u64 = a.parse().ok()?;
    if start >= len {
        return None;
    }
    let end = if b.is_empty() {
        len - 1
    } else {
        b.parse::<u64>().ok()?.min(len - 1)
    };
    (end >= start).then_some((start, end))
}

/// A trace with its bodies generated: one per recorded PUT, one per seeded key.
pub struct PreparedTrace {
    pub name: String,
    pub trace: Trace,
    /// Per op: the body a PUT sends (the key's n-th version).
    bodies: Vec<Option<Object>>,
    seeds: Vec<(String, Object)>,
}

impl PreparedTrace {
    pub fn new(trace: Trace, seed: u64) -> PreparedTrace {
        let mut versions: HashMap<String, u32> = HashMap::new();
        let bodies = trace
            .ops
            .iter()
            .map(|op| match (&op.kind, &op.key) {
                (OpKind::Put, Some(key)) => {
                    let v = versions.entry(key.clone()).or_insert(0);
                    *v += 1;
                    Some(bodies::object(seed, key, *v, op.size as usize))
                }
                _ => None,
            })
            .collect();
        let seeds = trace
            .seeds()
            .into_iter()
            .map(|(key, size)| {
                let object = bodies::object(seed, &key, 0, size as usize);
                (key, object)
            })
            .collect();
        PreparedTrace {
            name: trace.name.clone(),
            trace,
            bodies,
            seeds,
        }
    }

    pub fn seed_count(&self) -> usize {
        self.seeds.len()
    }

    /// Bytes of the seeded objects.
    pub fn seeded_bytes(&self) -> u64 {
        self.seeds.iter().map(|(_, o)| o.len()).sum()
    }
}

/// The trace files named by `paths`: files as given, directories' `trace-*.jsonl` in name order.
pub fn trace_files(paths: &[PathBuf]) -> anyhow::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for p in paths {
        if p.is_dir() {
            let mut files: Vec<PathBuf> = std::fs::read_dir(p)
                .with_context(|| format!("reading {}", p.display()))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|f| {
                    f.extension().is_some_and(|e| e == "jsonl")
                        && f.file_name().is_some_and(|n| n.to_string_lossy().starts_with("trace-"))
                })
                .collect();
            files.sort();
            if files.is_empty() {
                bail!("no trace-*.jsonl files in {}", p.display());
            }
            out.extend(files);
        } else if p.is_file() {
            out.push(p.clone());
        } else {
            bail!("trace {} does not exist", p.display());
        }
    }
    Ok(out)
}

/// Rewrites a list query so its `prefix` lies under `base` (unchanged when `base` is empty).
fn list_query(query: &str, base: &str) -> String {
    if base.is_empty() {
        return query.to_owned();
    }
    let mut parts = Vec::new();
    let mut had_prefix = false;
    for part in query.split('&').filter(|p| !p.is_empty()) {
        match part.split_once('=') {
            Some(("prefix", v)) => {
                had_prefix = true;
                let v = target::decode(v, true);
                parts.push(format!("prefix={}", target::encode_query_value(&format!("{base}/{v}"))));
            }
            _ => parts.push(part.to_owned()),
        }
    }
    if !had_prefix {
        parts.push(format!("prefix={}", target::encode_query_value(&format!("{base}/"))));
    }
    parts.join("&")
}

/// `key` under `prefix` (at the bucket's root when `prefix` is empty).
fn under(prefix: &str, key: &str) -> String {
    if prefix.is_empty() {
        key.to_owned()
    } else {
        format!("{prefix}/{key}")
    }
}

/// Replays `trace` on `target` under `prefix`: seeds first (through `setup`, unmeasured), then
/// every request in order, each started once no more than its recorded in-flight count (capped
/// at `concurrency`) is running and earlier conflicting requests on its key have finished.
pub async fn replay(
    trace: Arc<PreparedTrace>,
    client: Arc<HttpClient>,
    target: Arc<Target>,
    setup: Arc<Target>,
    prefix: String,
    concurrency: usize,
    progress: Arc<Progress>,
) -> anyhow::Result<Stats> {
    seed(&trace, &client, &setup, &prefix, concurrency).await?;
    replay_seeded(trace, client, target, prefix, concurrency, progress).await
}

/// PUTs the keys `trace` reads before writing them under `prefix` through `setup` (at most
/// `concurrency`, and 16, at a time).
pub async fn seed(
    trace: &PreparedTrace,
    client: &Arc<HttpClient>,
    setup: &Arc<Target>,
    prefix: &str,
    concurrency: usize,
) -> anyhow::Result<()> {
    let mut pending = trace.seeds.iter();
    let mut running = tokio::task::JoinSet::new();
    loop {
        while running.len() < concurrency.clamp(1, 16) {
            let Some((key, object)) = pending.next() else { break };
            let (client, setup, req) = (
                client.clone(),
                setup.clone(),
                Req::put(under(prefix, key), object.clone()),
            );
            running.spawn(async move { client.execute(&setup, &req).await });
        }
        let Some(done) = running.join_next().await else { break };
        let outcome = done.context("seed task")?;
        if let Some(e) = outcome.error {
            bail!("seeding {} through {}: {e}", trace.name, setup.name);
        }
    }
    Ok(())
}

/// Replays `trace` on `target` under `prefix`, whose keys hold the seeds (and nothing the trace
/// writes), checking every answer.
pub async fn replay_seeded(
    trace: Arc<PreparedTrace>,
    client: Arc<HttpClient>,
    target: Arc<Target>,
    prefix: String,
    concurrency: usize,
    progress: Arc<Progress>,
) -> anyhow::Result<Stats> {
    let mut state: HashMap<String, Option<Object>> = trace
        .seeds
        .iter()
        .map(|(key, object)| (key.clone(), Some(object.clone())))
        .collect();
    let mut stats = Stats::default();
    let (tx, mut rx) = mpsc::unbounded_channel::<(usize, Outcome)>();
    let ops = &trace.trace.ops;
    let mut flight = Flight::default();
    let start = Instant::now();
    for (i, op) in ops.iter().enumerate() {
        if matches!(op.kind, OpKind::Unsupported(_)) {
            continue;
        }
        let limit = op.inflight.clamp(1, concurrency.max(1));
        while !(flight.count < limit && flight.ready(op)) {
            let Some((j, outcome)) = rx.recv().await else {
                bail!("replay lost track of its requests");
            };
            flight.finish(&ops[j]);
            progress.record(&outcome);
            stats.record(&outcome);
        }
        let req = request_for(op, trace.bodies.get(i).cloned().flatten(), &mut state, &prefix);
        flight.start(op);
        let (client, target, tx) = (client.clone(), target.clone(), tx.clone());
        tokio::spawn(async move {
            let outcome = client.execute(&target, &req).await;
            let _ = tx.send((i, outcome));
        });
    }
    while flight.count > 0 {
        let Some((j, outcome)) = rx.recv().await else {
            bail!("replay lost track of its requests");
        };
        flight.finish(&ops[j]);
        progress.record(&outcome);
        stats.record(&outcome);
    }
    stats.elapsed = start.elapsed();
    Ok(stats)
}

/// Requests of a replay in flight, in total and per key.
#[derive(Default)]
struct Flight<'a> {
    count: usize,
    reads: HashMap<&'a str, usize>,
    writes: HashMap<&'a str, usize>,
}

impl<'a> Flight<'a> {
    /// Reads wait for earlier writes of their key; writes wait for every earlier request on it.
    fn ready(&self, op: &TraceOp) -> bool {
        let Some(key) = op.key.as_deref() else {
            return true;
        };
        let w = self.writes.get(key).copied().unwrap_or(0);
        let r = self.reads.get(key).copied().unwrap_or(0);
        if op.is_write() { w == 0 && r == 0 } else { w == 0 }
    }

    fn start(&mut self, op: &'a TraceOp) {
        self.count += 1;
        if let Some(key) = op.key.as_deref() {
            let map = if op.is_write() {
                &mut self.writes
            } else {
                &mut self.reads
            };
            *map.entry(key).or_default() += 1;
        }
    }

    fn finish(&mut self, op: &TraceOp) {
        self.count = self.count.saturating_sub(1);
        if let Some(key) = op.key.as_deref() {
            let map = if op.is_write() {
                &mut self.writes
            } else {
                &mut self.reads
            };
            if let Some(n) = map.get_mut(key) {
                *n = n.saturating_sub(1);
            }
        }
    }
}

/// The request replaying `op`, with what it must return given the keys' current state
/// (which a write updates as it is issued: conflicting requests wait for it).
fn request_for(op: &TraceOp, body: Option<Object>, state: &mut HashMap<String, Option<Object>>, prefix: &str) -> Req {
    let key = op.key.clone();
    let current = key.as_ref().and_then(|k| state.get(k).cloned().flatten());
    let mut req = Req {
        method: Method::GET,
        key: key.as_ref().map(|k| under(prefix, k)),
        query: None,
        body: None,
        range: None,
        headers: Vec::new(),
        expect: Expect::Status(200),
    };
    match op.kind {
        OpKind::Put => {
            req.method = Method::PUT;
            let body = body.unwrap_or_else(|| bodies::object(0, "", 0, 0));
            if op.if_none_match {
                req.headers
                    .push((HeaderName::from_static("if-none-match"), HeaderValue::from_static("*")));
            }
            if op.if_none_match && current.is_some() {
                req.expect = Expect::Status(412);
            } else if let Some(k) = &key {
                state.insert(k.clone(), Some(body.clone()));
            }
            req.body = Some(body);
        }
        OpKind::Get => {
            req.expect = match (&current, &op.range) {
                (None, _) => Expect::Status(404),
                (Some(obj), None) => Expect::Body {
                    status: 200,
                    digest: Digest32::from(obj),
                },
                (Some(obj), Some(range)) => {
                    req.range = Some(range.clone());
                    match resolve_range(range, obj.len()) {
                        Some((a, b)) => {
                            let slice = &obj.bytes[a as usize..=b as usize];
                            Expect::Body {
                                status: 206,
                                digest: Digest32 {
                                    len: b - a + 1,
                                    sha256: bodies::sha256(slice),
                                },
                            }
                        }
                        None => Expect::Status(416),
                    }
                }
            };
        }
        OpKind::Head => {
            req.method = Method::HEAD;
            req.expect = match &current {
                None => Expect::Status(404),
                Some(obj) => Expect::Body {
                    status: 200,
                    digest: Digest32::from(obj),
                },
            };
        }
        OpKind::Delete => {
            req.method = Method::DELETE;
            req.expect = Expect::Status(204);
            if let Some(k) = &key {
                state.insert(k.clone(), None);
            }
        }
        OpKind::List => {
            req.key = None;
            req.query = Some(list_query(&op.query, prefix));
        }
        OpKind::HeadBucket => {
            req.method = Method::HEAD;
            req.key = None;
        }
        OpKind::Unsupported(_) => {}
    }
    req
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = r#"{"event":"conn_open","t":1.0,"conn_id":1}
{"event":"request","t":3.0,"inflight_at_start":2,"method":"GET","host":"orioledb.localhost:9000","path":"/data/a","query":"","req_headers":{},"req_body_bytes":0,"status":200,"resp_body_bytes":8192}
{"event":"request","t":2.0,"inflight_at_start":1,"method":"PUT","host":"orioledb.localhost:9000","path":"/data/b","query":"","req_headers":{"if-none-match":"*"},"req_body_bytes":8,"status":200,"resp_body_bytes":0}
{"event":"request","t":4.0,"inflight_at_start":1,"method":"HEAD","host":"orioledb.localhost:9000","path":"/","query":"","req_headers":{},"status":200}
{"event":"request","t":5.0,"inflight_at_start":1,"method":"GET","host":"orioledb.localhost:9000","path":"/","query":"list-type=2&prefix=data%2F&delimiter=%2F","req_headers":{},"status":200,"resp_body_bytes":500}
{"event":"request","t":6.0,"inflight_at_start":1,"method":"HEAD","host":"orioledb.localhost:9000","path":"/data/c","query":"","req_headers":{},"status":200,"resp_content_length_hdr":"4096"}
{"event":"request","t":7.0,"inflight_at_start":1,"method":"GET","host":"orioledb.localhost:9000","path":"/data/c","query":"","req_headers":{"range":"bytes=0-99","if-match":"\"x\""},"status":206,"resp_body_bytes":100}
{"event":"request","t":8.0,"inflight_at_start":1,"method":"GET","host":"orioledb.localhost:9000","path":"/data/missing","query":"","req_headers":{},"status":404,"resp_body_bytes":300}
{"event":"request","t":9.0,"inflight_at_start":1,"method":"DELETE","host":"orioledb.localhost:9000","path":"/data/b","query":"","req_headers":{},"status":204}
{"event":"request","t":9.5,"inflight_at_start":1,"method":"POST","host":"orioledb.localhost:9000","path":"/data/m","query":"uploads","req_headers":{},"status":200}
{"event":"request","t":10.0,"inflight_at_start":1,"method":"GET","host":"127.0.0.1:9000","path":"/bucket/k%20x","query":"","req_headers":{},"status":200,"resp_body_bytes":5}
"#;

    #[test]
    fn parses_request_events_in_start_order() {
        let t = Trace::parse("sample", SAMPLE).unwrap();
        assert_eq!(t.ops.len(), 10);
        assert_eq!(t.ops[0].kind, OpKind::Put);
        assert_eq!(t.ops[0].key.as_deref(), Some("data/b"));
        assert_eq!(t.ops[0].size, 8);
        assert!(t.ops[0].if_none_match);
        assert_eq!(t.ops[1].kind, OpKind::Get);
        assert_eq!(t.ops[1].inflight, 2);
        assert_eq!(t.ops[1].object_len, Some(8192));
        assert_eq!(t.ops[2].kind, OpKind::HeadBucket);
        assert_eq!(t.ops[2].key, None);
        assert_eq!(t.ops[3].kind, OpKind::List);
        assert_eq!(t.ops[4].object_len, Some(4096));
        assert_eq!(t.ops[5].range.as_deref(), Some("bytes=0-99"));
        assert_eq!(t.ops[6].status, 404);
        assert_eq!(t.ops[7].kind, OpKind::Delete);
        assert!(matches!(t.ops[8].kind, OpKind::Unsupported(_)));
        // Path style: the first segment is the bucket; keys are decoded.
        assert_eq!(t.ops[9].key.as_deref(), Some("k x"));
        assert!(t.describe().contains("1 not replayed"), "{}", t.describe());
    }

    #[test]
    fn seeds_keys_read_before_written() {
        let t = Trace::parse("sample", SAMPLE).unwrap();
        let seeds = t.seeds();
        assert_eq!(
            seeds,
            vec![
                ("data/a".to_owned(), 8192),
                ("data/c".to_owned(), 4096),
                ("k x".to_owned(), 5)
            ]
        );
    }

    #[test]
    fn expectations_follow_the_key_state() {
        let t = Trace::parse("sample", SAMPLE).unwrap();
        let p = PreparedTrace::new(t, 7);
        let mut state: HashMap<String, Option<Object>> =
            p.seeds.iter().map(|(k, o)| (k.clone(), Some(o.clone()))).collect();
        let ops = &p.trace.ops;
        let put = request_for(&ops[0], p.bodies[0].clone(), &mut state, "pre");
        assert_eq!(put.key.as_deref(), Some("pre/data/b"));
        assert!(matches!(put.expect, Expect::Status(200)));
        assert_eq!(put.body.as_ref().map(|b| b.len()), Some(8));
        let get = request_for(&ops[1], None, &mut state, "pre");
        assert!(matches!(get.expect, Expect::Body { status: 200, digest } if digest.len == 8192));
        let list = request_for(&ops[3], None, &mut state, "pre");
        assert_eq!(list.key, None);
        assert_eq!(
            list.query.as_deref(),
            Some("list-type=2&prefix=pre%2Fdata%2F&delimiter=%2F")
        );
        let ranged = request_for(&ops[5], None, &mut state, "pre");
        assert!(matches!(ranged.expect, Expect::Body { status: 206, digest } if digest.len == 100));
        let missing = request_for(&ops[6], None, &mut state, "pre");
        assert!(matches!(missing.expect, Expect::Status(404)));
        let del = request_for(&ops[7], None, &mut state, "pre");
        assert!(matches!(del.expect, Expect::Status(204)));
        assert_eq!(state.get("data/b").cloned().flatten().map(|o| o.len()), None);
        // A second conditional PUT of an existing key must be refused.
        let mut again = ops[0].clone();
        again.key = Some("data/a".into());
        let refused = request_for(&again, p.bodies[0].clone(), &mut state, "pre");
        assert!(matches!(refused.expect, Expect::Status(412)));
    }

    #[test]
    fn ranges() {
        assert_eq!(resolve_range("bytes=0-99", 1000), Some((0, 99)));
        assert_eq!(resolve_range("bytes=900-", 1000), Some((900, 999)));
        assert_eq!(resolve_range("bytes=-100", 1000), Some((900, 999)));
        assert_eq!(resolve_range("bytes=0-5000", 1000), Some((0, 999)));
        assert_eq!(resolve_range("bytes=1000-", 1000), None);
        assert_eq!(resolve_range("bytes=5-1", 1000), None);
        assert_eq!(range_end("bytes=10-20"), Some(20));
    }

    /// The real traces, when present (`$PERCH_ORIOLE_TRACES` or `../shared/oriole` beside the workspace).
    #[test]
    fn parses_the_recorded_traces() {
        let dir = std::env::var_os("PERCH_ORIOLE_TRACES")
            .map(PathBuf::from)
            .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/oriole"));
        let files = trace_files(std::slice::from_ref(&dir))
            .unwrap_or_else(|e| panic!("the OrioleDB traces are needed at {}: {e:#}", dir.display()));
        let mut total = 0;
        for f in files {
            let t = Trace::load(&f).unwrap();
            assert!(!t.ops.is_empty(), "{}", f.display());
            assert!(t.ops.windows(2).all(|w| w[0].t <= w[1].t));
            total += t.ops.len();
            if t.name.starts_with("trace-b") {
                assert_eq!(t.ops.len(), 202);
                assert_eq!(t.count(&OpKind::Put), 202);
                assert_eq!(t.ops.iter().map(|o| o.inflight).max(), Some(21));
                assert_eq!(t.ops.iter().map(|o| o.size).sum::<u64>(), 134_678_779);
            }
            if t.name.starts_with("trace-d2") {
                assert_eq!(t.count(&OpKind::List), 3);
                assert_eq!(t.count(&OpKind::HeadBucket), 1);
                assert_eq!(t.ops.iter().filter(|o| o.range.is_some()).count(), 2);
                // Everything it reads comes from earlier phases, so it is all seeded.
                assert!(t.seeds().len() >= 90, "{}", t.seeds().len());
            }
        }
        assert!(total > 1000, "{total}");
    }
}
