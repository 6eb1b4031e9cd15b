//! Which `destination_fqdn` rules a queried name matches, answered with a few hash lookups per
//! label of the name, however many patterns the policy has.

use policy::{FqdnPattern, Policy, MAX_DNS_LABEL as MAX_LABEL, MAX_DNS_NAME as MAX_NAME};
use rustc_hash::FxHashMap;
use std::borrow::Cow;

/// A rule, by its position in `Policy::rules`. Numbers, not ids, so that the cache can store a
/// rule in four bytes; the caller maps it back to `rules[idx].id` for the data plane.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RuleIdx(pub u32);

impl RuleIdx {
    pub fn index(self) -> usize {
        self.0 as usize
    }
}

/// What the proxy's behaviour depends on in a policy: its name rules by position (the
/// matcher's numbering), the `dns` settings and the per-client rate. A reload that leaves it
/// unchanged can keep the running proxy, its cache and its committer.
#[derive(Clone, Debug, PartialEq)]
pub struct PolicyKey {
    rules: Vec<(usize, String, Vec<FqdnPattern>)>,
    settings: policy::DnsSettings,
    qps_per_client: u32,
}

impl PolicyKey {
    pub fn of(p: &Policy) -> PolicyKey {
        PolicyKey {
            rules: p
                .rules
                .iter()
                .enumerate()
                .filter(|(_, r)| !r.destination_fqdn.is_empty())
                .map(|(i, r)| (i, r.id.clone(), r.destination_fqdn.clone()))
                .collect(),
            settings: p.dns.clone(),
            qps_per_client: p.defaults.dns_qps_per_client,
        }
    }
}

/// The patterns of every name rule, indexed by the name they are anchored at.
#[derive(Clone, Debug, Default)]
pub struct Matcher {
    /// `github.com`: the name itself.
    exact: FxHashMap<Box<str>, Vec<RuleIdx>>,
    /// `*.example.com`, keyed by `example.com`: names exactly one label below.
    one_label: FxHashMap<Box<str>, Vec<RuleIdx>>,
    /// `.example.com`, keyed by `example.com`: the name and everything below it.
    subtree: FxHashMap<Box<str>, Vec<RuleIdx>>,
}

impl Matcher {
    /// Every rule of `policy` with a non-empty `destination_fqdn`, numbered by position.
    pub fn from_policy(policy: &Policy) -> Matcher {
        // A validated policy has at most 100,000 rules; the range only keeps the zip total.
        Matcher::new(
            (0..=u32::MAX)
                .map(RuleIdx)
                .zip(&policy.rules)
                .map(|(idx, rule)| (idx, rule.destination_fqdn.as_slice())),
        )
    }

