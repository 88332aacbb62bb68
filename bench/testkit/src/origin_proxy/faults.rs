//! Fault model of the origin proxy: fault kinds, the run-time fault
//! settings, the outage schedule and the seeded engine that decides each request's fate.

use std::{fmt, str::FromStr, time::Duration};

use http::StatusCode;
use rand::{Rng, SeedableRng, rngs::StdRng};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use tokio::time::Instant;

/// Upper bound for `latency_ms` and `stall_ms` (ten minutes).
pub const MAX_DELAY_MS: u64 = 600_000;

/// What the proxy does instead of forwarding a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultKind {
    /// `500` with an S3 `InternalError` XML body.
    InternalError,
    /// `503` with an S3 `SlowDown` XML body and no `Retry-After` header.
    Http503,
    /// `503` with an S3 `SlowDown` XML body (same wire response as `503`, recorded as `slowdown`).
    SlowDown,
    /// Close the client connection abruptly (TCP RST) without any response.
    Reset,
    /// Hold the request for `stall_ms`, then reset the connection.
    Stall,
    /// `503` with an S3 `ServiceUnavailable` XML body; used while an outage is active.
    Outage,
    /// `403` with an S3 `AccessDenied` XML body: a permanent refusal (e.g. a revoked key).
    AccessDenied,
    /// `501` with an S3 `NotImplemented` XML body: S3's answer to a header it does not support.
    NotImplemented,
    /// `404` with an S3 `NoSuchKey` XML body: an origin's answer no retry changes, here to any
    /// request (moto gives it to a PUT of a key holding a line feed).
    NoSuchKey,
    /// `404` with no body and so no S3 error code: a proxy's or a load balancer's answer, never
    /// S3's (which names its error), here to any request.
    Bare404,
    /// Forward the request and wait for the origin's whole answer, then reset the connection
    /// (TCP RST) instead of passing it on: a request that took effect whose answer was lost.
    Lost,
    /// Read the whole request, hold it for `stall_ms`, then forward it from a task of its own and
    /// pass the answer on: the origin applies it even if the client has hung up meanwhile (an
    /// origin still working on a request its client gave up on).
    Late,
    /// Forward the request at once, then hold the origin's whole answer for `stall_ms` before
    /// passing it on: an answer that arrives late, telling of a state that may have changed.
    Held,
}

impl FaultKind {
    pub fn as_str(self) -> &'static str {
        match self {
            FaultKind::InternalError => "500",
            FaultKind::Http503 => "503",
            FaultKind::SlowDown => "slowdown",
            FaultKind::Reset => "reset",
            FaultKind::Stall => "stall",
            FaultKind::Outage => "outage",
            FaultKind::AccessDenied => "403",
            FaultKind::NotImplemented => "501",
            FaultKind::NoSuchKey => "404",
            FaultKind::Bare404 => "bare404",
            FaultKind::Lost => "lost",
            FaultKind::Late => "late",
            FaultKind::Held => "held",
        }
    }

    /// Status, S3 error code and message for kinds answered with an HTTP error;
    /// `None` for kinds that kill the connection instead.
    pub fn http_error(self) -> Option<(StatusCode, &'static str, &'static str)> {
        match self {
            FaultKind::InternalError => Some((
                StatusCode::INTERNAL_SERVER_ERROR,
                "InternalError",
                "We encountered an internal error. Please try again.",
            )),
            FaultKind::Http503 | FaultKind::SlowDown => Some((
                StatusCode::SERVICE_UNAVAILABLE,
                "SlowDown",
                "Please reduce your request rate.",
            )),
            FaultKind::Outage => Some((
                StatusCode::SERVICE_UNAVAILABLE,
                "ServiceUnavailable",
                "Service is unable to handle request.",
            )),
            FaultKind::AccessDenied => Some((StatusCode::FORBIDDEN, "AccessDenied", "Access Denied")),
            FaultKind::NotImplemented => Some((
                StatusCode::NOT_IMPLEMENTED,
                "NotImplemented",
                "A header you provided implies functionality that is not implemented.",
            )),
            FaultKind::NoSuchKey => Some((StatusCode::NOT_FOUND, "NoSuchKey", "The specified key does not exist.")),
            // An empty code: answered without a body.
            FaultKind::Bare404 => Some((StatusCode::NOT_FOUND, "", "")),
            FaultKind::Reset | FaultKind::Stall | FaultKind::Lost | FaultKind::Late | FaultKind::Held => None,
        }
    }
}

