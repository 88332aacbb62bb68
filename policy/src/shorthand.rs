//! The flags that predate the policy file (`--write-mode`, `--cache-revalidate`,
//! `--upload-header`) compiled into rules placed before the file's: a flag wins over the file.

use crate::ValueError;
use crate::rules::{Freshness, Method, Rule, UploadHeader};

/// `--write-mode GLOB=MODE`, or `put:GLOB=MODE` / `delete:GLOB=MODE` for one method only.
pub fn write_mode(s: &str) -> Result<Rule, ValueError> {
    let (lhs, mode) = s
        .rsplit_once('=')
        .ok_or_else(|| format!("write rule `{s}` is not GLOB=MODE"))?;
    let (methods, glob) = match lhs.split_once(':') {
        Some(("put", g)) => (Some(vec![Method::Put]), g),
        Some(("delete", g)) => (Some(vec![Method::Delete]), g),
        _ => (None, lhs),
    };
    if glob.is_empty() {
        return Err(format!("write rule `{s}` has an empty pattern").into());
    }
    let mut rule = Rule::new(format!("--write-mode {s}"), glob);
    rule.methods = methods;
    rule.write = Some(mode.parse()?);
    Ok(rule)
}

/// `--cache-revalidate GLOB`: cached copies of matching keys are revalidated after
/// `--cache-revalidate-after`.
pub fn cache_revalidate(glob: &str) -> Result<Rule, ValueError> {
    if glob.is_empty() {
        return Err("--cache-revalidate has an empty pattern".to_owned().into());
    }
    let mut rule = Rule::new(format!("--cache-revalidate {glob}"), glob);
    rule.freshness = Some(Freshness::Revalidate(None));
    Ok(rule)
}

/// `--upload-header 'GLOB=Name: value'`.
pub fn upload_header(s: &str) -> Result<Rule, ValueError> {
    let bad = || format!("upload header `{s}` is not GLOB=Name: value");
    let (glob, header) = s.split_once('=').ok_or_else(bad)?;
    let (name, value) = header.split_once(':').ok_or_else(bad)?;
    if glob.is_empty() {
        return Err(bad().into());
    }
    let header = UploadHeader::new(name, value).map_err(|e| format!("{}: {e}", bad()))?;
    let mut rule = Rule::new(format!("--upload-header {s}"), glob);
    rule.upload_headers.push(header);
    Ok(rule)
}
