//! `destination_fqdn` patterns: parsing the three forms (exact, `*.`, `.`) and deciding
//! whether a queried DNS name matches, or one pattern matches everything another does.

use crate::model::FqdnPattern;

/// Longest DNS name in presentation form, without the trailing dot.
pub const MAX_NAME: usize = 253;
pub const MAX_LABEL: usize = 63;

impl FqdnPattern {
    /// Parses `github.com`, `*.example.com` or `.example.com`. Patterns must already be in
    /// canonical form (lowercase, no trailing dot) so that what the file says is what the
    /// compiler and the DNS proxy compare against.
    pub fn parse(s: &str) -> Result<FqdnPattern, String> {
        if s.is_empty() {
            return Err("empty name pattern".into());
        }
        if s == "*" || s == "*." {
            return Err(
                "'*' alone would match every name; use '*.example.com' or omit destination_fqdn"
                    .into(),
            );
        }
        if let Some(base) = s.strip_prefix("*.") {
            check_name(base, s)?;
            Ok(FqdnPattern::OneLabel(base.to_string()))
        } else if let Some(base) = s.strip_prefix('.') {
            check_name(base, s)?;
            Ok(FqdnPattern::Subtree(base.to_string()))
        } else {
            check_name(s, s)?;
            Ok(FqdnPattern::Exact(s.to_string()))
        }
    }

    /// The name this pattern is anchored at (`example.com` for all three forms).
    pub fn base(&self) -> &str {
        match self {
            FqdnPattern::Exact(n) | FqdnPattern::OneLabel(n) | FqdnPattern::Subtree(n) => n,
        }
    }

    /// Whether a queried name matches: case-insensitive, one trailing dot ignored. Names with
    /// empty labels never match (DNS on the wire cannot produce them).
    pub fn matches(&self, name: &str) -> bool {
        let name = name.strip_suffix('.').unwrap_or(name);
        if name.is_empty() || name.split('.').any(str::is_empty) {
            return false;
        }
        match self {
            FqdnPattern::Exact(n) => name.eq_ignore_ascii_case(n),
            FqdnPattern::OneLabel(n) => match strip_suffix_ci(name, n) {
                // `prefix` is "label." for exactly one more label.
                Some(prefix) => prefix
                    .strip_suffix('.')
                    .is_some_and(|label| !label.is_empty() && !label.contains('.')),
                None => false,
            },
            FqdnPattern::Subtree(n) => {
                name.eq_ignore_ascii_case(n)
                    || strip_suffix_ci(name, n).is_some_and(|p| p.len() > 1 && p.ends_with('.'))
            }
        }
    }

    /// Whether every name `other` matches is also matched by `self`.
    pub fn covers(&self, other: &FqdnPattern) -> bool {
        match (self, other) {
            (FqdnPattern::Exact(a), FqdnPattern::Exact(b)) => a == b,
            (FqdnPattern::Exact(_), _) => false,
            (FqdnPattern::OneLabel(_), FqdnPattern::Exact(b)) => self.matches(b),
            (FqdnPattern::OneLabel(a), FqdnPattern::OneLabel(b)) => a == b,
            (FqdnPattern::OneLabel(_), FqdnPattern::Subtree(_)) => false,
            (FqdnPattern::Subtree(_), FqdnPattern::Exact(b)) => self.matches(b),
            // `*.b` names are all below `b`, so they are inside the subtree when `b` is.
            (FqdnPattern::Subtree(_), FqdnPattern::OneLabel(b) | FqdnPattern::Subtree(b)) => {
                self.matches(b)
            }
        }
    }
}

/// `name` without a case-insensitive `suffix`, if it ends with it.
fn strip_suffix_ci<'a>(name: &'a str, suffix: &str) -> Option<&'a str> {
    let cut = name.len().checked_sub(suffix.len())?;
    if !name.is_char_boundary(cut) {
        return None;
    }
    let (head, tail) = name.split_at(cut);
    tail.eq_ignore_ascii_case(suffix).then_some(head)
}

