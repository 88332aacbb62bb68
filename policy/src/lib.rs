//! Pure rules that map an object key to what Perch does with it.
//! No I/O: the gateway and the cache ask, the policy answers.

use std::fmt;
use std::str::FromStr;

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

/// Which cached objects may change behind Perch's back and must be revalidated.
#[derive(Debug, Clone, Default)]
pub struct Freshness {
    /// Keys (without the bucket) whose cached copies are revalidated with the origin.
    pub mutable: Vec<Glob>,
}

impl Freshness {
    /// OrioleDB's keys that are overwritten in place: the control file (every checkpoint), undo
    /// files, WAL segments (re-uploaded with new content) and the lock.
    pub fn orioledb_defaults() -> Vec<Glob> {
        ["data/orioledb_data/*", "orioledb_undo/*", "wal/*"]
            .into_iter()
            .map(Glob::new)
            .collect()
    }

    /// Whether a cached copy of `key` must be revalidated once its TTL has passed; every other
    /// object is treated as immutable.
    pub fn is_mutable(&self, key: &str) -> bool {
        self.mutable.iter().any(|g| g.matches(key))
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

    #[test]
    fn freshness() {
        let f = Freshness {
            mutable: Freshness::orioledb_defaults(),
        };
        assert!(f.is_mutable("data/orioledb_data/control"));
        assert!(f.is_mutable("wal/000000010000000000000008"));
        assert!(!f.is_mutable("orioledb_data/1/2/3"));
        assert!(!f.is_mutable("data/3/global/pg_control"));
    }
}
