//! Perch's cache counters from its admin `/metrics` (Prometheus text): read before and after
//! each measured slice so the hit ratio covers exactly the benchmark's own requests.

use std::{net::SocketAddr, time::Duration};

/// Hit and miss counter names Perch's read cache exports (absent while Perch has no cache).
pub const HITS: &str = "perch_cache_hits_total";
pub const MISSES: &str = "perch_cache_misses_total";

/// One reading of the counters; `None` where the metric is not exported.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct CacheCounters {
    pub hits: Option<f64>,
    pub misses: Option<f64>,
}

impl CacheCounters {
    /// Sums every sample of the two counters (all label sets) in a Prometheus text exposition.
    pub fn parse(text: &str) -> CacheCounters {
        let mut out = CacheCounters::default();
        for line in text.lines() {
            let line = line.trim();
            if line.is_empty() {
                continue;
            }
            if let Some(meta) = line.strip_prefix('#') {
                // `# TYPE perch_cache_hits counter`: the counter exists even before its first sample.
                let mut words = meta.split_whitespace();
                if words.next() == Some("TYPE")
                    && let Some(name) = words.next()
                {
                    let name = name.strip_suffix("_total").unwrap_or(name);
                    if Some(name) == HITS.strip_suffix("_total") {
                        out.hits.get_or_insert(0.0);
                    } else if Some(name) == MISSES.strip_suffix("_total") {
                        out.misses.get_or_insert(0.0);
                    }
                }
                continue;
            }
            let name_end = line.find(['{', ' ']).unwrap_or(line.len());
            let name = &line[..name_end];
            let slot = match name {
                HITS => &mut out.hits,
                MISSES => &mut out.misses,
                _ => continue,
            };
            // The value follows the label set (which may contain spaces inside quotes).
            let rest = match line[name_end..].strip_prefix('{') {
                Some(labels) => labels.rfind('}').map(|i| &labels[i + 1..]).unwrap_or(""),
                None => &line[name_end..],
            };
            if let Some(value) = rest.split_whitespace().next().and_then(|v| v.parse::<f64>().ok()) {
                *slot = Some(slot.unwrap_or(0.0) + value);
            }
        }
        out
    }

    /// Whether Perch exports the counters at all (it has a read cache).
    pub fn present(&self) -> bool {
        self.hits.is_some() || self.misses.is_some()
    }

    /// `after - self`, as (hits, misses), when Perch exports the counters (a counter without
    /// samples yet counts as 0).
    pub fn delta(&self, after: &CacheCounters) -> Option<(u64, u64)> {
        if !after.present() {
            return None;
        }
        let hits = after.hits.unwrap_or(0.0) - self.hits.unwrap_or(0.0);
        let misses = after.misses.unwrap_or(0.0) - self.misses.unwrap_or(0.0);
        Some((hits.max(0.0) as u64, misses.max(0.0) as u64))
    }
}

/// Reads Perch's counters; `None` when the admin endpoint does not answer.
pub async fn scrape(admin: SocketAddr) -> Option<CacheCounters> {
    crate::client::get_text(admin, "/metrics", Duration::from_secs(5))
        .await
        .ok()
        .map(|text| CacheCounters::parse(&text))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_counters() {
        let text = "# HELP perch_cache_hits Cache hits\n# TYPE perch_cache_hits counter\n\
                    perch_cache_hits_total{tier=\"ram\"} 10\nperch_cache_hits_total{tier=\"disk x\"} 5\n\
                    perch_cache_misses_total 3\nperch_requests_total{op=\"GetObject\",status=\"200\"} 99\n";
        let c = CacheCounters::parse(text);
        assert_eq!(c.hits, Some(15.0));
        assert_eq!(c.misses, Some(3.0));
        let after = CacheCounters::parse("perch_cache_hits_total 25\nperch_cache_misses_total 4\n");
        assert_eq!(c.delta(&after), Some((10, 1)));
        // Declared but without samples yet: present, zero.
        let empty = CacheCounters::parse("# TYPE perch_cache_hits counter\n# TYPE perch_cache_misses counter\n");
        assert!(empty.present());
        assert_eq!(empty.delta(&after), Some((25, 4)));
        let only_misses = CacheCounters::parse("perch_cache_misses_total 7\n");
        assert_eq!(CacheCounters::default().delta(&only_misses), Some((0, 7)));
        let none = CacheCounters::parse("perch_requests_total{op=\"x\"} 1\n");
        assert!(!none.present());
        assert_eq!(none, CacheCounters::default());
        assert_eq!(none.delta(&none), None);
    }
}
