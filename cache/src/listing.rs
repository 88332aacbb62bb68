//! Listings as clients must see them: one page of the origin's listing merged with the writes
//! Perch has acknowledged but not yet uploaded (added or replaced keys shown, deleted ones hidden).
//!
//! Pages resume from the last name returned (a key or a common prefix): continuation tokens are
//! Perch's own (`p1` + the hex of that name), turned into `start-after` for the origin, so a page
//! boundary never depends on which keys were pending when the previous page was made.

use std::collections::{BTreeMap, HashSet};

use crate::journal::DirtyKey;
use crate::origin::{ListEntry, ListPage, ListQuery, Origin, OriginResult};

/// What a page asks for, with the position it resumes after.
#[derive(Debug, Clone, Default)]
pub struct PageQuery {
    pub prefix: String,
    pub delimiter: Option<String>,
    pub max_keys: usize,
    /// The last name of the previous page (a key, or a common prefix), or the client's start-after.
    pub after: Option<String>,
}

impl PageQuery {
    /// The origin's `start-after` for this page: past every key under `after` when it is a common
    /// prefix (so the prefix is not returned again).
    pub(crate) fn origin_start_after(&self) -> Option<String> {
        let after = self.after.as_ref()?;
        match &self.delimiter {
            Some(d)
                if after
                    .strip_prefix(self.prefix.as_str())
                    .is_some_and(|rest| rest.contains(d.as_str())) =>
            {
                Some(format!("{after}\u{10FFFF}"))
            }
            _ => Some(after.clone()),
        }
    }

    /// The common prefix `key` rolls up into, if any.
    fn rolled_up(&self, key: &str) -> Option<String> {
        let d = self.delimiter.as_deref()?;
        let rest = key.strip_prefix(self.prefix.as_str())?;
        rest.find(d).map(|i| format!("{}{}", self.prefix, &rest[..i + d.len()]))
    }

    /// Whether `name` comes after the resume position.
    fn is_after(&self, name: &str, is_prefix: bool) -> bool {
        match &self.after {
            None => true,
            Some(a) => name > a.as_str() && !(is_prefix && a.starts_with(name)),
        }
    }
}

/// A merged page, and the name the next page resumes after (`Some` when truncated).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Page {
    pub objects: Vec<ListEntry>,
    pub common_prefixes: Vec<String>,
    pub next_after: Option<String>,
}

enum Item {
    Object(ListEntry),
    Prefix,
}

/// Merges the origin's page (asked with `q.origin_start_after()` and `q.max_keys`) with the
/// newest pending version of each dirty key under the prefix, leaving out the origin's common
/// prefixes in `hidden` (every key under them deleted here).
pub(crate) fn merge(q: &PageQuery, origin: ListPage, dirty: Vec<DirtyKey>, hidden: &[String]) -> Page {
    let origin_truncated = origin.next.is_some();
    // Past the origin's last name, a truncated page knows nothing: merge only up to it (a hidden
    // prefix included: the next page resumes after it, not from the start).
    let origin_last = origin
        .objects
        .iter()
        .map(|o| o.key.as_str())
        .chain(origin.common_prefixes.iter().map(String::as_str))
        .max()
        .map(str::to_owned);
    let bound = origin_truncated.then_some(origin_last).flatten();
    let mut items: BTreeMap<String, Item> = BTreeMap::new();
    for o in origin.objects {
        items.insert(o.key.clone(), Item::Object(o));
    }
    for p in origin.common_prefixes {
        if !hidden.contains(&p) {
            items.insert(p, Item::Prefix);
        }
    }
    for d in dirty {
        if !d.key.starts_with(q.prefix.as_str()) {
            continue;
        }
        match q.rolled_up(&d.key) {
            Some(cp) => {
                if d.object.is_some() && q.is_after(&cp, true) {
                    items.entry(cp).or_insert(Item::Prefix);
                }
            }
            None => {
                if !q.is_after(&d.key, false) {
                    continue;
                }
                match d.object {
                    Some(o) => {
                        items.insert(d.key, Item::Object(o));
                    }
                    None => {
                        items.remove(&d.key);
                    }
                }
            }
        }
    }
    let mut page = Page::default();
    let mut last = None;
    let mut cut = false;
    for (name, item) in items {
        if bound.as_ref().is_some_and(|b| name > *b) {
            break;
        }
        if page.objects.len() + page.common_prefixes.len() >= q.max_keys {
            cut = true;
            break;
        }
        match item {
            Item::Object(o) => page.objects.push(o),
            Item::Prefix => page.common_prefixes.push(name.clone()),
        }
        last = Some(name);
    }
    if cut || origin_truncated {
        // Resume after the last name returned (or after the origin's bound if every name of
        // its page was hidden).
        page.next_after = last.or(bound).or_else(|| q.after.clone());
    }
    page
}

