//! Which objects Perch fetches before a client asks: the objects of a listing whose prefix a rule
//! names (a restore lists a checkpoint, then reads all of it), and the next parts of a table a
//! client reads in order (OrioleDB's `<rel>.<segment>.<part>` keys, read one at a time).

use std::str::FromStr;

use crate::{Glob, ValueError};

/// The prefix of each bucket that is Perch's own: the hot set it hands from one machine to the
/// next lives there. Clients never see it in a listing and cannot write it.
pub const RESERVED_PREFIX: &str = ".perch/";

/// The largest part number read ahead (OrioleDB's parts count from 0 in the thousands).
pub const PART_MAX: u64 = 1 << 32;

/// Whether `key` lies under the reserved prefix.
pub fn is_reserved(key: &str) -> bool {
    key.starts_with(RESERVED_PREFIX)
}

/// A listing whose prefix matches `prefix` has its objects matching `keys` prefetched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListRule {
    pub prefix: Glob,
    pub keys: Glob,
}

impl FromStr for ListRule {
    type Err = ValueError;
    /// `PREFIX_GLOB` (every listed object) or `PREFIX_GLOB=KEY_GLOB`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (prefix, keys) = s.split_once('=').unwrap_or((s, "*"));
        if prefix.is_empty() || keys.is_empty() {
            return Err(format!("prefetch rule `{s}` is not PREFIX_GLOB or PREFIX_GLOB=KEY_GLOB").into());
        }
        Ok(ListRule {
            prefix: Glob::new(prefix),
            keys: Glob::new(keys),
        })
    }
}

/// Prefetch on listing, of the files a checksum list names, and read-ahead of sibling parts.
#[derive(Debug, Clone, Default)]
pub struct Prefetch {
    pub on_list: Vec<ListRule>,
    /// Keys of OrioleDB checksum lists (`data/<N>/orioledb_data/file_checksums`): when a client
    /// reads one, the files it names from earlier checkpoints are prefetched.
    pub named_in: Vec<Glob>,
    /// Keys whose last component is `<name>.<part>` (`part` a number) are read ahead: after two
    /// reads of nearby parts of one `<name>`, the next `read_ahead_parts` parts are fetched.
    pub read_ahead: Vec<Glob>,
    pub read_ahead_parts: u64,
}

impl Prefetch {
    /// OrioleDB's restore tool lists `data/N/` and reads every object of it, and lists
    /// `orioledb_data/N/` to read the `.map` files (the data parts come later, lazily, and are
    /// read ahead instead).
    pub fn orioledb_list_rules() -> Vec<ListRule> {
        ["data/*/", "orioledb_data/*/=*.map"]
            .into_iter()
            .filter_map(|r| r.parse().ok())
            .collect()
    }

    /// OrioleDB's list of the files a checkpoint left unchanged since an earlier one.
    pub fn orioledb_named_in() -> Vec<Glob> {
        vec![Glob::new("data/*/orioledb_data/file_checksums")]
    }

    /// Whether `key` is a checksum list whose named files are prefetched.
    pub fn names_files(&self, key: &str) -> bool {
        self.named_in.iter().any(|g| g.matches(key))
    }

