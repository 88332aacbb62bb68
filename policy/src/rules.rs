//! The policy: ordered rules matched on bucket, key glob and method, and the decision they give
//! a request (write mode, cache class, freshness, upload headers, upload priority).

use std::fmt;
use std::str::FromStr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use crate::{Glob, ValueError, WriteMode};

/// The request methods a rule can be limited to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Method {
    Get,
    Head,
    Put,
    Delete,
}

impl Method {
    pub const ALL: [Method; 4] = [Method::Get, Method::Head, Method::Put, Method::Delete];

    pub fn as_str(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Head => "HEAD",
            Method::Put => "PUT",
            Method::Delete => "DELETE",
        }
    }
}

impl FromStr for Method {
    type Err = ValueError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_uppercase().as_str() {
            "GET" => Ok(Method::Get),
            "HEAD" => Ok(Method::Head),
            "PUT" => Ok(Method::Put),
            "DELETE" => Ok(Method::Delete),
            _ => Err(format!("unknown method `{s}` (use GET, HEAD, PUT or DELETE)").into()),
        }
    }
}

/// What the cache does with a key's copies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CacheClass {
    /// Kept while there is room; evicted least useful first.
    #[default]
    Normal,
    /// Kept: never evicted (it still counts against `--cache-disk-bytes`: other copies make room).
    Pin,
    /// Not kept: a read streams from the origin and keeps no copy.
    Bypass,
}

impl CacheClass {
    pub fn as_str(self) -> &'static str {
        match self {
            CacheClass::Normal => "normal",
            CacheClass::Pin => "pin",
            CacheClass::Bypass => "bypass",
        }
    }
}

impl FromStr for CacheClass {
    type Err = ValueError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim() {
            "normal" => Ok(CacheClass::Normal),
            "pin" => Ok(CacheClass::Pin),
            "bypass" => Ok(CacheClass::Bypass),
            other => Err(format!("unknown cache class `{other}` (use normal, pin or bypass)").into()),
        }
    }
}

/// Whether a cached copy may have changed at the origin.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Freshness {
    /// Never rewritten once written: a cached copy is served without asking the origin.
    #[default]
    Immutable,
    /// Rewritten in place: a copy older than this is revalidated with the origin; `None` is the
    /// policy's default (`--cache-revalidate-after`).
    Revalidate(Option<Duration>),
}

impl fmt::Display for Freshness {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Freshness::Immutable => f.write_str("immutable"),
            Freshness::Revalidate(None) => f.write_str("revalidate"),
            Freshness::Revalidate(Some(d)) => write!(f, "revalidate after {}", show_duration(*d)),
        }
    }
}

impl FromStr for Freshness {
    type Err = ValueError;
    /// `immutable`, `revalidate` (after the default) or `revalidate after 5s`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = s.trim();
        if t == "immutable" {
            return Ok(Freshness::Immutable);
        }
        if t == "revalidate" {
            return Ok(Freshness::Revalidate(None));
        }
        if let Some(after) = t.strip_prefix("revalidate after ") {
            let d = crate::units::parse_duration(after)?;
            return Ok(Freshness::Revalidate(Some(d)));
        }
        Err(format!("unknown freshness `{t}` (use immutable, revalidate or `revalidate after 5s`)").into())
    }
}

fn show_duration(d: Duration) -> String {
    if d.subsec_millis() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{}ms", d.as_millis())
    }
}

/// The order uploads of one epoch go up in: `high` first, `low` last.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default, Hash)]
pub enum Priority {
    High,
    #[default]
    Normal,
    Low,
}

impl Priority {
    pub fn as_str(self) -> &'static str {
        match self {
            Priority::High => "high",
            Priority::Normal => "normal",
            Priority::Low => "low",
        }
    }
}

impl FromStr for Priority {
    type Err = ValueError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim() {
            "high" => Ok(Priority::High),
            "normal" => Ok(Priority::Normal),
            "low" => Ok(Priority::Low),
            other => Err(format!("unknown upload priority `{other}` (use high, normal or low)").into()),
        }
    }
}

/// A header added to uploads: the name in lower case.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UploadHeader {
    pub name: String,
    pub value: String,
}

/// Headers Perch sets itself on an upload (or that would change what an upload means); a rule
/// cannot set them.
const RESERVED_HEADERS: &[&str] = &[
    "authorization",
    "content-length",
    "content-md5",
    "host",
    "if-match",
    "if-none-match",
    "transfer-encoding",
    "expect",
    "x-amz-content-sha256",
    "x-amz-date",
    "x-amz-security-token",
    "x-amz-decoded-content-length",
    "x-amz-sdk-checksum-algorithm",
    "x-amz-trailer",
];

