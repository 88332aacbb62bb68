//! The policy file (`--policy FILE`): TOML `[[rule]]` tables parsed into a `Policy`, every
//! mistake reported with its line and reason.

use std::collections::BTreeMap;
use std::fmt;
use std::ops::Range;

use serde::Deserialize;
use toml::Spanned;

use crate::rules::{Method, Policy, Rule, UploadHeader};
use crate::{Glob, ValueError, WriteMode};

/// A mistake in a policy file: where, and why; with the file's later mistakes, so that one check
/// names them all.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct PolicyError {
    /// The file (or `builtin:NAME`).
    pub source_name: String,
    /// 1-based; 0 when the parser could not tell.
    pub line: usize,
    pub reason: String,
    /// The mistakes of the rules after this one's, in order (each rule is checked on its own).
    pub later: Vec<PolicyError>,
}

impl fmt::Display for PolicyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            write!(f, "{}: {}", self.source_name, self.reason)?;
        } else {
            write!(f, "{}:{}: {}", self.source_name, self.line, self.reason)?;
        }
        for later in &self.later {
            write!(f, "\n{later}")?;
        }
        Ok(())
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Document {
    #[serde(default)]
    rule: Vec<Spanned<RawRule>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    name: Option<String>,
    bucket: Option<Spanned<String>>,
    key: Option<Spanned<String>>,
    method: Option<Spanned<toml::Value>>,
    write: Option<Spanned<String>>,
    cache: Option<Spanned<String>>,
    freshness: Option<Spanned<String>>,
    upload_priority: Option<Spanned<String>>,
    #[serde(default)]
    upload_headers: BTreeMap<String, Spanned<String>>,
}

/// The 1-based line of byte `offset` of `text`.
fn line_of(text: &str, offset: usize) -> usize {
    text.get(..offset).unwrap_or(text).matches('\n').count() + 1
}

/// Parses a policy file's text; `source_name` names it in errors and in `explain`.
pub fn parse(text: &str, source_name: &str) -> Result<Policy, PolicyError> {
    let err = |span: Option<Range<usize>>, reason: String| PolicyError {
        source_name: source_name.to_owned(),
        line: span.map_or(0, |s| line_of(text, s.start)),
        reason,
        later: Vec::new(),
    };
    let doc: Document = toml::from_str(text).map_err(|e| err(e.span(), e.message().trim().to_owned()))?;
    let mut rules = Vec::with_capacity(doc.rule.len());
    let mut mistakes = Vec::new();
    for spanned in doc.rule {
        let line = line_of(text, spanned.span().start);
        match rule_of(spanned.into_inner(), line, source_name, &err) {
            Ok(rule) => rules.push(rule),
            Err(e) => mistakes.push(e),
        }
    }
    let mut mistakes = mistakes.into_iter();
    if let Some(mut first) = mistakes.next() {
        first.later = mistakes.collect();
        return Err(first);
    }
    Ok(Policy {
        rules,
        ..Policy::default()
    })
}

/// One `[[rule]]` table, at `line`.
fn rule_of(
    raw: RawRule,
    line: usize,
    source_name: &str,
    err: &impl Fn(Option<Range<usize>>, String) -> PolicyError,
) -> Result<Rule, PolicyError> {
    let mut rule = Rule::new(format!("{source_name}:{line}"), "*");
    rule.name = raw.name;
    if let Some(b) = raw.bucket {
        if b.get_ref().is_empty() {
            return Err(err(
                Some(b.span()),
                "`bucket` is empty (use \"*\" for every bucket)".into(),
            ));
        }
        rule.bucket = Glob::new(b.get_ref());
    }
    if let Some(k) = raw.key {
        if k.get_ref().is_empty() {
            return Err(err(Some(k.span()), "`key` is empty (use \"*\" for every key)".into()));
        }
        rule.key = Glob::new(k.get_ref());
    }
    if let Some(m) = raw.method {
        let at = m.span();
        let names: Vec<String> = match m.into_inner() {
            toml::Value::String(s) => vec![s],
            toml::Value::Array(a) => a
                .into_iter()
                .map(|v| match v {
                    toml::Value::String(s) => Ok(s),
                    other => Err(format!("`method` holds {other}, not a method name")),
                })
                .collect::<Result<_, _>>()
                .map_err(|e| err(Some(at.clone()), e))?,
            other => {
                return Err(err(
                    Some(at),
                    format!("`method` is {other}: use \"PUT\" or [\"GET\", \"HEAD\"]"),
                ));
            }
        };
        if names.is_empty() {
            return Err(err(
                Some(at),
                "`method` is an empty list (leave it out for every method)".into(),
            ));
        }
        let methods = names
            .iter()
            .map(|n| n.parse::<Method>())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| err(Some(at), e.to_string()))?;
        rule.methods = Some(methods);
    }
    rule.write = parse_field(raw.write, |s| s.parse::<WriteMode>(), err)?;
    rule.cache = parse_field(raw.cache, |s| s.parse(), err)?;
    rule.freshness = parse_field(raw.freshness, |s| s.parse(), err)?;
    rule.upload_priority = parse_field(raw.upload_priority, |s| s.parse(), err)?;
    for (name, value) in raw.upload_headers {
        let h = UploadHeader::new(&name, value.get_ref()).map_err(|e| err(Some(value.span()), e.to_string()))?;
        rule.upload_headers.push(h);
    }
    if !rule.decides_something() {
        return Err(PolicyError {
            source_name: source_name.to_owned(),
            line,
            reason: "the rule decides nothing: set write, cache, freshness, upload_priority or upload_headers".into(),
            later: Vec::new(),
        });
    }
    Ok(rule)
}

