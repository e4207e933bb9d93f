//! Tags list pages in the mirror's namespace.
//!
//! Upstreams that paginate send a `Link` header, which is rewritten to point at the mirror. Some
//! (distribution 2.8 among them) ignore `n` and `last`; then the page is cut here, in lexical
//! order as the distribution spec asks, and a `Link` to the next page is added. The body's `name`
//! is the name the client asked for.

use bytes::Bytes;

/// A tags list body.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct TagList {
    name: String,
    #[serde(default)]
    tags: Option<Vec<String>>,
}

/// The page to send: body, and the `last` value for a next-page link if more tags remain.
pub(super) fn page(
    body: &[u8],
    client_name: &str,
    n: Option<usize>,
    last: Option<&str>,
) -> Option<(Bytes, Option<String>)> {
    let mut list: TagList = serde_json::from_slice(body).ok()?;
    list.name = client_name.to_string();
    let mut tags = list.tags.take().unwrap_or_default();
    tags.sort();
    if let Some(last) = last {
        tags.retain(|t| t.as_str() > last);
    }
    let mut next = None;
    if let Some(n) = n {
        if tags.len() > n {
            tags.truncate(n);
            next = tags.last().cloned();
        }
    }
    list.tags = Some(tags);
    Some((Bytes::from(serde_json::to_vec(&list).ok()?), next))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tags(b: &Bytes) -> (String, Vec<String>) {
        let l: TagList = serde_json::from_slice(b).unwrap();
        (l.name, l.tags.unwrap())
    }

    #[test]
    fn pages() {
        let body = br#"{"name":"team/multi","tags":["v1","v4","v2","list","v3"]}"#;
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        let cases: Vec<(Option<usize>, Option<&str>, Vec<String>, Option<&str>)> = vec![
            (None, None, s(&["list", "v1", "v2", "v3", "v4"]), None),
            (Some(2), None, s(&["list", "v1"]), Some("v1")),
            (Some(2), Some("v1"), s(&["v2", "v3"]), Some("v3")),
            (Some(2), Some("v3"), s(&["v4"]), None),
            (Some(10), Some("v4"), s(&[]), None),
            (Some(0), None, s(&[]), None),
        ];
        for (n, last, want, want_next) in cases {
            let (b, next) = page(body, "tok/team/multi", n, last).unwrap();
            assert_eq!(
                tags(&b),
                ("tok/team/multi".to_string(), want),
                "{n:?} {last:?}"
            );
            assert_eq!(next.as_deref(), want_next, "{n:?} {last:?}");
        }
        assert!(page(b"not json", "x", None, None).is_none());
        let (b, _) = page(br#"{"name":"x","tags":null}"#, "y", Some(1), None).unwrap();
        assert_eq!(tags(&b).1, Vec::<String>::new());
    }
}