impl UploadHeader {
    /// Checks a header name and value a rule sets.
    pub fn new(name: &str, value: &str) -> Result<UploadHeader, ValueError> {
        let name = name.trim().to_ascii_lowercase();
        if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
            return Err(format!("`{name}` is not a header name (letters, digits and `-`)").into());
        }
        if RESERVED_HEADERS.contains(&name.as_str())
            || name.starts_with("x-amz-checksum-")
            || name.starts_with("x-amz-copy-source")
            || name.starts_with("x-amz-server-side-encryption-customer-")
        {
            return Err(format!("header `{name}` is set by Perch itself, not by a rule").into());
        }
        let value = value.trim();
        if value.bytes().any(|b| b.is_ascii_control()) {
            return Err(format!("the value of header `{name}` holds a control character").into());
        }
        // HTTP lets a value carry bytes past ASCII, and S3 does not: signed as they are, such a
        // header is refused (SignatureDoesNotMatch, for good) at every upload it is on.
        if !value.is_ascii() {
            return Err(format!("the value of header `{name}` is not US-ASCII (S3 refuses such headers)").into());
        }
        Ok(UploadHeader {
            name,
            value: value.to_owned(),
        })
    }
}

/// One rule: what it matches and what it decides (unset: left to the rules after it).
#[derive(Debug, Clone, PartialEq)]
pub struct Rule {
    /// Where the rule comes from, for `explain`: `FILE:LINE` or the flag that made it.
    pub from: String,
    pub name: Option<String>,
    pub bucket: Glob,
    pub key: Glob,
    /// `None`: every method.
    pub methods: Option<Vec<Method>>,
    pub write: Option<WriteMode>,
    pub cache: Option<CacheClass>,
    pub freshness: Option<Freshness>,
    pub upload_headers: Vec<UploadHeader>,
    pub upload_priority: Option<Priority>,
}

impl Rule {
    /// A rule matching `key` in every bucket, for every method, that decides nothing yet.
    pub fn new(from: impl Into<String>, key: &str) -> Rule {
        Rule {
            from: from.into(),
            name: None,
            bucket: Glob::new("*"),
            key: Glob::new(key),
            methods: None,
            write: None,
            cache: None,
            freshness: None,
            upload_headers: Vec::new(),
            upload_priority: None,
        }
    }

    pub fn matches(&self, bucket: &str, key: &str, method: Method) -> bool {
        self.methods.as_ref().is_none_or(|m| m.contains(&method))
            && self.bucket.matches(bucket)
            && self.key.matches(key)
    }

    /// Whether the rule decides anything at all.
    pub fn decides_something(&self) -> bool {
        self.write.is_some()
            || self.cache.is_some()
            || self.freshness.is_some()
            || !self.upload_headers.is_empty()
            || self.upload_priority.is_some()
    }

    /// `FILE:LINE "name"`, as `explain` shows it.
    pub fn label(&self) -> String {
        match &self.name {
            Some(n) => format!("{} \"{n}\"", self.from),
            None => self.from.clone(),
        }
    }
}

/// The rules in order. For each decision, the first matching rule that sets it wins; a rule that
/// does not set a decision leaves it to the rules after it. Upload headers gather from every
/// matching rule, the first to name a header giving its value.
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    pub rules: Vec<Rule>,
    /// How long a `revalidate` copy is served before the origin is asked again.
    pub revalidate_after: Duration,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            rules: Vec::new(),
            revalidate_after: Duration::from_secs(5),
        }
    }
}

/// What the policy decides for one request, with the rule behind each decision (`None`: the
/// default, no rule set it).
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    pub write: WriteMode,
    pub cache: CacheClass,
    /// Resolved: `Revalidate` always carries its period.
    pub freshness: Freshness,
    pub upload_headers: Vec<UploadHeader>,
    pub upload_priority: Priority,
    pub by: DecidedBy,
}

/// Which rule (an index into `Policy::rules`) made each decision.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DecidedBy {
    pub write: Option<usize>,
    pub cache: Option<usize>,
    pub freshness: Option<usize>,
    pub upload_headers: Vec<usize>,
    pub upload_priority: Option<usize>,
}

impl Decision {
    /// The period after which a cached copy is revalidated; `None` when it is immutable.
    pub fn revalidate_after(&self) -> Option<Duration> {
        match self.freshness {
            Freshness::Immutable => None,
            Freshness::Revalidate(d) => Some(d.unwrap_or_default()),
        }
    }
}

