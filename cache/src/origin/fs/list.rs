//! Listings of `FsOrigin`: one page of ListObjectsV2 over a bucket's sorted index, with S3's
//! semantics (prefix, delimiter, start-after, continuation tokens).

use super::*;

/// Where a listing resumes: after a key, or after every key under a common prefix.
pub(super) enum Token {
    Key(String),
    Prefix(String),
}

impl Token {
    fn encode(&self) -> String {
        match self {
            Token::Key(k) => format!("k{}", hex::encode(k)),
            Token::Prefix(p) => format!("p{}", hex::encode(p)),
        }
    }

    fn decode(token: &str) -> OriginResult<Token> {
        let bad = || OriginError::rejected(400, "InvalidArgument", "The continuation token provided is incorrect");
        let decode = |hex_part: &str| {
            hex::decode(hex_part)
                .ok()
                .and_then(|b| String::from_utf8(b).ok())
                .ok_or_else(bad)
        };
        if let Some(rest) = token.strip_prefix('k') {
            Ok(Token::Key(decode(rest)?))
        } else if let Some(rest) = token.strip_prefix('p') {
            Ok(Token::Prefix(decode(rest)?))
        } else {
            Err(bad())
        }
    }
}

/// The least string greater than every string that starts with `s`, if there is one.
pub(super) fn successor(s: &str) -> Option<String> {
    let mut chars: Vec<char> = s.chars().collect();
    while let Some(c) = chars.pop() {
        let next = match c as u32 {
            0xD7FF => Some('\u{E000}'),
            n => char::from_u32(n + 1),
        };
        if let Some(n) = next {
            chars.push(n);
            return Some(chars.into_iter().collect());
        }
    }
    None
}

/// One page of a ListObjectsV2 over the index, with S3's semantics.
pub(super) fn list_index(index: &BTreeMap<String, ListEntry>, q: &ListQuery) -> OriginResult<ListPage> {
    let mut page = ListPage::default();
    if q.max_keys == 0 {
        return Ok(page);
    }
    let prefix = q.prefix.as_deref().unwrap_or("");
    let delimiter = q.delimiter.as_deref().filter(|d| !d.is_empty());
    let marker = match &q.continuation {
        Some(t) => Some(Token::decode(t)?),
        None => q.start_after.clone().map(Token::Key),
    };
    let mut lower: Bound<String> = Bound::Included(prefix.to_owned());
    // Nothing at or before this is returned, common prefixes included.
    let mut floor: Option<String> = None;
    match marker {
        None => {}
        Some(Token::Key(k)) => {
            if k.as_str() >= prefix {
                lower = Bound::Excluded(k.clone());
            }
            floor = Some(k);
        }
        Some(Token::Prefix(p)) => {
            match successor(&p) {
                Some(s) if s.as_str() > prefix => lower = Bound::Included(s),
                Some(_) => {}
                None => return Ok(page),
            }
            floor = Some(p);
        }
    }

    let mut count = 0usize;
    let mut last: Option<Token> = None;
    loop {
        let bound = lower.as_ref().map(String::as_str);
        let Some((key, entry)) = index.range::<str, _>((bound, Bound::Unbounded)).next() else {
            break;
        };
        if !key.starts_with(prefix) {
            break;
        }
        if count == q.max_keys {
            page.next = last.as_ref().map(Token::encode);
            break;
        }
        if let Some(d) = delimiter
            && let Some(i) = key[prefix.len()..].find(d)
        {
            let cp = &key[..prefix.len() + i + d.len()];
            if floor.as_deref().is_none_or(|f| cp > f) {
                page.common_prefixes.push(cp.to_owned());
                count += 1;
                last = Some(Token::Prefix(cp.to_owned()));
            }
            match successor(cp) {
                Some(s) => lower = Bound::Included(s),
                None => break,
            }
            continue;
        }
        page.objects.push(entry.clone());
        count += 1;
        last = Some(Token::Key(key.clone()));
        lower = Bound::Excluded(key.clone());
    }
    Ok(page)
}