    /// Rules given as (index, patterns). An index may appear more than once; its patterns add up.
    pub fn new<'a>(rules: impl IntoIterator<Item = (RuleIdx, &'a [FqdnPattern])>) -> Matcher {
        let mut m = Matcher::default();
        for (idx, patterns) in rules {
            for pattern in patterns {
                let (map, base) = match pattern {
                    FqdnPattern::Exact(b) => (&mut m.exact, b),
                    FqdnPattern::OneLabel(b) => (&mut m.one_label, b),
                    FqdnPattern::Subtree(b) => (&mut m.subtree, b),
                };
                // Validated patterns are canonical already. A hand-built one is folded the way
                // `FqdnPattern::matches` compares (ASCII case-insensitively); a base that is not
                // a well-formed name (trailing dot, empty label) can never match there, so it
                // is not indexed here either.
                if base.ends_with('.') {
                    continue;
                }
                let Some(base) = normalize(base) else {
                    continue;
                };
                map.entry(Box::from(base.as_ref())).or_default().push(idx);
            }
        }
        for map in [&mut m.exact, &mut m.one_label, &mut m.subtree] {
            for list in map.values_mut() {
                list.sort_unstable();
                list.dedup();
            }
        }
        m
    }

    /// The rules with a pattern matching `name`, each once, in rule order. Case-insensitive, one
    /// trailing dot ignored; a name with an empty label, a label over 63 octets or over 253
    /// characters matches nothing (no DNS message can carry it).
    pub fn rules_for(&self, name: &str) -> Vec<RuleIdx> {
        let mut out = Vec::new();
        self.extend_rules_for(name, &mut out);
        out.sort_unstable();
        out.dedup();
        out
    }

    /// Whether any rule matches `name`; `dns.unlisted: nxdomain` refuses the others.
    pub fn is_listed(&self, name: &str) -> bool {
        let mut listed = false;
        self.each_list(name, |_| listed = true);
        listed
    }

    /// Whether no rule has a name pattern at all.
    pub fn is_empty(&self) -> bool {
        self.exact.is_empty() && self.one_label.is_empty() && self.subtree.is_empty()
    }

    /// Appends the matching rules to `out`, unsorted and possibly repeated: the cache unions
    /// the rules of a whole CNAME chain and sorts once.
    pub(crate) fn extend_rules_for(&self, name: &str, out: &mut Vec<RuleIdx>) {
        self.each_list(name, |rules| out.extend_from_slice(rules));
    }

    /// Calls `f` with every index list whose patterns match `name`: the name itself, then each
    /// parent suffix, so the cost is one or two lookups per label.
    fn each_list<'s>(&'s self, name: &str, mut f: impl FnMut(&'s [RuleIdx])) {
        let Some(name) = normalize(name) else {
            return;
        };
        let name: &str = &name;
        let mut visit = |map: &'s FxHashMap<Box<str>, Vec<RuleIdx>>, key: &str| {
            if let Some(rules) = map.get(key) {
                f(rules);
            }
        };
        visit(&self.exact, name);
        visit(&self.subtree, name);
        let mut rest = name;
        let mut depth = 0;
        while let Some((_, parent)) = rest.split_once('.') {
            depth += 1;
            if depth == 1 {
                visit(&self.one_label, parent);
            }
            visit(&self.subtree, parent);
            rest = parent;
        }
    }
}

/// `name` in the form the indexes use: ASCII lowercase, one trailing dot removed. `None` for
/// names no DNS message can carry, which therefore match nothing.
pub(crate) fn normalize(name: &str) -> Option<Cow<'_, str>> {
    let name = name.strip_suffix('.').unwrap_or(name);
    if name.is_empty() || name.len() > MAX_NAME {
        return None;
    }
    if name
        .split('.')
        .any(|label| label.is_empty() || label.len() > MAX_LABEL)
    {
        return None;
    }
    if name.bytes().any(|b| b.is_ascii_uppercase()) {
        Some(Cow::Owned(name.to_ascii_lowercase()))
    } else {
        Some(Cow::Borrowed(name))
    }
}

/// Whether `name` (as found in an answer) is `normalized` (a result of [`normalize`]).
pub(crate) fn same_name(name: &str, normalized: &str) -> bool {
    name.strip_suffix('.')
        .unwrap_or(name)
        .eq_ignore_ascii_case(normalized)
}