/// Validates the name part of a pattern; `whole` is the pattern as written, for messages.
fn check_name(name: &str, whole: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err(format!("'{whole}' has no name after the prefix"));
    }
    if name.ends_with('.') {
        return Err(format!(
            "'{whole}' ends with a dot; write it without the trailing dot"
        ));
    }
    if name.len() > MAX_NAME {
        return Err(format!(
            "name is {} characters long; at most {MAX_NAME} allowed",
            name.len()
        ));
    }
    for label in name.split('.') {
        if label.is_empty() {
            return Err(format!("'{whole}' has an empty label"));
        }
        if label.contains('*') {
            return Err(format!(
                "'{whole}': '*' is only allowed as the whole first label, as in '*.example.com'"
            ));
        }
        if label.len() > MAX_LABEL {
            return Err(format!(
                "'{whole}' has a label of {} characters; at most {MAX_LABEL} allowed",
                label.len()
            ));
        }
        if label.bytes().any(|b| b.is_ascii_uppercase()) {
            return Err(format!(
                "'{whole}' must be lowercase (write '{}')",
                whole.to_ascii_lowercase()
            ));
        }
        if let Some(c) = label
            .chars()
            .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-'))
        {
            return Err(format!(
                "'{whole}' contains {c:?}; only a-z, 0-9 and '-' are allowed in a label"
            ));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(format!(
                "'{whole}' has a label that starts or ends with '-'"
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> FqdnPattern {
        match FqdnPattern::parse(s) {
            Ok(p) => p,
            Err(e) => panic!("{s}: {e}"),
        }
    }

    #[test]
    fn forms() {
        assert_eq!(p("github.com"), FqdnPattern::Exact("github.com".into()));
        assert_eq!(
            p("*.example.com"),
            FqdnPattern::OneLabel("example.com".into())
        );
        assert_eq!(
            p(".example.com"),
            FqdnPattern::Subtree("example.com".into())
        );
        assert_eq!(p("*.example.com").to_string(), "*.example.com");
        assert_eq!(p(".example.com").to_string(), ".example.com");
    }

    #[test]
    fn rejects() {
        for bad in [
            "", "*", "**.a.com", "a.*.com", "*a.com", "A.com", "a.com.", "a..com", ".", "*.",
            "-a.com", "a-.com", "a_b.com", "a b.com", "ä.com",
        ] {
            assert!(FqdnPattern::parse(bad).is_err(), "{bad:?} accepted");
        }
        let long_label = format!("{}.com", "a".repeat(64));
        assert!(FqdnPattern::parse(&long_label).is_err());
        assert!(FqdnPattern::parse(&format!("{}.com", "a".repeat(63))).is_ok());
        let long_name = format!("{}a", "abcdefghi.".repeat(25)); // 251 chars
        assert!(FqdnPattern::parse(&long_name).is_ok());
        assert!(FqdnPattern::parse(&format!("{long_name}bcd")).is_err()); // 254
    }

    #[test]
    fn matching() {
        let exact = p("github.com");
        assert!(exact.matches("github.com"));
        assert!(exact.matches("GitHub.COM."));
        assert!(!exact.matches("api.github.com"));
        assert!(!exact.matches("github.com.."));

        let one = p("*.example.com");
        assert!(one.matches("a.example.com"));
        assert!(one.matches("A.Example.com."));
        assert!(!one.matches("example.com"));
        assert!(!one.matches("a.b.example.com"));
        assert!(!one.matches(".example.com"));
        assert!(!one.matches("aexample.com"));

        let sub = p(".example.com");
        assert!(sub.matches("example.com"));
        assert!(sub.matches("a.b.example.com."));
        assert!(!sub.matches("badexample.com"));
        assert!(!sub.matches("com"));
        // Multi-byte input must not panic on the suffix cut.
        assert!(!sub.matches("ééééééééééééééééé"));
    }

    #[test]
    fn covering() {
        assert!(p(".example.com").covers(&p("*.example.com")));
        assert!(p(".example.com").covers(&p("*.a.example.com")));
        assert!(p(".example.com").covers(&p(".a.example.com")));
        assert!(p(".example.com").covers(&p("example.com")));
        assert!(!p(".a.example.com").covers(&p(".example.com")));
        assert!(p("*.example.com").covers(&p("x.example.com")));
        assert!(!p("*.example.com").covers(&p("example.com")));
        assert!(!p("*.example.com").covers(&p(".example.com")));
        assert!(!p("*.example.com").covers(&p("*.a.example.com")));
        assert!(!p("example.com").covers(&p("*.example.com")));
    }
}