/// The origin's common `prefixes` under which every key is deleted here (`dirty` holds deletes
/// under the prefix and no write): those must not be listed either. The origin is asked what it
/// holds under each, only where such deletes are.
pub(crate) async fn emptied_prefixes(
    origin: &dyn Origin,
    bucket: &str,
    prefixes: &[String],
    dirty: &[DirtyKey],
) -> OriginResult<Vec<String>> {
    let mut hidden = Vec::new();
    for cp in prefixes {
        let under: Vec<_> = dirty.iter().filter(|d| d.key.starts_with(cp.as_str())).collect();
        if under.is_empty() || under.iter().any(|d| d.object.is_some()) {
            continue;
        }
        let deleted: HashSet<&str> = under.iter().map(|d| d.key.as_str()).collect();
        let inside = ListQuery {
            prefix: Some(cp.clone()),
            delimiter: None,
            max_keys: deleted.len() + 1,
            start_after: None,
            continuation: None,
        };
        let held = origin.list_objects(bucket, &inside).await?;
        if held.next.is_none() && held.objects.iter().all(|o| deleted.contains(o.key.as_str())) {
            hidden.push(cp.clone());
        }
    }
    Ok(hidden)
}

/// The pending versions to merge, from a snapshot taken before the origin's page and one taken
/// after it: a key in the later one is as it says; a key only in the earlier one had its version
/// uploaded meanwhile (the page may predate that upload), so the earlier one says it.
pub(crate) fn newest(before: Vec<DirtyKey>, after: Vec<DirtyKey>) -> Vec<DirtyKey> {
    let mut all: BTreeMap<String, DirtyKey> = before.into_iter().map(|d| (d.key.clone(), d)).collect();
    for d in after {
        all.insert(d.key.clone(), d);
    }
    all.into_values().collect()
}

/// Perch's continuation token for "resume after `name`".
pub fn token(name: &str) -> String {
    format!("p1{}", hex::encode(name.as_bytes()))
}

