//! Small parsers and formatters shared by the benchmark commands: byte sizes (`64KiB`),
//! weighted size mixes (`1MiB:8,16MiB:1`), durations (`500ms`, `5s`) and UTC timestamps.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};

/// Parses a size (`perch_policy::units::parse_size`: `1024`, `64k`, `1MiB`, `1GiB`).
pub fn parse_size(s: &str) -> anyhow::Result<u64> {
    Ok(perch_policy::units::parse_size(s)?)
}

/// Formats a byte count the way sizes are written on the command line (`1KiB`, `64MiB`, `1000B`).
pub fn format_size(n: u64) -> String {
    if n >= 1 << 30 && n.is_multiple_of(1 << 30) {
        format!("{}GiB", n >> 30)
    } else if n >= 1 << 20 && n.is_multiple_of(1 << 20) {
        format!("{}MiB", n >> 20)
    } else if n >= 1 << 10 && n.is_multiple_of(1 << 10) {
        format!("{}KiB", n >> 10)
    } else {
        format!("{n}B")
    }
}

/// A weighted list of object sizes, e.g. `1KiB:2,1MiB:8,64MiB:1`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SizeMix(pub Vec<(u64, u32)>);

impl SizeMix {
    pub fn parse(s: &str) -> anyhow::Result<SizeMix> {
        let mut out = Vec::new();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (size, weight) = match part.split_once(':') {
                Some((size, weight)) => (
                    parse_size(size)?,
                    weight
                        .trim()
                        .parse::<u32>()
                        .with_context(|| format!("invalid weight in `{part}`"))?,
                ),
                None => (parse_size(part)?, 1),
            };
            if weight > 0 {
                out.push((size, weight));
            }
        }
        if out.is_empty() {
            bail!("empty size list `{s}`");
        }
        Ok(SizeMix(out))
    }

    /// The size of the `i`-th object of a set: sizes repeat in a fixed pattern that follows the
    /// weights exactly over every `total weight` objects, interleaved so small sets get a spread.
    pub fn size_at(&self, i: usize) -> u64 {
        let total: u64 = self.0.iter().map(|(_, w)| u64::from(*w)).sum();
        if total == 0 {
            return 0;
        }
        // Stride through the pattern with a step coprime to the total so consecutive objects differ.
        let mut step = (total / 2 + 1).max(1);
        while gcd(step, total) != 1 {
            step += 1;
        }
        let mut slot = (i as u64).wrapping_mul(step) % total;
        for (size, w) in &self.0 {
            if slot < u64::from(*w) {
                return *size;
            }
            slot -= u64::from(*w);
        }
        self.0.last().map(|(s, _)| *s).unwrap_or(0)
    }

    /// `1KiB:2,1MiB:8`.
    pub fn describe(&self) -> String {
        self.0
            .iter()
            .map(|(s, w)| format!("{}:{w}", format_size(*s)))
            .collect::<Vec<_>>()
            .join(",")
    }
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 { a } else { gcd(b, a % b) }
}

/// Parses a duration (`perch_policy::units::parse_duration`: `500ms`, `1.5s`, `2m`).
pub fn parse_duration(s: &str) -> anyhow::Result<Duration> {
    Ok(perch_policy::units::parse_duration(s)?)
}

/// clap value parser for durations.
pub fn duration_arg(s: &str) -> Result<Duration, String> {
    parse_duration(s).map_err(|e| format!("{e:#}"))
}

/// clap value parser for size mixes.
pub fn size_mix_arg(s: &str) -> Result<SizeMix, String> {
    SizeMix::parse(s).map_err(|e| format!("{e:#}"))
}

/// clap value parser for one size.
pub fn size_arg(s: &str) -> Result<u64, String> {
    parse_size(s).map_err(|e| format!("{e:#}"))
}

/// `2026-11-26T06:35:49Z` for `t`.
pub fn rfc3339(t: SystemTime) -> String {
    let (y, mo, d, h, mi, s) = civil(t);
    format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}Z")
}

/// `20261126-063549` for `t`: used in default output directory names.
pub fn compact_timestamp(t: SystemTime) -> String {
    let (y, mo, d, h, mi, s) = civil(t);
    format!("{y:04}{mo:02}{d:02}-{h:02}{mi:02}{s:02}")
}

/// UTC calendar fields of `t` (Howard Hinnant's days-to-civil algorithm).
fn civil(t: SystemTime) -> (i64, u32, u32, u32, u32, u32) {
    let secs = t.duration_since(UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0);
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (
        y,
        m,
        d,
        (rem / 3600) as u32,
        ((rem % 3600) / 60) as u32,
        (rem % 60) as u32,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("1024").unwrap(), 1024);
        assert_eq!(parse_size("1KiB").unwrap(), 1024);
        assert_eq!(parse_size("64k").unwrap(), 65536);
        assert_eq!(parse_size("16MiB").unwrap(), 16 << 20);
        assert!(parse_size("3 parsecs").is_err());
        assert_eq!(format_size(64 << 20), "64MiB");
        assert_eq!(format_size(1000), "1000B");
        assert_eq!(format_size(1536), "1536B");
    }

    #[test]
    fn mixes_follow_weights() {
        let mix = SizeMix::parse("1KiB:2,1MiB:8,64MiB:1").unwrap();
        let mut counts = std::collections::BTreeMap::new();
        for i in 0..110 {
            *counts.entry(mix.size_at(i)).or_insert(0) += 1;
        }
        assert_eq!(counts[&1024], 20);
        assert_eq!(counts[&(1 << 20)], 80);
        assert_eq!(counts[&(64 << 20)], 10);
        // Small sets still get more than one size.
        assert_ne!(mix.size_at(0), mix.size_at(1));
        assert_eq!(SizeMix::parse("1KiB").unwrap().0, vec![(1024, 1)]);
        assert!(SizeMix::parse("").is_err());
    }

    #[test]
    fn durations_and_dates() {
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("1.5s").unwrap(), Duration::from_millis(1500));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert!(parse_duration("x").is_err());
        let t = UNIX_EPOCH + Duration::from_secs(1_795_666_734);
        assert_eq!(rfc3339(t), "2026-11-26T04:18:54Z");
        assert_eq!(compact_timestamp(t), "20261126-041854");
    }
}
