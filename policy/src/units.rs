//! Sizes and durations as people write them in flags, files and environment variables: `256MiB`,
//! `20GiB`, `3GB`, `500ms`, `2m`. One parser for Perch and its tools.

use std::time::Duration;

/// A size or duration that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UnitError {
    /// Its number does not parse.
    #[error("invalid {what} `{text}`")]
    Number {
        what: &'static str,
        text: String,
        #[source]
        source: NumberError,
    },
    /// A unit it does not know, a value out of range.
    #[error("{0}")]
    Invalid(String),
}

/// Why the number of a size or duration does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NumberError {
    #[error(transparent)]
    Integer(#[from] std::num::ParseIntError),
    #[error(transparent)]
    Decimal(#[from] std::num::ParseFloatError),
}

impl UnitError {
    fn number(what: &'static str, text: &str, source: impl Into<NumberError>) -> UnitError {
        UnitError::Number {
            what,
            text: text.to_owned(),
            source: source.into(),
        }
    }
}

/// Parses `1048576`, `64k`, `512KiB`, `256MiB`, `20GiB`, `1TiB` (binary multiples; `KB`, `MB`,
/// `GB`, `TB` are powers of 1000).
pub fn parse_size(s: &str) -> Result<u64, UnitError> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num.parse().map_err(|e| UnitError::number("size", s, e))?;
    let mult: u64 = match unit.trim() {
        "" | "B" | "b" => 1,
        "K" | "k" | "KiB" | "kib" => 1 << 10,
        "M" | "m" | "MiB" | "mib" => 1 << 20,
        "G" | "g" | "GiB" | "gib" => 1 << 30,
        "T" | "t" | "TiB" | "tib" => 1 << 40,
        "KB" | "kB" | "kb" => 1_000,
        "MB" | "mb" => 1_000_000,
        "GB" | "gb" => 1_000_000_000,
        "TB" | "tb" => 1_000_000_000_000,
        other => {
            return Err(UnitError::Invalid(format!(
                "invalid size unit `{other}` in `{s}` (use B, KiB, MiB, GiB, TiB)"
            )));
        }
    };
    n.checked_mul(mult)
        .ok_or_else(|| UnitError::Invalid(format!("size `{s}` is too large")))
}

/// Parses `120`, `120s`, `2m`, `500ms`, `1.5s`, `1h`.
pub fn parse_duration(s: &str) -> Result<Duration, UnitError> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: f64 = num.parse().map_err(|e| UnitError::number("duration", s, e))?;
    let secs = match unit.trim() {
        "" | "s" => n,
        "ms" => n / 1000.0,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        "d" => n * 86_400.0,
        other => {
            return Err(UnitError::Invalid(format!(
                "invalid duration unit `{other}` in `{s}` (use ms, s, m, h or d)"
            )));
        }
    };
    if !secs.is_finite() || secs < 0.0 {
        return Err(UnitError::Invalid(format!("invalid duration `{s}`")));
    }
    // Far beyond any setting, and short enough that `Instant::now() + d` cannot overflow.
    const LONGEST: f64 = 100.0 * 365.0 * 86_400.0;
    if secs > LONGEST {
        return Err(UnitError::Invalid(format!(
            "duration `{s}` is too long (100 years at most)"
        )));
    }
    Ok(Duration::from_secs_f64(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("120"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("120s"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("7d"), Ok(Duration::from_secs(7 * 86_400)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert!(parse_duration("5 parsecs").is_err());
        assert!(parse_duration("").is_err());
        // Beyond what a Duration holds: an error, not a panic.
        assert!(parse_duration("99999999999999999999s").is_err());
        assert!(parse_duration("99999999999999999999h").is_err());
        // Within a Duration, but past what an Instant can be moved by.
        assert!(parse_duration("10000000000000000000s").is_err());
        assert_eq!(parse_duration("876000h"), Ok(Duration::from_secs(876_000 * 3600)));
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("1048576"), Ok(1 << 20));
        assert_eq!(parse_size("64k"), Ok(64 << 10));
        assert_eq!(parse_size("256MiB"), Ok(256 << 20));
        assert_eq!(parse_size("20GiB"), Ok(20 << 30));
        assert_eq!(parse_size("3GB"), Ok(3_000_000_000));
        assert!(parse_size("12 parsecs").is_err());
        assert!(parse_size("99999999999TiB").is_err());
    }

    #[test]
    fn a_number_that_does_not_parse_keeps_its_cause() {
        use std::error::Error;
        let e = parse_size("99999999999999999999").unwrap_err();
        assert_eq!(e.to_string(), "invalid size `99999999999999999999`");
        let cause = e.source().map(ToString::to_string);
        assert_eq!(cause.as_deref(), Some("number too large to fit in target type"));
        let e = parse_duration("1.2.3s").unwrap_err();
        assert!(e.source().is_some(), "{e:?}");
        // A unit it does not know has no cause beyond itself.
        assert!(parse_size("12 parsecs").unwrap_err().source().is_none());
    }
}