    /// The files a checksum list names, by the directory they live in: `list_key` is
    /// `<p>data/<N>/orioledb_data/file_checksums`, each line of `text` `FILE: <name>, CHECKSUM:
    /// <sum>, CHECKPOINT: <M>`, and a file of checkpoint M < N is `<p>data/<M>/<name>` (one of
    /// checkpoint N is in N's own listing). Lines that do not parse, names that climb out of
    /// their directory and checkpoints not before N are left out: a list is a hint, never an
    /// error.
    pub fn named_files(list_key: &str, text: &str) -> Vec<(String, Vec<String>)> {
        let Some(dir) = list_key.strip_suffix("orioledb_data/file_checksums") else {
            return Vec::new();
        };
        let Some((base, n)) = dir.strip_suffix('/').and_then(|d| d.rsplit_once('/')) else {
            return Vec::new();
        };
        let Ok(n) = n.parse::<u64>() else {
            return Vec::new();
        };
        let mut out: std::collections::BTreeMap<u64, Vec<String>> = Default::default();
        for line in text.lines() {
            let Some(rest) = line.strip_prefix("FILE: ") else {
                continue;
            };
            let Some((name, rest)) = rest.split_once(", CHECKSUM: ") else {
                continue;
            };
            let Some((_, m)) = rest.rsplit_once(", CHECKPOINT: ") else {
                continue;
            };
            let Ok(m) = m.trim_end().parse::<u64>() else { continue };
            let climbs = name.is_empty() || name.starts_with('/') || name.split('/').any(|c| c == ".." || c == ".");
            if m >= n || climbs {
                continue;
            }
            out.entry(m).or_default().push(format!("{base}/{m}/{name}"));
        }
        out.into_iter()
            .map(|(m, keys)| (format!("{base}/{m}/"), keys))
            .collect()
    }

    /// OrioleDB's data parts: `orioledb_data/<checkpoint>/<db>/<rel>.<segment>.<part>`.
    pub fn orioledb_read_ahead() -> Vec<Glob> {
        vec![Glob::new("orioledb_data/*")]
    }

    /// The key filter of the first rule matching a listing's prefix, and the prefix a listed key
    /// must start with to be prefetched (an empty prefix never matches: a rule is about one part
    /// of a bucket). A prefix without its last `/` is taken as the directory it names when only
    /// that matches a rule: OrioleDB's own loader lists `data/6` and `orioledb_data/6`, not
    /// `data/6/`, and then only keys under `data/6/` are prefetched, never `data/60/...`.
    pub fn list_rule(&self, prefix: &str) -> Option<(&Glob, String)> {
        if prefix.is_empty() {
            return None;
        }
        let rule = |p: &str| self.on_list.iter().find(|r| r.prefix.matches(p)).map(|r| &r.keys);
        if let Some(keys) = rule(prefix) {
            return Some((keys, prefix.to_owned()));
        }
        if prefix.ends_with('/') {
            return None;
        }
        let dir = format!("{prefix}/");
        rule(&dir).map(|keys| (keys, dir))
    }

