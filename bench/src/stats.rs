//! Request statistics: per-request latencies, byte and status counts, and the summary figures
//! (ops/s, MB/s, nearest-rank percentiles) that the reports print.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Serialize;

use crate::client::Outcome;

/// How many error messages are kept per target and workload.
const ERROR_SAMPLES: usize = 5;

/// Everything recorded for one target in one workload (summed over rounds).
#[derive(Debug, Clone, Default)]
pub struct Stats {
    /// Successful requests.
    pub ops: u64,
    pub errors: u64,
    pub bytes_up: u64,
    pub bytes_down: u64,
    /// Latencies of successful requests, microseconds.
    pub latencies_us: Vec<u64>,
    pub statuses: BTreeMap<u16, u64>,
    /// `X-Cache` response headers seen.
    pub header_hits: u64,
    pub header_misses: u64,
    pub error_samples: Vec<String>,
    /// Wall time the requests took (sum over slices).
    pub elapsed: Duration,
}

impl Stats {
    pub fn record(&mut self, o: &Outcome) {
        *self.statuses.entry(o.status).or_default() += 1;
        match o.cache {
            Some(true) => self.header_hits += 1,
            Some(false) => self.header_misses += 1,
            None => {}
        }
        match &o.error {
            None => {
                self.ops += 1;
                self.bytes_up += o.bytes_up;
                self.bytes_down += o.bytes_down;
                self.latencies_us.push(o.latency.as_micros() as u64);
            }
            Some(e) => self.error(e.clone()),
        }
    }

    /// Counts an error that did not come from a request outcome.
    pub fn error(&mut self, message: String) {
        self.errors += 1;
        if self.error_samples.len() < ERROR_SAMPLES {
            self.error_samples.push(message);
        }
    }

    pub fn merge(&mut self, other: Stats) {
        self.ops += other.ops;
        self.errors += other.errors;
        self.bytes_up += other.bytes_up;
        self.bytes_down += other.bytes_down;
        self.latencies_us.extend(other.latencies_us);
        for (k, v) in other.statuses {
            *self.statuses.entry(k).or_default() += v;
        }
        self.header_hits += other.header_hits;
        self.header_misses += other.header_misses;
        for e in other.error_samples {
            if self.error_samples.len() < ERROR_SAMPLES {
                self.error_samples.push(e);
            }
        }
        self.elapsed += other.elapsed;
    }

    /// Requests done, successful or not.
    pub fn requests(&self) -> u64 {
        self.ops + self.errors
    }

    pub fn summary(&self) -> Summary {
        let mut sorted = self.latencies_us.clone();
        sorted.sort_unstable();
        let secs = self.elapsed.as_secs_f64();
        let per_sec = |x: f64| if secs > 0.0 { x / secs } else { 0.0 };
        let ms = |us: u64| us as f64 / 1000.0;
        let mean = if sorted.is_empty() {
            0.0
        } else {
            sorted.iter().sum::<u64>() as f64 / sorted.len() as f64 / 1000.0
        };
        Summary {
            ops: self.ops,
            errors: self.errors,
            seconds: secs,
            ops_per_sec: per_sec(self.ops as f64),
            mb_per_sec: per_sec((self.bytes_up + self.bytes_down) as f64) / 1e6,
            bytes_up: self.bytes_up,
            bytes_down: self.bytes_down,
            latency_ms: Latency {
                p50: ms(percentile(&sorted, 50.0)),
                p90: ms(percentile(&sorted, 90.0)),
                p99: ms(percentile(&sorted, 99.0)),
                max: ms(sorted.last().copied().unwrap_or(0)),
                mean,
            },
        }
    }
}

/// Latency figures in milliseconds.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq)]
pub struct Latency {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
    pub mean: f64,
}

/// The headline figures of a [`Stats`].
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq)]
pub struct Summary {
    pub ops: u64,
    pub errors: u64,
    pub seconds: f64,
    pub ops_per_sec: f64,
    /// (request + response body bytes) / 10^6 per second.
    pub mb_per_sec: f64,
    pub bytes_up: u64,
    pub bytes_down: u64,
    pub latency_ms: Latency,
}

/// Nearest-rank percentile of ascending `sorted` (0 when empty): the smallest value with at
/// least `p` percent of the values at or below it.
pub fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        assert_eq!(percentile(&[], 50.0), 0);
        assert_eq!(percentile(&[7], 0.0), 7);
        assert_eq!(percentile(&[7], 99.0), 7);
        let v: Vec<u64> = (1..=100).collect();
        assert_eq!(percentile(&v, 50.0), 50);
        assert_eq!(percentile(&v, 90.0), 90);
        assert_eq!(percentile(&v, 99.0), 99);
        assert_eq!(percentile(&v, 100.0), 100);
        assert_eq!(percentile(&v, 99.5), 100);
        let v = [10, 20, 30, 40];
        assert_eq!(percentile(&v, 50.0), 20);
        assert_eq!(percentile(&v, 51.0), 30);
        assert_eq!(percentile(&v, 75.0), 30);
        assert_eq!(percentile(&v, 76.0), 40);
    }

    #[test]
    fn summaries() {
        let mut s = Stats::default();
        for ms in [1u64, 2, 3, 4] {
            s.record(&Outcome {
                status: 200,
                latency: Duration::from_millis(ms),
                ttfb: Duration::from_millis(ms),
                bytes_up: 0,
                bytes_down: 500_000,
                cache: Some(ms % 2 == 0),
                error: None,
            });
        }
        s.record(&Outcome {
            status: 500,
            latency: Duration::from_millis(9),
            ttfb: Duration::from_millis(9),
            bytes_up: 0,
            bytes_down: 10,
            cache: None,
            error: Some("boom".into()),
        });
        s.elapsed = Duration::from_secs(2);
        let mut other = Stats::default();
        other.merge(s);
        let sum = other.summary();
        assert_eq!(sum.ops, 4);
        assert_eq!(sum.errors, 1);
        assert_eq!(sum.ops_per_sec, 2.0);
        assert_eq!(sum.mb_per_sec, 1.0);
        assert_eq!(sum.latency_ms.p50, 2.0);
        assert_eq!(sum.latency_ms.max, 4.0);
        assert_eq!(sum.latency_ms.mean, 2.5);
        assert_eq!(other.header_hits, 2);
        assert_eq!(other.statuses[&500], 1);
        assert_eq!(other.error_samples, vec!["boom".to_owned()]);
    }
}