impl fmt::Display for FaultKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for FaultKind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "500" | "internalerror" => Ok(FaultKind::InternalError),
            "503" => Ok(FaultKind::Http503),
            "slowdown" => Ok(FaultKind::SlowDown),
            "reset" => Ok(FaultKind::Reset),
            "stall" => Ok(FaultKind::Stall),
            "outage" => Ok(FaultKind::Outage),
            "403" | "accessdenied" => Ok(FaultKind::AccessDenied),
            "501" | "notimplemented" => Ok(FaultKind::NotImplemented),
            "404" | "nosuchkey" => Ok(FaultKind::NoSuchKey),
            "bare404" => Ok(FaultKind::Bare404),
            "lost" => Ok(FaultKind::Lost),
            "late" => Ok(FaultKind::Late),
            "held" => Ok(FaultKind::Held),
            other => Err(format!(
                "unknown fault kind {other:?} (expected 500, 501, 503, 403, 404, bare404, slowdown, reset, stall, lost, late, held or outage)"
            )),
        }
    }
}

impl Serialize for FaultKind {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for FaultKind {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Text(String),
            Number(u64),
        }
        let text = match Raw::deserialize(d)? {
            Raw::Text(s) => s,
            Raw::Number(n) => n.to_string(),
        };
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// Fault settings; the JSON shape of `GET/PUT/PATCH /__proxy/faults`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultSettings {
    /// Probability (0.0..=1.0) that a matching request gets a random kind from `error_kinds`.
    pub error_rate: f64,
    /// Kinds drawn by `error_rate`; the first one is used by `fail_next`.
    pub error_kinds: Vec<FaultKind>,
    /// Added round-trip latency per forwarded request.
    pub latency_ms: u64,
    /// How long a `stall` holds the request before resetting (a `late` one, before forwarding).
    pub stall_ms: u64,
    /// Per-body pacing limit for request and response bodies (null: unlimited).
    pub bandwidth_bytes_per_sec: Option<u64>,
    /// Answer every forwarded request with 503 (kind `outage`) without reaching upstream.
    pub outage: bool,
    /// Only requests with this method (case-insensitive) are eligible for error_rate/fail_next.
    pub match_method: Option<String>,
    /// Only requests whose key starts with this prefix are eligible for error_rate/fail_next.
    pub match_key_prefix: Option<String>,
    /// Only requests carrying this header (any value) are eligible for error_rate/fail_next.
    #[serde(default)]
    pub match_header: Option<String>,
    /// Fail exactly the next N matching requests with the first of `error_kinds`; while
    /// `cut_body_after` is set, cut the response bodies of the next N matching GETs instead.
    pub fail_next: u64,
    /// With `fail_next`: the next `fail_next` matching GET requests are forwarded, but their
    /// response body is cut (the client connection closed) after this many bytes. Other methods
    /// pass untouched and do not use up `fail_next`. `error_rate` is not affected.
    #[serde(default)]
    pub cut_body_after: Option<u64>,
    /// Forward every request without its `Range` header: an origin that ignores ranges (HTTP
    /// lets a server answer a ranged GET with 200 and the whole object). The request's signature
    /// then no longer matches it: for an origin that checks none (moto).
    #[serde(default)]
    pub ignore_range: bool,
    /// Answer as S3 answers for an object encrypted with SSE-KMS: every ETag the origin answers
    /// is not the body's MD5 (its hex digits reversed), and `x-amz-server-side-encryption:
    /// aws:kms` is added.
    #[serde(default)]
    pub kms_etags: bool,
}

impl Default for FaultSettings {
    fn default() -> Self {
        FaultSettings {
            error_rate: 0.0,
            error_kinds: vec![FaultKind::Http503],
            latency_ms: 0,
            stall_ms: 5_000,
            bandwidth_bytes_per_sec: None,
            outage: false,
            match_method: None,
            match_key_prefix: None,
            match_header: None,
            fail_next: 0,
            cut_body_after: None,
            ignore_range: false,
            kms_etags: false,
        }
    }
}

