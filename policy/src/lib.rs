//! Pure rules that map a request (bucket, key, method) to what Perch does with it.
//! No I/O: the gateway and the cache ask, the policy answers.

use std::fmt;
use std::str::FromStr;

pub mod file;
pub mod prefetch;
pub mod rules;
pub mod shorthand;
pub mod units;

pub use file::{PolicyError, parse};
pub use prefetch::{ListRule, Prefetch, RESERVED_PREFIX, is_reserved};
pub use rules::{CacheClass, Decision, Freshness, Method, Policy, Priority, Rule, SharedPolicy, UploadHeader};
pub use units::UnitError;

/// A value of a rule (a policy file's field, a `perch serve` flag) that Perch cannot take.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ValueError {
    /// What is wrong with it, and what to write instead.
    #[error("{0}")]
    Invalid(String),
    /// A size or a duration that does not parse.
    #[error(transparent)]
    Unit(#[from] UnitError),
}

impl From<String> for ValueError {
    fn from(text: String) -> Self {
        ValueError::Invalid(text)
    }
}

/// A key pattern: `*` matches any run of characters, `/` included; everything else is literal.
/// `orioledb_undo/*` matches every key under `orioledb_undo/`; `data/*/global/pg_control` matches
/// the control file of every checkpoint.
#[derive(Clone, PartialEq, Eq)]
pub struct Glob {
    text: String,
    parts: Vec<String>,
}

impl Glob {
    pub fn new(pattern: &str) -> Glob {
        Glob {
            text: pattern.to_owned(),
            parts: pattern.split('*').map(str::to_owned).collect(),
        }
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    pub fn matches(&self, key: &str) -> bool {
        let (first, rest) = match self.parts.split_first() {
            Some(x) => x,
            None => return key.is_empty(),
        };
        let Some(mut tail) = key.strip_prefix(first.as_str()) else {
            return false;
        };
        let Some((last, middle)) = rest.split_last() else {
            return tail.is_empty();
        };
        for part in middle {
            match tail.find(part.as_str()) {
                Some(i) => tail = &tail[i + part.len()..],
                None => return false,
            }
        }
        tail.len() >= last.len() && tail.ends_with(last.as_str())
    }
}

impl fmt::Debug for Glob {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Glob({:?})", self.text)
    }
}

impl fmt::Display for Glob {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl FromStr for Glob {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Glob::new(s))
    }
}

/// Keys the primary rewrites in place (a replica pins them at seeding and never mixes the
/// primary's live copies with its own).
#[derive(Debug, Clone, Default)]
pub struct RewrittenKeys {
    pub mutable: Vec<Glob>,
}

impl RewrittenKeys {
    /// OrioleDB's keys that are overwritten in place: the control file (every checkpoint), undo
    /// files, WAL segments (re-uploaded with new content) and the lock.
    pub fn orioledb_defaults() -> RewrittenKeys {
        RewrittenKeys {
            mutable: ["data/orioledb_data/*", "orioledb_undo/*", "wal/*"]
                .into_iter()
                .map(Glob::new)
                .collect(),
        }
    }

    /// Whether `key` is one of them.
    pub fn is_mutable(&self, key: &str) -> bool {
        self.mutable.iter().any(|g| g.matches(key))
    }
}

/// How a write of a key reaches the origin.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WriteMode {
    /// Acknowledged once durable on local disk; uploaded later by the uploader.
    WriteBack,
    /// Like `WriteBack`, and it closes its epoch: everything acknowledged before it reaches the
    /// origin before it does, nothing acknowledged after it reaches the origin before it.
    Barrier,
    /// Acknowledged once the origin has it.
    WriteThrough,
}

impl WriteMode {
    pub fn as_str(self) -> &'static str {
        match self {
            WriteMode::WriteBack => "write_back",
            WriteMode::Barrier => "barrier",
            WriteMode::WriteThrough => "write_through",
        }
    }
}

impl FromStr for WriteMode {
    type Err = ValueError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim() {
            "write_back" => Ok(WriteMode::WriteBack),
            "barrier" => Ok(WriteMode::Barrier),
            "write_through" => Ok(WriteMode::WriteThrough),
            other => Err(format!("unknown write mode `{other}` (use write_back, barrier or write_through)").into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        let g = Glob::new("orioledb_undo/*");
        assert!(g.matches("orioledb_undo/0000000000system"));
        assert!(g.matches("orioledb_undo/"));
        assert!(!g.matches("orioledb_undox"));
        let g = Glob::new("data/*/global/pg_control");
        assert!(g.matches("data/12/global/pg_control"));
        assert!(!g.matches("data/12/global/pg_control.bak"));
        assert!(!g.matches("data/global/pg_control"));
        let g = Glob::new("data/orioledb_data/control");
        assert!(g.matches("data/orioledb_data/control"));
        assert!(!g.matches("data/orioledb_data/control2"));
        let g = Glob::new("*");
        assert!(g.matches("") && g.matches("anything/at/all"));
        let g = Glob::new("a*b*c");
        assert!(g.matches("abc") && g.matches("a-b-c") && g.matches("abbc") && !g.matches("acb"));
        let g = Glob::new("*ab");
        assert!(g.matches("ab") && g.matches("xab") && !g.matches("abx"));
    }
}
