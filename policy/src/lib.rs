//! Pure rules that map an object key to what Perch does with it.
//! No I/O: the gateway and the cache ask, the policy answers.

use std::fmt;
use std::str::FromStr;

pub mod prefetch;
pub mod units;

pub use prefetch::{ListRule, Prefetch, RESERVED_PREFIX, is_reserved};

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
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim() {
            "write_back" => Ok(WriteMode::WriteBack),
            "barrier" => Ok(WriteMode::Barrier),
            "write_through" => Ok(WriteMode::WriteThrough),
            other => Err(format!(
                "unknown write mode `{other}` (use write_back, barrier or write_through)"
            )),
        }
    }
}

/// Which operation a write rule applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteOp {
    Put,
    Delete,
}

/// One rule: keys matching `glob` (for `op`, or both when `None`) are written in `mode`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WriteRule {
    pub glob: Glob,
    pub op: Option<WriteOp>,
    pub mode: WriteMode,
}

impl FromStr for WriteRule {
    type Err = String;
    /// `GLOB=MODE`, or `delete:GLOB=MODE` / `put:GLOB=MODE` for one operation only.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (lhs, mode) = s
            .rsplit_once('=')
            .ok_or_else(|| format!("write rule `{s}` is not GLOB=MODE"))?;
        let (op, glob) = match lhs.split_once(':') {
            Some(("put", g)) => (Some(WriteOp::Put), g),
            Some(("delete", g)) => (Some(WriteOp::Delete), g),
            _ => (None, lhs),
        };
        if glob.is_empty() {
            return Err(format!("write rule `{s}` has an empty pattern"));
        }
        Ok(WriteRule {
            glob: Glob::new(glob),
            op,
            mode: mode.parse()?,
        })
    }
}

/// The write rules, first match wins; keys no rule names are `WriteBack`.
#[derive(Debug, Clone, Default)]
pub struct WritePolicy {
    pub rules: Vec<WriteRule>,
}

impl WritePolicy {
    /// OrioleDB's: control files (written last in a checkpoint) are barriers, WAL segments are
    /// written through (the archiver's "archived" must mean "in the origin"), and the DELETE of the
    /// lock is a barrier (the lock is released only once everything before it is in the origin).
    /// The lock's conditional PUT needs no rule: every conditional write goes to the origin.
    pub fn orioledb_defaults() -> Vec<WriteRule> {
        [
            "data/*/global/pg_control=barrier",
            "data/*/orioledb_data/control=barrier",
            "data/orioledb_data/control=barrier",
            "delete:data/orioledb_data/s3_lock=barrier",
            "wal/*=write_through",
        ]
        .into_iter()
        .filter_map(|r| r.parse().ok())
        .collect()
    }

    pub fn mode(&self, op: WriteOp, key: &str) -> WriteMode {
        self.rules
            .iter()
            .find(|r| r.op.is_none_or(|o| o == op) && r.glob.matches(key))
            .map_or(WriteMode::WriteBack, |r| r.mode)
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

    #[test]
    fn write_modes() {
        let p = WritePolicy {
            rules: WritePolicy::orioledb_defaults(),
        };
        assert_eq!(p.rules.len(), 5);
        use WriteMode::*;
        use WriteOp::*;
        assert_eq!(p.mode(Put, "data/7/global/pg_control"), Barrier);
        assert_eq!(p.mode(Put, "data/7/orioledb_data/control"), Barrier);
        assert_eq!(p.mode(Put, "data/orioledb_data/control"), Barrier);
        assert_eq!(p.mode(Put, "wal/000000010000000000000003"), WriteThrough);
        assert_eq!(p.mode(Delete, "data/orioledb_data/s3_lock"), Barrier);
        assert_eq!(p.mode(Put, "data/orioledb_data/s3_lock"), WriteBack);
        assert_eq!(p.mode(Put, "orioledb_data/1/0000000001.map"), WriteBack);
        assert_eq!(p.mode(Put, "orioledb_undo/0000000000row"), WriteBack);
        assert!("x=fast".parse::<WriteRule>().is_err());
        assert!("nothing".parse::<WriteRule>().is_err());
        assert!("=barrier".parse::<WriteRule>().is_err());
        let r: WriteRule = "put:a/*=write_through".parse().unwrap();
        assert_eq!(r.op, Some(Put));
        let custom = WritePolicy { rules: vec![r] };
        assert_eq!(custom.mode(Put, "a/b"), WriteThrough);
        assert_eq!(custom.mode(Delete, "a/b"), WriteBack);
    }
}