impl Policy {
    /// The built-in OrioleDB profile (policy/profiles/orioledb.toml), the default of `perch serve`.
    pub fn orioledb() -> Policy {
        // The file ships with the crate and is tested to parse (file.rs): an empty policy here
        // would drop its barriers and write-through without a word.
        crate::file::parse(ORIOLEDB_PROFILE, ORIOLEDB_PROFILE_NAME).expect("the built-in profile parses")
    }

    /// These rules first, then `later`'s (flags before the file they shorten).
    pub fn then(mut self, later: Policy) -> Policy {
        self.rules.extend(later.rules);
        self
    }

    pub fn decide(&self, bucket: &str, key: &str, method: Method) -> Decision {
        let mut d = Decision {
            write: WriteMode::WriteBack,
            cache: CacheClass::Normal,
            freshness: Freshness::Immutable,
            upload_headers: Vec::new(),
            upload_priority: Priority::Normal,
            by: DecidedBy::default(),
        };
        for (i, rule) in self.rules.iter().enumerate() {
            if !rule.matches(bucket, key, method) {
                continue;
            }
            if let (Some(w), None) = (rule.write, d.by.write) {
                d.write = w;
                d.by.write = Some(i);
            }
            if let (Some(c), None) = (rule.cache, d.by.cache) {
                d.cache = c;
                d.by.cache = Some(i);
            }
            if let (Some(f), None) = (rule.freshness, d.by.freshness) {
                d.freshness = f;
                d.by.freshness = Some(i);
            }
            if let (Some(p), None) = (rule.upload_priority, d.by.upload_priority) {
                d.upload_priority = p;
                d.by.upload_priority = Some(i);
            }
            let mut added = false;
            for h in &rule.upload_headers {
                if !d.upload_headers.iter().any(|have| have.name == h.name) {
                    d.upload_headers.push(h.clone());
                    added = true;
                }
            }
            if added {
                d.by.upload_headers.push(i);
            }
        }
        if let Freshness::Revalidate(None) = d.freshness {
            d.freshness = Freshness::Revalidate(Some(self.revalidate_after));
        }
        d
    }

    /// `perch policy explain`: the decision for `bucket/key` and `method`, with the rule behind
    /// each part.
    pub fn explain(&self, bucket: &str, key: &str, method: Method) -> String {
        let d = self.decide(bucket, key, method);
        let by = |i: Option<usize>| match i.and_then(|i| self.rules.get(i)) {
            Some(r) => format!("rule {} ({})", i.unwrap_or(0) + 1, r.label()),
            None => "default, no rule".to_owned(),
        };
        let mut out = format!("{method} {bucket}/{key}\n", method = method.as_str());
        out += &format!("  write:           {:<24} {}\n", d.write.as_str(), by(d.by.write));
        out += &format!("  cache:           {:<24} {}\n", d.cache.as_str(), by(d.by.cache));
        out += &format!(
            "  freshness:       {:<24} {}\n",
            d.freshness.to_string(),
            by(d.by.freshness)
        );
        out += &format!(
            "  upload priority: {:<24} {}\n",
            d.upload_priority.as_str(),
            by(d.by.upload_priority)
        );
        if d.upload_headers.is_empty() {
            out += "  upload headers:  none\n";
        }
        for h in &d.upload_headers {
            let rule = self
                .rules
                .iter()
                .position(|r| r.matches(bucket, key, method) && r.upload_headers.contains(h));
            out += &format!("  upload header:   {}: {}  {}\n", h.name, h.value, by(rule));
        }
        out
    }
}

pub const ORIOLEDB_PROFILE: &str = include_str!("../profiles/orioledb.toml");
pub const ORIOLEDB_PROFILE_NAME: &str = "builtin:orioledb";

/// The policy in force, replaced whole on reload: readers take a snapshot and keep it for the
/// request.
#[derive(Debug)]
pub struct SharedPolicy {
    current: RwLock<Arc<Policy>>,
}

impl SharedPolicy {
    pub fn new(policy: Policy) -> SharedPolicy {
        SharedPolicy {
            current: RwLock::new(Arc::new(policy)),
        }
    }

    pub fn get(&self) -> Arc<Policy> {
        match self.current.read() {
            Ok(p) => p.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    pub fn replace(&self, policy: Policy) {
        let mut slot = match self.current.write() {
            Ok(p) => p,
            Err(poisoned) => poisoned.into_inner(),
        };
        *slot = Arc::new(policy);
    }

    pub fn decide(&self, bucket: &str, key: &str, method: Method) -> Decision {
        self.get().decide(bucket, key, method)
    }
}

impl Default for SharedPolicy {
    fn default() -> Self {
        SharedPolicy::new(Policy::default())
    }
}