/// The name a continuation token resumes after; `None` for a token Perch did not make.
pub fn untoken(token: &str) -> Option<String> {
    let hexed = token.strip_prefix("p1")?;
    String::from_utf8(hex::decode(hexed).ok()?).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::UNIX_EPOCH;

    fn e(key: &str) -> ListEntry {
        ListEntry {
            key: key.into(),
            size: 1,
            etag: "\"x\"".into(),
            last_modified: UNIX_EPOCH,
            storage_class: None,
            checksum: None,
        }
    }

    fn put(key: &str) -> DirtyKey {
        DirtyKey {
            key: key.into(),
            object: Some(ListEntry { size: 9, ..e(key) }),
        }
    }

    fn del(key: &str) -> DirtyKey {
        DirtyKey {
            key: key.into(),
            object: None,
        }
    }

    fn names(p: &Page) -> Vec<String> {
        let mut all: Vec<String> = p.objects.iter().map(|o| o.key.clone()).collect();
        all.extend(p.common_prefixes.iter().cloned());
        all.sort();
        all
    }

    #[test]
    fn pending_puts_appear_and_pending_deletes_hide() {
        let q = PageQuery {
            max_keys: 1000,
            ..Default::default()
        };
        let origin = ListPage {
            objects: vec![e("a"), e("c"), e("d")],
            ..Default::default()
        };
        let p = merge(&q, origin, vec![put("b"), del("c"), put("d")], &[]);
        assert_eq!(names(&p), ["a", "b", "d"]);
        assert_eq!(p.objects[2].size, 9, "the pending version replaces the origin's");
        assert_eq!(p.next_after, None);
    }

    #[test]
    fn a_truncated_origin_page_bounds_the_merge_and_pages_resume_after_the_last_name() {
        let q = PageQuery {
            max_keys: 2,
            ..Default::default()
        };
        let origin = ListPage {
            objects: vec![e("a"), e("c")],
            next: Some("whatever".into()),
            ..Default::default()
        };
        // "b" fits before the bound; "z" lies past it and waits for a later page.
        let p = merge(&q, origin, vec![put("b"), put("z")], &[]);
        assert_eq!(names(&p), ["a", "b"]);
        assert_eq!(p.next_after.as_deref(), Some("b"));
        let q2 = PageQuery {
            after: Some("b".into()),
            ..q
        };
        let origin = ListPage {
            objects: vec![e("c")],
            ..Default::default()
        };
        let p = merge(&q2, origin, vec![put("b"), put("z")], &[]);
        assert_eq!(names(&p), ["c", "z"]);
        assert_eq!(p.next_after, None);
    }

    #[test]
    fn delimiters_roll_pending_keys_into_common_prefixes() {
        let q = PageQuery {
            prefix: "data/".into(),
            delimiter: Some("/".into()),
            max_keys: 1000,
            ..Default::default()
        };
        let origin = ListPage {
            objects: vec![e("data/x")],
            common_prefixes: vec!["data/1/".into()],
            ..Default::default()
        };
        let p = merge(
            &q,
            origin,
            vec![put("data/2/global/pg_control"), put("data/1/y"), del("data/x")],
            &[],
        );
        assert_eq!(p.common_prefixes, ["data/1/", "data/2/"]);
        assert!(p.objects.is_empty());
        // A page resuming after the common prefix "data/1/" does not repeat it.
        let q2 = PageQuery {
            after: Some("data/1/".into()),
            ..q
        };
        assert_eq!(q2.origin_start_after().as_deref(), Some("data/1/\u{10FFFF}"));
        let p = merge(&q2, ListPage::default(), vec![put("data/1/z"), put("data/3/a")], &[]);
        assert_eq!(p.common_prefixes, ["data/3/"]);
    }

    #[test]
    fn a_version_uploaded_while_the_page_was_made_still_counts() {
        let merged = newest(vec![del("a"), put("b")], vec![put("a")]);
        assert_eq!(merged.len(), 2);
        assert!(merged[0].object.is_some(), "the later snapshot wins for a");
        assert_eq!(
            merged[1].key, "b",
            "b was uploaded meanwhile: the earlier snapshot says it"
        );
    }

    /// A truncated origin page whose every name is hidden (common prefixes whose keys are all
    /// deleted here) still says where the next page resumes: after them, not "no more pages".
    #[test]
    fn a_truncated_page_of_hidden_prefixes_resumes_after_them() {
        let q = PageQuery {
            prefix: "P/".into(),
            delimiter: Some("/".into()),
            max_keys: 2,
            after: None,
        };
        let origin = ListPage {
            common_prefixes: vec!["P/sub0/".into(), "P/sub1/".into()],
            next: Some("whatever".into()),
            ..Default::default()
        };
        let hidden = ["P/sub0/".to_owned(), "P/sub1/".to_owned()];
        let p = merge(&q, origin, vec![del("P/sub0/x"), del("P/sub1/x")], &hidden);
        assert!(p.common_prefixes.is_empty() && p.objects.is_empty());
        assert_eq!(p.next_after.as_deref(), Some("P/sub1/"));
    }

    #[test]
    fn tokens_round_trip_and_foreign_ones_are_refused() {
        assert_eq!(untoken(&token("data/1/ü")).as_deref(), Some("data/1/ü"));
        assert_eq!(untoken("opaque-origin-token"), None);
    }
}