fn parse_field<T>(
    value: Option<Spanned<String>>,
    parse: impl Fn(&str) -> Result<T, ValueError>,
    err: &impl Fn(Option<Range<usize>>, String) -> PolicyError,
) -> Result<Option<T>, PolicyError> {
    match value {
        None => Ok(None),
        Some(v) => parse(v.get_ref())
            .map(Some)
            .map_err(|e| err(Some(v.span()), e.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::rules::{CacheClass, Freshness, Priority};

    fn error(text: &str) -> PolicyError {
        parse(text, "p.toml").expect_err("should be refused")
    }

    #[test]
    fn each_rule_kind_parses_and_decides() {
        let p = parse(
            r#"
# a comment
[[rule]]
name = "wal"
bucket = "db-*"
key = "wal/*"
method = ["PUT", "delete"]
write = "write_through"

[[rule]]
key = "wal/*"
cache = "bypass"
freshness = "revalidate after 2s"

[[rule]]
key = "data/*/global/pg_control"
method = "PUT"
write = "barrier"
upload_priority = "high"
[rule.upload_headers]
"Cache-Control" = "no-cache"
"x-amz-storage-class" = "STANDARD"
"x-amz-meta-checkpoint" = "yes"
"X-Tigris-Regions" = "iad"

[[rule]]
key = "data/orioledb_data/control"
cache = "pin"
freshness = "revalidate"

[[rule]]
key = "*"
freshness = "immutable"
upload_priority = "low"
[rule.upload_headers]
"Cache-Control" = "max-age=60"
"#,
            "p.toml",
        )
        .expect("parses");
        assert_eq!(p.rules.len(), 5);
        assert_eq!(p.rules[0].from, "p.toml:3");
        assert_eq!(p.rules[2].from, "p.toml:15");
        // Bucket and method matching.
        assert_eq!(p.decide("db-1", "wal/0001", Method::Put).write, WriteMode::WriteThrough);
        assert_eq!(
            p.decide("db-1", "wal/0001", Method::Delete).write,
            WriteMode::WriteThrough
        );
        assert_eq!(p.decide("other", "wal/0001", Method::Put).write, WriteMode::WriteBack);
        assert_eq!(p.decide("db-1", "wal/0001", Method::Get).by.write, None);
        // A rule without a decision passes it on: rule 2 gives wal its cache class and freshness.
        let d = p.decide("db-1", "wal/0001", Method::Get);
        assert_eq!((d.cache, d.by.cache), (CacheClass::Bypass, Some(1)));
        assert_eq!(d.freshness, Freshness::Revalidate(Some(Duration::from_secs(2))));
        assert_eq!(d.revalidate_after(), Some(Duration::from_secs(2)));
        // Headers gather; the first rule naming one gives its value.
        let d = p.decide("b", "data/3/global/pg_control", Method::Put);
        assert_eq!(d.write, WriteMode::Barrier);
        assert_eq!(d.upload_priority, Priority::High);
        let headers: Vec<(&str, &str)> = d
            .upload_headers
            .iter()
            .map(|h| (h.name.as_str(), h.value.as_str()))
            .collect();
        assert!(headers.contains(&("cache-control", "no-cache")), "{headers:?}");
        assert!(!headers.contains(&("cache-control", "max-age=60")), "{headers:?}");
        assert!(headers.contains(&("x-amz-storage-class", "STANDARD")));
        assert!(headers.contains(&("x-amz-meta-checkpoint", "yes")));
        assert!(headers.contains(&("x-tigris-regions", "iad")));
        // Rule 4 matches too, but its one header is rule 2's already: it gives none.
        assert_eq!(d.by.upload_headers, vec![2]);
        // The same key's GET: the PUT-only rule does not match.
        let d = p.decide("b", "data/3/global/pg_control", Method::Get);
        assert_eq!(d.upload_priority, Priority::Low);
        assert_eq!(d.upload_headers.len(), 1);
        // `revalidate` takes the policy's default period.
        let d = p.decide("b", "data/orioledb_data/control", Method::Get);
        assert_eq!(d.cache, CacheClass::Pin);
        assert_eq!(d.freshness, Freshness::Revalidate(Some(Duration::from_secs(5))));
        // Immutable, and no rule at all.
        assert_eq!(p.decide("b", "x", Method::Get).freshness, Freshness::Immutable);
        assert_eq!(p.decide("b", "x", Method::Get).revalidate_after(), None);
        let empty = parse("", "e.toml").expect("an empty file is no rules");
        let d = empty.decide("b", "x", Method::Put);
        assert_eq!(
            (d.write, d.cache, d.upload_priority),
            (WriteMode::WriteBack, CacheClass::Normal, Priority::Normal)
        );
    }

    #[test]
    fn mistakes_name_their_line_and_reason() {
        let e = error("[[rule]]\nkey = \"a/*\"\nwrite = \"fast\"\n");
        assert_eq!(e.line, 3, "{e}");
        assert!(e.reason.contains("unknown write mode `fast`"), "{e}");
        assert_eq!(e.to_string(), format!("p.toml:3: {}", e.reason));

        let e = error("[[rule]]\nkey = \"a\"\ncache = \"normal\"\n\n[[rule]]\nkey = \"b\"\ncache = \"sometimes\"\n");
        assert_eq!((e.line, e.reason.contains("normal, pin or bypass")), (7, true), "{e}");

        let e = error("[[rule]]\nkey = \"a\"\nfreshness = \"revalidate after soon\"\n");
        assert_eq!(e.line, 3, "{e}");
        let e = error("[[rule]]\nkey = \"a\"\nfreshness = \"sometimes\"\n");
        assert!(e.reason.contains("immutable, revalidate"), "{e}");
        let e = error("[[rule]]\nkey = \"a\"\nupload_priority = \"urgent\"\n");
        assert_eq!((e.line, e.reason.contains("high, normal or low")), (3, true), "{e}");
        let e = error("[[rule]]\nkey = \"a\"\nmethod = \"POST\"\nwrite = \"barrier\"\n");
        assert_eq!((e.line, e.reason.contains("unknown method `POST`")), (3, true), "{e}");
        let e = error("[[rule]]\nkey = \"a\"\nmethod = []\nwrite = \"barrier\"\n");
        assert!(e.reason.contains("empty list"), "{e}");
        let e = error("[[rule]]\nkey = \"a\"\nmethod = 3\nwrite = \"barrier\"\n");
        assert_eq!(e.line, 3, "{e}");
        let e = error("[[rule]]\nkey = \"\"\nwrite = \"barrier\"\n");
        assert_eq!((e.line, e.reason.contains("`key` is empty")), (2, true), "{e}");
        let e = error("[[rule]]\nkey = \"a\"\nwirte = \"barrier\"\n");
        assert!(e.line >= 1 && e.reason.contains("wirte"), "{e}");
        let e = error("[[rule]]\nkey = \"a\"\n\n[[rule]]\nkey = \"b\"\n");
        assert_eq!((e.line, e.reason.contains("decides nothing")), (1, true), "{e}");
        let e = error("[[rule]]\nkey = \"a\"\n[rule.upload_headers]\n\"Content-Length\" = \"3\"\n");
        assert_eq!((e.line, e.reason.contains("set by Perch itself")), (4, true), "{e}");
        let e = error("[[rule]]\nkey = \"a\"\n[rule.upload_headers]\n\"x-amz-checksum-crc32\" = \"x\"\n");
        assert!(e.reason.contains("set by Perch itself"), "{e}");
        let e = error("[[rule]]\nkey = \"a\"\n[rule.upload_headers]\n\"bad name\" = \"x\"\n");
        assert!(e.reason.contains("not a header name"), "{e}");
        let e = error("[[rule]]\nkey = \"a\"\n[rule.upload_headers]\n\"x-amz-meta-a\" = \"x\\ny\"\n");
        assert!(e.reason.contains("control character"), "{e}");
        let e = error("[[rule]]\nkey = \"a\"\n[rule.upload_headers]\n\"x-amz-meta-team\" = \"Équipe\"\n");
        assert!(e.reason.contains("not US-ASCII"), "{e}");
        let e = error("[[rule]\nkey = \"a\"\n");
        assert_eq!(e.line, 1, "{e}");
        let e = error("[[rules]]\nkey = \"a\"\n");
        assert!(e.reason.contains("rules"), "{e}");
    }

    #[test]
    fn every_rules_mistake_is_named_at_once() {
        let e = error(
            "[[rule]]\nkey = \"a\"\nwrite = \"fast\"\n\n[[rule]]\nkey = \"b\"\nwrite = \"barrier\"\n\n\
             [[rule]]\nkey = \"c\"\ncache = \"sometimes\"\n",
        );
        assert_eq!(e.line, 3, "{e}");
        assert_eq!(e.later.iter().map(|l| l.line).collect::<Vec<_>>(), [11], "{e}");
        let text = e.to_string();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2, "{text}");
        assert!(
            lines[0].starts_with("p.toml:3: ") && lines[1].starts_with("p.toml:11: "),
            "{text}"
        );
    }

    #[test]
    fn the_builtin_profile_parses() {
        let p = parse(crate::rules::ORIOLEDB_PROFILE, crate::rules::ORIOLEDB_PROFILE_NAME).expect("parses");
        assert!(p.rules.len() >= 7);
        assert!(p.rules[0].from.starts_with("builtin:orioledb:"));
    }

    #[test]
    fn shorthand_flags_compile_to_rules_before_the_file() {
        use crate::shorthand;
        let flags = crate::Policy {
            rules: vec![
                shorthand::write_mode("delete:tmp/*=write_through").expect("rule"),
                shorthand::write_mode("wal/*=write_back").expect("rule"),
                shorthand::cache_revalidate("mut/*").expect("rule"),
                shorthand::upload_header("*=X-Tigris-Regions: iad").expect("rule"),
            ],
            revalidate_after: Duration::from_secs(3),
        };
        let p = crate::Policy {
            revalidate_after: Duration::from_secs(3),
            ..flags.then(crate::Policy::orioledb())
        };
        assert_eq!(p.decide("b", "tmp/x", Method::Delete).write, WriteMode::WriteThrough);
        assert_eq!(p.decide("b", "tmp/x", Method::Put).write, WriteMode::WriteBack);
        // The flag wins over the profile for the write mode; the profile still bypasses wal.
        let d = p.decide("b", "wal/1", Method::Put);
        assert_eq!((d.write, d.cache), (WriteMode::WriteBack, CacheClass::Bypass));
        assert_eq!(
            p.decide("b", "data/1/global/pg_control", Method::Put).write,
            WriteMode::Barrier
        );
        assert_eq!(
            p.decide("b", "mut/a", Method::Get).freshness,
            Freshness::Revalidate(Some(Duration::from_secs(3)))
        );
        let d = p.decide("b", "x", Method::Put);
        assert_eq!(d.upload_headers[0].name, "x-tigris-regions");
        assert_eq!(p.rules[3].from, "--upload-header *=X-Tigris-Regions: iad");
        for bad in ["x=fast", "nothing", "=barrier"] {
            assert!(shorthand::write_mode(bad).is_err(), "{bad}");
        }
        for bad in ["*", "*=NoColon", "=a: b", "*=bad name: x", "*=content-md5: x"] {
            assert!(shorthand::upload_header(bad).is_err(), "{bad}");
        }
        assert!(shorthand::cache_revalidate("").is_err());
        let explained = p.explain("b", "wal/1", Method::Put);
        assert!(explained.contains("write:           write_back"), "{explained}");
        assert!(
            explained.contains("rule 2 (--write-mode wal/*=write_back)"),
            "{explained}"
        );
        assert!(explained.contains("cache:           bypass"), "{explained}");
        assert!(explained.contains("\"WAL segments\""), "{explained}");
        assert!(
            explained.contains("upload header:   x-tigris-regions: iad"),
            "{explained}"
        );
    }
}
