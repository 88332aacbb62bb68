//! Perch's Prometheus metrics: one registry, the S3 request counters and latency histograms kept
//! here, and the origin's counters registered by the cache crate.

use std::sync::Mutex;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabel {
    op: &'static str,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OpLabel {
    op: &'static str,
}

/// Work to do right before the metrics are rendered (gauges that are cheaper read than kept).
type Refresh = Box<dyn Fn() + Send + Sync>;

pub struct Metrics {
    registry: Mutex<Registry>,
    refresh: Mutex<Vec<Refresh>>,
    requests: Family<RequestLabel, Counter>,
    /// Requests the hit fast path answered (without s3s), by operation.
    direct: Family<OpLabel, Counter>,
    duration: Family<OpLabel, Histogram>,
    pub in_flight: Gauge,
    /// When the last S3 request ended, in ms since `born` (for the quiet period of a drain).
    last_request_ms: std::sync::atomic::AtomicU64,
    born: std::time::Instant,
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::default();
        let requests = Family::<RequestLabel, Counter>::default();
        let direct = Family::<OpLabel, Counter>::default();
        let duration =
            Family::<OpLabel, Histogram>::new_with_constructor(|| Histogram::new(exponential_buckets(0.0001, 2.0, 20)));
        let in_flight = Gauge::default();
        registry.register(
            "perch_requests",
            "S3 requests by operation and HTTP status",
            requests.clone(),
        );
        registry.register(
            "perch_requests_direct",
            "GET and HEAD requests of whole objects answered by the fast path, without s3s",
            direct.clone(),
        );
        registry.register(
            "perch_request_duration_seconds",
            "S3 request latency by operation",
            duration.clone(),
        );
        registry.register(
            "perch_requests_in_flight",
            "S3 requests being handled now",
            in_flight.clone(),
        );
        Metrics {
            registry: Mutex::new(registry),
            refresh: Mutex::new(Vec::new()),
            requests,
            direct,
            duration,
            in_flight,
            last_request_ms: std::sync::atomic::AtomicU64::new(0),
            born: std::time::Instant::now(),
        }
    }

    /// How long no S3 request has been running (zero while one is).
    pub fn idle_for(&self) -> Duration {
        if self.in_flight.get() > 0 {
            return Duration::ZERO;
        }
        let last = Duration::from_millis(self.last_request_ms.load(std::sync::atomic::Ordering::Relaxed));
        self.born.elapsed().saturating_sub(last)
    }

    /// Counts an S3 request in flight until the returned guard drops: at its answer, or when its
    /// client went away and hyper dropped it half way (it stayed counted for good, and a drain
    /// never saw its quiet period).
    pub fn request_started(&self) -> InFlight<'_> {
        self.in_flight.inc();
        InFlight(self)
    }

    /// Lets another part (the origin, later the cache) register its own metrics.
    pub fn register(&self, f: impl FnOnce(&mut Registry)) {
        if let Ok(mut registry) = self.registry.lock() {
            f(&mut registry);
        }
    }

    /// Counts a request the fast path answered.
    pub fn answered_directly(&self, op: &'static str) {
        self.direct.get_or_create(&OpLabel { op }).inc();
    }

    pub fn observe(&self, op: &'static str, status: u16, elapsed: Duration) {
        self.last_request_ms.store(
            self.born.elapsed().as_millis() as u64,
            std::sync::atomic::Ordering::Relaxed,
        );
        self.requests.get_or_create(&RequestLabel { op, status }).inc();
        self.duration
            .get_or_create(&OpLabel { op })
            .observe(elapsed.as_secs_f64());
    }

    /// Runs `f` before every rendering.
    pub fn on_render(&self, f: impl Fn() + Send + Sync + 'static) {
        if let Ok(mut refresh) = self.refresh.lock() {
            refresh.push(Box::new(f));
        }
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        if let Ok(refresh) = self.refresh.lock() {
            for f in refresh.iter() {
                f();
            }
        }
        let mut out = String::new();
        if let Ok(registry) = self.registry.lock() {
            let _ = prometheus_client::encoding::text::encode(&mut out, &registry);
        }
        out
    }
}

/// An S3 request in flight (`Metrics::request_started`).
pub struct InFlight<'m>(&'m Metrics);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.dec();
        self.0.last_request_ms.store(
            self.0.born.elapsed().as_millis() as u64,
            std::sync::atomic::Ordering::Relaxed,
        );
    }
}