/// Test helper: rule i gets the patterns in `rules[i]`.
#[cfg(test)]
pub(crate) fn matcher(rules: &[&[&str]]) -> Matcher {
    let rules: Vec<Vec<FqdnPattern>> = rules
        .iter()
        .map(|ps| ps.iter().map(|p| tests::pat(p)).collect())
        .collect();
    Matcher::new(
        rules
            .iter()
            .enumerate()
            .map(|(i, ps)| (RuleIdx(i as u32), ps.as_slice())),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    pub(crate) fn pat(s: &str) -> FqdnPattern {
        match FqdnPattern::parse(s) {
            Ok(p) => p,
            Err(e) => panic!("{s}: {e}"),
        }
    }

    fn idx(v: &[u32]) -> Vec<RuleIdx> {
        v.iter().copied().map(RuleIdx).collect()
    }

    #[test]
    fn three_forms() {
        let m = matcher(&[&["github.com"], &["*.example.com"], &[".example.com"]]);
        assert_eq!(m.rules_for("github.com"), idx(&[0]));
        assert_eq!(m.rules_for("api.github.com"), idx(&[]));
        assert_eq!(m.rules_for("example.com"), idx(&[2]));
        assert_eq!(m.rules_for("a.example.com"), idx(&[1, 2]));
        assert_eq!(m.rules_for("a.b.example.com"), idx(&[2]));
        assert_eq!(m.rules_for("badexample.com"), idx(&[]));
        assert_eq!(m.rules_for("com"), idx(&[]));
    }

    #[test]
    fn case_and_trailing_dot() {
        let m = matcher(&[&["github.com"], &["*.example.com"]]);
        assert_eq!(m.rules_for("GitHub.COM."), idx(&[0]));
        assert_eq!(m.rules_for("WWW.Example.Com"), idx(&[1]));
        assert_eq!(m.rules_for("github.com.."), idx(&[]));
        assert_eq!(m.rules_for(".github.com"), idx(&[]));
        assert_eq!(m.rules_for("a..example.com"), idx(&[]));
        assert_eq!(m.rules_for(""), idx(&[]));
        assert_eq!(m.rules_for("."), idx(&[]));
    }

    #[test]
    fn each_rule_once_in_rule_order() {
        let m = matcher(&[
            &[".example.com", "*.example.com", "a.example.com"],
            &["nothing.test"],
            &["a.example.com"],
        ]);
        assert_eq!(m.rules_for("a.example.com"), idx(&[0, 2]));
        // The same rule given twice (e.g. by a caller merging lists) is still reported once.
        let ps = [pat("x.test")];
        let m = Matcher::new([(RuleIdx(3), &ps[..]), (RuleIdx(3), &ps[..])]);
        assert_eq!(m.rules_for("x.test"), idx(&[3]));
    }

    #[test]
    fn oversized_names_match_nothing() {
        let m = matcher(&[&[".com"]]);
        assert_eq!(m.rules_for(&format!("{}.com", "a".repeat(63))), idx(&[0]));
        assert_eq!(m.rules_for(&format!("{}.com", "a".repeat(64))), idx(&[]));
        let long = format!("{}com", "abcdefghi.".repeat(25)); // 253 characters
        assert_eq!(m.rules_for(&long), idx(&[0]));
        assert_eq!(m.rules_for(&format!("{long}.")), idx(&[0]));
        assert_eq!(m.rules_for(&format!("x{long}")), idx(&[]));
    }

    #[test]
    fn listed() {
        let m = matcher(&[&["github.com"], &[".example.com"]]);
        assert!(m.is_listed("GITHUB.com."));
        assert!(m.is_listed("deep.down.example.com"));
        assert!(!m.is_listed("example.org"));
        assert!(!Matcher::default().is_listed("github.com"));
        assert!(Matcher::default().is_empty());
        assert!(!m.is_empty());
    }

    #[test]
    fn non_ascii_does_not_panic() {
        let m = matcher(&[&["*.example.com"], &[".example.com"]]);
        assert_eq!(m.rules_for("é.example.com"), idx(&[0, 1]));
        assert_eq!(m.rules_for("ééééééééé"), idx(&[]));
        assert_eq!(m.rules_for("É.EXAMPLE.COM"), idx(&[0, 1]));
    }

    #[test]
    fn from_policy_numbers_rules_by_position() {
        let text = r#"
rules:
  - id: plain
    action: accept
    destination: 192.0.2.1
  - id: gh
    action: accept
    destination_fqdn: [github.com, "*.githubusercontent.com"]
  - id: ex
    action: deny
    destination_fqdn: [.example.com]
"#;
        let checked = match policy::parse_str(text, "rules.yaml") {
            Ok(c) => c,
            Err(e) => panic!("{e}"),
        };
        let m = Matcher::from_policy(&checked.policy);
        assert_eq!(m.rules_for("github.com"), idx(&[1]));
        assert_eq!(m.rules_for("raw.githubusercontent.com"), idx(&[1]));
        assert_eq!(m.rules_for("www.example.com"), idx(&[2]));
        assert_eq!(m.rules_for("192.0.2.1"), idx(&[]));
    }

    #[test]
    fn hand_built_patterns_follow_fqdn_pattern_matches() {
        let odd = [
            FqdnPattern::Exact("GitHub.com".into()),
            FqdnPattern::Exact("a.com.".into()),
            FqdnPattern::Subtree(String::new()),
            FqdnPattern::OneLabel("b..com".into()),
        ];
        let m = Matcher::new([(RuleIdx(0), &odd[..])]);
        for name in ["github.com", "a.com", "a.com.", "x.b..com", "com", "x"] {
            let naive = odd.iter().any(|p| p.matches(name));
            assert_eq!(m.is_listed(name), naive, "{name}");
        }
    }

    // Names and patterns from a tiny alphabet, so that they collide often.
    fn label() -> impl Strategy<Value = String> {
        prop::sample::select(vec!["a", "b", "ab", "A", "Ab", "x-1"]).prop_map(String::from)
    }

    fn name() -> impl Strategy<Value = String> {
        (prop::collection::vec(label(), 0..5), any::<bool>(), 0..20u8).prop_map(
            |(labels, dot, odd)| {
                let mut n = labels.join(".");
                if dot {
                    n.push('.');
                }
                // Occasionally malformed: empty labels, or a lone dot.
                match odd {
                    0 => n.insert(0, '.'),
                    1 => n.push_str(".."),
                    2 => n = n.replacen('.', "..", 1),
                    _ => {}
                }
                n
            },
        )
    }

    fn pattern() -> impl Strategy<Value = FqdnPattern> {
        let base = prop::collection::vec(prop::sample::select(vec!["a", "b", "ab", "x-1"]), 1..4)
            .prop_map(|l| l.join("."));
        (0..3u8, base).prop_map(|(kind, base)| match kind {
            0 => FqdnPattern::Exact(base),
            1 => FqdnPattern::OneLabel(base),
            _ => FqdnPattern::Subtree(base),
        })
    }

    fn naive(rules: &[Vec<FqdnPattern>], name: &str) -> Vec<RuleIdx> {
        rules
            .iter()
            .enumerate()
            .filter(|(_, ps)| ps.iter().any(|p| p.matches(name)))
            .map(|(i, _)| RuleIdx(i as u32))
            .collect()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn rules_for_equals_naive(
            rules in prop::collection::vec(prop::collection::vec(pattern(), 0..4), 0..8),
            names in prop::collection::vec(name(), 1..16),
        ) {
            let m = Matcher::new(
                rules.iter().enumerate().map(|(i, ps)| (RuleIdx(i as u32), ps.as_slice())),
            );
            for n in &names {
                let want = naive(&rules, n);
                prop_assert_eq!(m.rules_for(n), want.clone(), "name {:?}", n);
                prop_assert_eq!(m.is_listed(n), !want.is_empty(), "name {:?}", n);
            }
        }

        #[test]
        fn matching_names_match_whatever_their_case(
            rules in prop::collection::vec(prop::collection::vec(pattern(), 1..4), 1..6),
            pick in any::<prop::sample::Index>(),
            prefix in prop::collection::vec(label(), 0..3),
            upper in any::<bool>(),
        ) {
            // Names built from a pattern's own base, so that most of them match something.
            let all: Vec<&FqdnPattern> = rules.iter().flatten().collect();
            let base = pick.get(&all).base();
            let mut name = prefix.join(".");
            if !name.is_empty() {
                name.push('.');
            }
            name.push_str(base);
            if upper {
                name = name.to_ascii_uppercase();
            }
            let m = Matcher::new(
                rules.iter().enumerate().map(|(i, ps)| (RuleIdx(i as u32), ps.as_slice())),
            );
            prop_assert_eq!(m.rules_for(&name), naive(&rules, &name));
        }
    }
}
