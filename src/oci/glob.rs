//! Glob patterns of the configuration: tags (`immutable_tags`), repositories, upstreams and users
//! (`[[access]]`, `allow` / `deny`). Pure.

/// `*` matches any run of characters; everything else matches itself.
pub(crate) fn glob_match(pattern: &str, s: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return pattern == s;
    }
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if !s.starts_with(first) || s.len() < first.len() + last.len() || !s.ends_with(last) {
        return false;
    }
    let mut rest = &s[first.len()..s.len() - last.len()];
    for mid in &parts[1..parts.len() - 1] {
        match rest.find(mid) {
            Some(i) => rest = &rest[i + mid.len()..],
            None => return false,
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        let cases = [
            ("v*", "v1.2", true),
            ("v*", "latest", false),
            ("*-alpine", "3.19-alpine", true),
            ("1.*.*", "1.2.3", true),
            ("1.*.*", "1.2", false),
            ("latest", "latest", true),
            ("*", "", true),
            ("a*b*c", "abc", true),
            ("a*b*c", "acb", false),
        ];
        for (p, s, want) in cases {
            assert_eq!(glob_match(p, s), want, "{p} {s}");
        }
    }
}