/// Why fault settings or an outage schedule cannot be taken.
#[derive(Debug, thiserror::Error)]
pub enum FaultError {
    /// A value out of its range, or settings that contradict each other.
    #[error("{0}")]
    Invalid(String),
    /// A number of an outage window that does not parse.
    #[error("{text:?} in outage window {window:?} is not a number")]
    Number {
        text: String,
        window: String,
        #[source]
        source: std::num::ParseFloatError,
    },
    /// Settings that are not a JSON object of known fields and values.
    #[error("fault settings: {0}")]
    Json(#[from] serde_json::Error),
}

impl FaultSettings {
    pub fn validate(&self) -> Result<(), FaultError> {
        let invalid = |what: String| Err(FaultError::Invalid(what));
        if !(self.error_rate.is_finite() && (0.0..=1.0).contains(&self.error_rate)) {
            return invalid(format!("error_rate must be within 0.0..=1.0, got {}", self.error_rate));
        }
        if self.error_rate > 0.0 && self.error_kinds.is_empty() {
            return invalid("error_kinds must not be empty when error_rate > 0".into());
        }
        if self.latency_ms > MAX_DELAY_MS {
            return invalid(format!("latency_ms must be <= {MAX_DELAY_MS}"));
        }
        if self.stall_ms > MAX_DELAY_MS {
            return invalid(format!("stall_ms must be <= {MAX_DELAY_MS}"));
        }
        if self.bandwidth_bytes_per_sec == Some(0) {
            return invalid("bandwidth_bytes_per_sec must be > 0 (or null for unlimited)".into());
        }
        Ok(())
    }

    /// Overlays the keys of a JSON object onto these settings (keys absent from
    /// `patch` keep their value here; `null` clears an optional field).
    pub fn overlay(&self, patch: &serde_json::Value) -> Result<FaultSettings, FaultError> {
        let serde_json::Value::Object(patch) = patch else {
            return Err(FaultError::Invalid("fault settings must be a JSON object".into()));
        };
        let mut merged = serde_json::to_value(self)?;
        if let serde_json::Value::Object(map) = &mut merged {
            for (k, v) in patch {
                map.insert(k.clone(), v.clone());
            }
        }
        let settings: FaultSettings = serde_json::from_value(merged)?;
        settings.validate()?;
        Ok(settings)
    }

    fn matches(&self, method: &str, key: &str, has_header: &dyn Fn(&str) -> bool) -> bool {
        if let Some(h) = &self.match_header
            && !has_header(h)
        {
            return false;
        }
        if let Some(m) = &self.match_method
            && !m.eq_ignore_ascii_case(method)
        {
            return false;
        }
        if let Some(prefix) = &self.match_key_prefix
            && !key.starts_with(prefix.as_str())
        {
            return false;
        }
        true
    }
}

/// One scheduled outage window, relative to proxy start.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct OutageWindow {
    pub start: Duration,
    pub duration: Duration,
}

/// Parses `START_S:DURATION_S,...` (seconds, fractions allowed).
pub fn parse_outage_schedule(spec: &str) -> Result<Vec<OutageWindow>, FaultError> {
    let mut windows = Vec::new();
    for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (start, duration) = part
            .split_once(':')
            .ok_or_else(|| FaultError::Invalid(format!("outage window {part:?} is not START_S:DURATION_S")))?;
        let secs = |s: &str| -> Result<Duration, FaultError> {
            let v: f64 = s.trim().parse().map_err(|source| FaultError::Number {
                text: s.to_owned(),
                window: part.to_owned(),
                source,
            })?;
            if !v.is_finite() || !(0.0..=86_400.0 * 365.0).contains(&v) {
                return Err(FaultError::Invalid(format!(
                    "{s:?} in outage window {part:?} is out of range"
                )));
            }
            Ok(Duration::from_secs_f64(v))
        };
        windows.push(OutageWindow {
            start: secs(start)?,
            duration: secs(duration)?,
        });
    }
    Ok(windows)
}

/// The outcome of [`FaultEngine::decide`] for one request.
#[derive(Debug, Clone)]
pub struct Decision {
    pub seq: u64,
    pub injected: Option<FaultKind>,
    pub latency: Duration,
    pub stall: Duration,
    pub bandwidth: Option<u64>,
    /// Forward the request, but cut its response body after this many bytes.
    pub cut_body_after: Option<u64>,
    /// Forward the request without its `Range` header.
    pub ignore_range: bool,
    /// Answer with SSE-KMS's opaque ETags (`FaultSettings::kms_etags`).
    pub kms_etags: bool,
}

/// Decides, in arrival order, which requests get a fault. Seeded, so the same
/// request sequence under the same `--seed` gets the same faults.
pub struct FaultEngine {
    baseline: FaultSettings,
    current: FaultSettings,
    rng: StdRng,
    schedule: Vec<OutageWindow>,
    started: Instant,
    next_seq: u64,
}

impl FaultEngine {
    pub fn new(baseline: FaultSettings, schedule: Vec<OutageWindow>, seed: u64) -> Self {
        FaultEngine {
            current: baseline.clone(),
            baseline,
            rng: StdRng::seed_from_u64(seed),
            schedule,
            started: Instant::now(),
            next_seq: 1,
        }
    }