    /// `(<name>, part)` of a key that is read ahead: parts up to `PART_MAX`.
    pub fn part_of<'k>(&self, key: &'k str) -> Option<(&'k str, u64)> {
        if self.read_ahead_parts == 0 || !self.read_ahead.iter().any(|g| g.matches(key)) {
            return None;
        }
        let (name, part) = key.rsplit_once('.')?;
        if name.ends_with('/') || name.is_empty() || part.is_empty() || !part.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        // Only the numbers `part_key` writes back the same (no leading zero), and small enough
        // that the parts ahead of them can be counted without overflow.
        if part.len() > 1 && part.starts_with('0') {
            return None;
        }
        let part: u64 = part.parse().ok()?;
        (part <= PART_MAX).then_some((name, part))
    }

    /// The key of part `part` of `name`.
    pub fn part_key(name: &str, part: u64) -> String {
        format!("{name}.{part}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_rules() {
        let p = Prefetch {
            on_list: Prefetch::orioledb_list_rules(),
            ..Default::default()
        };
        let rule = |prefix: &str| {
            p.list_rule(prefix)
                .map(|(keys, under)| (keys.as_str().to_owned(), under))
        };
        assert_eq!(rule("data/6/"), Some(("*".into(), "data/6/".into())));
        assert_eq!(
            rule("orioledb_data/6/"),
            Some(("*.map".into(), "orioledb_data/6/".into()))
        );
        // OrioleDB's own loader leaves the last `/` out: the directory it names is prefetched.
        assert_eq!(rule("data/6"), Some(("*".into(), "data/6/".into())));
        assert_eq!(
            rule("orioledb_data/12"),
            Some(("*.map".into(), "orioledb_data/12/".into()))
        );
        assert_eq!(rule("data/6/base"), Some(("*".into(), "data/6/base/".into())));
        assert_eq!(rule("data"), None);
        assert!(
            p.list_rule("data/").is_none(),
            "the listing of checkpoints is not prefetched"
        );
        assert!(p.list_rule("").is_none());
        assert!(p.list_rule("wal/").is_none());
        assert!("=x".parse::<ListRule>().is_err());
        assert!("a/=".parse::<ListRule>().is_err());
        let r: ListRule = "x/*".parse().unwrap();
        assert!(r.keys.matches("anything"));
    }

    #[test]
    fn named_files() {
        let p = Prefetch {
            named_in: Prefetch::orioledb_named_in(),
            ..Default::default()
        };
        assert!(p.names_files("data/6/orioledb_data/file_checksums"));
        assert!(!p.names_files("data/6/orioledb_data/small_file_checksums"));
        let text = "FILE: base/5/1247, CHECKSUM: 9a, CHECKPOINT: 4\n\
                    FILE: global/1262, CHECKSUM: 1b, CHECKPOINT: 1\n\
                    FILE: base/5/2608, CHECKSUM: 3c, CHECKPOINT: 4\n\
                    FILE: base/5/9999, CHECKSUM: 4d, CHECKPOINT: 6\n\
                    FILE: ../escape, CHECKSUM: 5e, CHECKPOINT: 2\n\
                    garbage\n\
                    FILE: base/5/x, CHECKSUM: 6f, CHECKPOINT: nine\n";
        assert_eq!(
            Prefetch::named_files("data/6/orioledb_data/file_checksums", text),
            vec![
                ("data/1/".to_owned(), vec!["data/1/global/1262".to_owned()]),
                (
                    "data/4/".to_owned(),
                    vec!["data/4/base/5/1247".to_owned(), "data/4/base/5/2608".to_owned()]
                ),
            ]
        );
        assert_eq!(
            Prefetch::named_files(
                "db1/data/6/orioledb_data/file_checksums",
                "FILE: a, CHECKSUM: b, CHECKPOINT: 3"
            ),
            vec![("db1/data/3/".to_owned(), vec!["db1/data/3/a".to_owned()])]
        );
        assert!(Prefetch::named_files("data/x/orioledb_data/file_checksums", text).is_empty());
        assert!(Prefetch::named_files("file_checksums", text).is_empty());
    }

    #[test]
    fn parts() {
        let p = Prefetch {
            read_ahead: Prefetch::orioledb_read_ahead(),
            read_ahead_parts: 4,
            ..Default::default()
        };
        assert_eq!(
            p.part_of("orioledb_data/2/5/16440.0.13"),
            Some(("orioledb_data/2/5/16440.0", 13))
        );
        assert_eq!(p.part_of("orioledb_data/2/5/16440.map"), None);
        assert_eq!(p.part_of("orioledb_data/2/5/16440."), None);
        assert_eq!(
            p.part_of("orioledb_data/2/5/16440.0.18446744073709551615"),
            None,
            "a part whose next ones would overflow is not read ahead"
        );
        assert_eq!(
            p.part_of("orioledb_data/2/5/16440.0.4294967296"),
            Some(("orioledb_data/2/5/16440.0", PART_MAX))
        );
        assert_eq!(
            p.part_of("orioledb_data/2/5/16440.0.013"),
            None,
            "its next part would be named without the zero: another table's"
        );
        assert_eq!(
            p.part_of("orioledb_data/2/5/16440.0.0"),
            Some(("orioledb_data/2/5/16440.0", 0))
        );
        assert_eq!(p.part_of("data/2/base/5/1247"), None, "not a read-ahead key");
        assert_eq!(
            Prefetch::part_key("orioledb_data/2/5/16440.0", 14),
            "orioledb_data/2/5/16440.0.14"
        );
        let off = Prefetch {
            read_ahead_parts: 0,
            ..p
        };
        assert_eq!(off.part_of("orioledb_data/2/5/16440.0.13"), None);
    }

    #[test]
    fn reserved() {
        assert!(is_reserved(".perch/hot-set"));
        assert!(!is_reserved("perch/hot-set"));
        assert!(!is_reserved("data/.perch/x"));
    }
}