    pub fn current(&self) -> &FaultSettings {
        &self.current
    }

    pub fn baseline(&self) -> &FaultSettings {
        &self.baseline
    }

    pub fn set(&mut self, settings: FaultSettings) {
        self.current = settings;
    }

    /// The sequence number the next request will get.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    pub fn scheduled_outage_active(&self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.started);
        self.schedule
            .iter()
            .any(|w| elapsed >= w.start && elapsed < w.start.saturating_add(w.duration))
    }

    /// Assigns the request its sequence number and decides its fault; `has_header` answers
    /// whether the request carries a header (`match_header`).
    pub fn decide(&mut self, method: &str, key: &str, has_header: &dyn Fn(&str) -> bool, now: Instant) -> Decision {
        let seq = self.next_seq;
        self.next_seq += 1;
        let s = &self.current;
        let mut cut_body_after = None;
        let injected = if s.outage || self.scheduled_outage_active(now) {
            Some(FaultKind::Outage)
        } else if !s.matches(method, key, has_header) {
            None
        } else if let Some(cut) = s.cut_body_after {
            if s.fail_next > 0 && method.eq_ignore_ascii_case("GET") {
                self.current.fail_next -= 1;
                cut_body_after = Some(cut);
                None
            } else {
                self.draw_error()
            }
        } else if s.fail_next > 0 {
            let kind = s.error_kinds.first().copied().unwrap_or(FaultKind::Http503);
            self.current.fail_next -= 1;
            Some(kind)
        } else {
            self.draw_error()
        };
        Decision {
            seq,
            injected,
            latency: Duration::from_millis(self.current.latency_ms),
            stall: Duration::from_millis(self.current.stall_ms),
            bandwidth: self.current.bandwidth_bytes_per_sec,
            cut_body_after,
            ignore_range: self.current.ignore_range,
            kms_etags: self.current.kms_etags,
        }
    }

    /// A kind drawn from `error_kinds` with probability `error_rate`.
    fn draw_error(&mut self) -> Option<FaultKind> {
        let s = &self.current;
        if s.error_rate > 0.0 && !s.error_kinds.is_empty() {
            let draw: f64 = self.rng.random();
            if draw < s.error_rate {
                let i = self.rng.random_range(0..s.error_kinds.len());
                s.error_kinds.get(i).copied()
            } else {
                None
            }
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_parse_from_strings_and_numbers() {
        let kinds: Vec<FaultKind> = serde_json::from_str(r#"["500", 503, "SlowDown", "reset", "stall"]"#).unwrap();
        assert_eq!(
            kinds,
            vec![
                FaultKind::InternalError,
                FaultKind::Http503,
                FaultKind::SlowDown,
                FaultKind::Reset,
                FaultKind::Stall
            ]
        );
        assert!("teapot".parse::<FaultKind>().is_err());
    }

    #[test]
    fn overlay_keeps_absent_keys_and_rejects_unknown() {
        let base = FaultSettings {
            latency_ms: 40,
            ..FaultSettings::default()
        };
        let s = base
            .overlay(&serde_json::json!({"fail_next": 2, "error_kinds": ["500"]}))
            .unwrap();
        assert_eq!(s.latency_ms, 40);
        assert_eq!(s.fail_next, 2);
        assert_eq!(s.error_kinds, vec![FaultKind::InternalError]);
        assert!(base.overlay(&serde_json::json!({"fail_nxt": 2})).is_err());
        assert!(base.overlay(&serde_json::json!({"error_rate": 1.5})).is_err());
        let cleared = FaultSettings {
            match_method: Some("GET".into()),
            ..FaultSettings::default()
        }
        .overlay(&serde_json::json!({"match_method": null}))
        .unwrap();
        assert_eq!(cleared.match_method, None);
    }

    #[test]
    fn schedule_parses() {
        let w = parse_outage_schedule("1:2, 10.5:0.25").unwrap();
        assert_eq!(w.len(), 2);
        assert_eq!(w[1].start, Duration::from_millis(10_500));
        assert_eq!(w[1].duration, Duration::from_millis(250));
        assert!(parse_outage_schedule("5").is_err());
        assert!(parse_outage_schedule("a:1").is_err());
    }

    #[test]
    fn fail_next_is_exact_and_respects_match() {
        let settings = FaultSettings {
            fail_next: 2,
            match_method: Some("get".into()),
            match_key_prefix: Some("a/".into()),
            ..FaultSettings::default()
        };
        let mut e = FaultEngine::new(settings, Vec::new(), 1);
        let now = Instant::now();
        assert_eq!(e.decide("PUT", "a/x", &|_| false, now).injected, None);
        assert_eq!(e.decide("GET", "b/x", &|_| false, now).injected, None);
        assert_eq!(
            e.decide("GET", "a/x", &|_| false, now).injected,
            Some(FaultKind::Http503)
        );
        assert_eq!(
            e.decide("GET", "a/y", &|_| false, now).injected,
            Some(FaultKind::Http503)
        );
        assert_eq!(e.decide("GET", "a/z", &|_| false, now).injected, None);
        assert_eq!(e.current().fail_next, 0);
    }

    #[test]
    fn cut_body_after_forwards_the_next_matching_gets_and_cuts_them() {
        let settings = FaultSettings {
            fail_next: 2,
            cut_body_after: Some(1000),
            match_key_prefix: Some("big/".into()),
            ..FaultSettings::default()
        };
        let mut e = FaultEngine::new(settings, Vec::new(), 1);
        let now = Instant::now();
        let d = |e: &mut FaultEngine, method: &str, key: &str| {
            let d = e.decide(method, key, &|_| false, now);
            (d.injected, d.cut_body_after)
        };
        // Other keys and other methods pass and do not use up the count.
        assert_eq!(d(&mut e, "GET", "small/x"), (None, None));
        assert_eq!(d(&mut e, "HEAD", "big/x"), (None, None));
        assert_eq!(d(&mut e, "PUT", "big/x"), (None, None));
        assert_eq!(e.current().fail_next, 2);
        // Matching GETs are forwarded (no injected error) and cut, exactly `fail_next` of them.
        assert_eq!(d(&mut e, "get", "big/x"), (None, Some(1000)));
        assert_eq!(d(&mut e, "GET", "big/y"), (None, Some(1000)));
        assert_eq!(d(&mut e, "GET", "big/z"), (None, None));
        assert_eq!(e.current().fail_next, 0);
        // Without `cut_body_after`, `fail_next` injects errors as before.
        e.set(FaultSettings {
            fail_next: 1,
            ..FaultSettings::default()
        });
        assert_eq!(d(&mut e, "GET", "big/x"), (Some(FaultKind::Http503), None));
        assert_eq!(d(&mut e, "GET", "big/x"), (None, None));
        // The field may be absent from a JSON body (an older client) and is cleared by null.
        let parsed: FaultSettings = serde_json::from_value(serde_json::json!({
            "error_rate": 0.0, "error_kinds": ["503"], "latency_ms": 0, "stall_ms": 5000,
            "bandwidth_bytes_per_sec": null, "outage": false, "match_method": null,
            "match_key_prefix": null, "fail_next": 0
        }))
        .unwrap();
        assert_eq!(parsed, FaultSettings::default());
        // `match_header`: only requests that carry the header are eligible.
        e.set(FaultSettings {
            fail_next: 1,
            error_kinds: vec![FaultKind::NotImplemented],
            match_header: Some("x-amz-checksum-crc32".into()),
            ..FaultSettings::default()
        });
        assert_eq!(e.decide("PUT", "k", &|_| false, now).injected, None);
        let carries = |h: &str| h == "x-amz-checksum-crc32";
        assert_eq!(
            e.decide("PUT", "k", &carries, now).injected,
            Some(FaultKind::NotImplemented)
        );
        assert_eq!(FaultKind::NotImplemented.http_error().map(|e| e.0.as_u16()), Some(501));
        let set = FaultSettings::default()
            .overlay(&serde_json::json!({"cut_body_after": 5, "fail_next": 1}))
            .unwrap();
        assert_eq!(set.cut_body_after, Some(5));
        let cleared = set.overlay(&serde_json::json!({"cut_body_after": null})).unwrap();
        assert_eq!(cleared.cut_body_after, None);
    }

    #[test]
    fn error_rate_is_deterministic_under_seed() {
        let settings = FaultSettings {
            error_rate: 0.5,
            error_kinds: vec![FaultKind::InternalError, FaultKind::Reset],
            ..FaultSettings::default()
        };
        let run = |seed| {
            let mut e = FaultEngine::new(settings.clone(), Vec::new(), seed);
            let now = Instant::now();
            (0..64)
                .map(|_| e.decide("GET", "k", &|_| false, now).injected)
                .collect::<Vec<_>>()
        };
        let a = run(7);
        assert_eq!(a, run(7));
        assert!(a.iter().any(Option::is_some));
        assert!(a.iter().any(Option::is_none));
    }
}
