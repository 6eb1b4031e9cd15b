//! Shadowed rules: a rule that an earlier rule matches completely can never decide anything.
//! Earlier rules are indexed by source, destination, name and port so 100k rules stay fast.

use crate::model::{Direction, PortRange, Protocol, Rule, State};
use ipnet::IpNet;
use rustc_hash::FxHashMap as HashMap;

/// Cover checks allowed in total. Policies where every rule looks alike on every indexed
/// field (say 100k rules differing only in interface) would otherwise be quadratic; past the
/// budget the analysis stops and says so instead of hanging `check`.
const MAX_COMPARISONS: u64 = 20_000_000;

/// A finding: rule `shadowed` (index) is covered by the earlier rule `by` (index).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Shadowed {
    pub shadowed: usize,
    pub by: usize,
}

/// Result of the analysis; `incomplete` names the first rule that was not checked.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct ShadowReport {
    pub found: Vec<Shadowed>,
    pub incomplete: Option<usize>,
}

/// Whether `i` matches every packet `j` matches (so `j`, placed after `i`, never decides).
pub(crate) fn covers(i: &Rule, j: &Rule) -> bool {
    direction_covers(i.direction, j.direction)
        && nets_cover(&i.source, &j.source)
        && destination_covers(i, j)
        && ports_cover(&i.destination_port, &j.destination_port)
        && (i.protocol.is_none() || i.protocol == j.protocol)
        && (i.state.is_none() || i.state == j.state)
        && (i.in_interface.is_none() || i.in_interface == j.in_interface)
        && (i.out_interface.is_none() || i.out_interface == j.out_interface)
}

fn direction_covers(i: Option<Direction>, j: Option<Direction>) -> bool {
    match (i, j) {
        // Omitted means ingress or egress.
        (None, None | Some(Direction::Ingress | Direction::Egress)) => true,
        (None, Some(_)) => false,
        (Some(a), Some(b)) => a == b,
        (Some(_), None) => false,
    }
}

/// An empty list is "any"; otherwise every prefix of `j` must lie inside one of `i`.
fn nets_cover(i: &[IpNet], j: &[IpNet]) -> bool {
    i.is_empty() || (!j.is_empty() && j.iter().all(|q| i.iter().any(|p| p.contains(q))))
}

fn destination_covers(i: &Rule, j: &Rule) -> bool {
    if !i.destination.is_empty() {
        // A name rule's addresses are unknown until DNS answers, so an address list never
        // provably covers it.
        return nets_cover(&i.destination, &j.destination);
    }
    if !i.destination_fqdn.is_empty() {
        return !j.destination_fqdn.is_empty()
            && j.destination_fqdn
                .iter()
                .all(|q| i.destination_fqdn.iter().any(|p| p.covers(q)));
    }
    true
}

/// Ports imply tcp|udp, so `i` with ports covers only a `j` that also has (covered) ports;
/// `j` without ports also matches icmp and portless traffic.
fn ports_cover(i: &[PortRange], j: &[PortRange]) -> bool {
    i.is_empty() || (!j.is_empty() && j.iter().all(|q| i.iter().any(|p| p.covers(q))))
}

/// What kind of destination a rule constrains.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum DstKind {
    Any,
    Addr,
    Name,
}

/// The fields that must be equal or omitted for one rule to cover another, plus which of
/// the list fields are set. Policies have few shapes, so the shapes that could cover a rule
/// are found by a short scan, and inside one shape no field is "any" for a set dimension.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct ShapeKey {
    direction: Option<Direction>,
    protocol: Option<Protocol>,
    dst: DstKind,
    has_src: bool,
    has_ports: bool,
    state: Option<State>,
    has_in: bool,
    has_out: bool,
}

impl ShapeKey {
    fn of(r: &Rule) -> ShapeKey {
        ShapeKey {
            direction: r.direction,
            protocol: r.protocol,
            dst: if !r.destination.is_empty() {
                DstKind::Addr
            } else if !r.destination_fqdn.is_empty() {
                DstKind::Name
            } else {
                DstKind::Any
            },
            has_src: !r.source.is_empty(),
            has_ports: !r.destination_port.is_empty(),
            state: r.state,
            has_in: r.in_interface.is_some(),
            has_out: r.out_interface.is_some(),
        }
    }

    /// Whether a rule of this shape could cover a rule of shape `j` (necessary, not
    /// sufficient: the values still have to be compared).
    fn may_cover(&self, j: &ShapeKey) -> bool {
        direction_covers(self.direction, j.direction)
            && (self.protocol.is_none() || self.protocol == j.protocol)
            && (self.dst == DstKind::Any || self.dst == j.dst)
            && (!self.has_src || j.has_src)
            && (!self.has_ports || j.has_ports)
            && (self.state.is_none() || self.state == j.state)
            && (!self.has_in || j.has_in)
            && (!self.has_out || j.has_out)
    }
}

/// Earlier rules of one shape, indexed by each dimension the shape sets. All lists hold rule
/// indices in ascending order.
struct Shape {
    key: ShapeKey,
    all: Vec<u32>,
    src: HashMap<IpNet, Vec<u32>>,
    src_lens: PrefixLens,
    dst: HashMap<IpNet, Vec<u32>>,
    dst_lens: PrefixLens,
    fqdn: HashMap<String, Vec<u32>>,
    port_single: HashMap<u16, Vec<u32>>,
    /// Rules with at least one multi-port range (these could cover any port).
    port_wide: Vec<u32>,
}

/// Which prefix lengths occur, per family, so ancestor lookups skip absent lengths.
struct PrefixLens {
    v4: [bool; 33],
    v6: [bool; 129],
}

impl Default for PrefixLens {
    fn default() -> Self {
        PrefixLens {
            v4: [false; 33],
            v6: [false; 129],
        }
    }
}

impl PrefixLens {
    fn add(&mut self, n: &IpNet) {
        let len = usize::from(n.prefix_len());
        match n {
            IpNet::V4(_) => self.v4[len] = true,
            IpNet::V6(_) => self.v6[len] = true,
        }
    }

    /// Every prefix of a length that occurs which contains `n` (including `n` itself).
    fn ancestors<'a>(&'a self, n: &'a IpNet) -> impl Iterator<Item = IpNet> + 'a {
        let present: &[bool] = match n {
            IpNet::V4(_) => &self.v4,
            IpNet::V6(_) => &self.v6,
        };
        (0..=n.prefix_len()).filter_map(move |len| {
            if present.get(usize::from(len)).copied().unwrap_or(false) {
                IpNet::new(n.addr(), len).ok().map(|p| p.trunc())
            } else {
                None
            }
        })
    }
}

fn push_unique<K: std::hash::Hash + Eq>(map: &mut HashMap<K, Vec<u32>>, key: K, idx: u32) {
    let v = map.entry(key).or_default();
    if v.last() != Some(&idx) {
        v.push(idx);
    }
}

/// Labels-wise suffixes of a name: `a.b.c` → `a.b.c`, `b.c`, `c`.
fn name_ancestors(name: &str) -> impl Iterator<Item = &str> {
    std::iter::once(name).chain(name.match_indices('.').map(move |(i, _)| &name[i + 1..]))
}

impl Shape {
    fn new(key: ShapeKey) -> Shape {
        Shape {
            key,
            all: Vec::new(),
            src: HashMap::default(),
            src_lens: PrefixLens::default(),
            dst: HashMap::default(),
            dst_lens: PrefixLens::default(),
            fqdn: HashMap::default(),
            port_single: HashMap::default(),
            port_wide: Vec::new(),
        }
    }

    fn add(&mut self, r: &Rule, idx: u32) {
        self.all.push(idx);
        for n in &r.source {
            self.src_lens.add(n);
            push_unique(&mut self.src, *n, idx);
        }
        for n in &r.destination {
            self.dst_lens.add(n);
            push_unique(&mut self.dst, *n, idx);
        }
        for p in &r.destination_fqdn {
            push_unique(&mut self.fqdn, p.base().to_string(), idx);
        }
        if r.destination_port.iter().any(|p| p.lo != p.hi) {
            self.port_wide.push(idx);
        }
        for p in r.destination_port.iter().filter(|p| p.lo == p.hi) {
            push_unique(&mut self.port_single, p.lo, idx);
        }
    }

    /// The smallest set of lists that must contain every rule of this shape covering `j`.
    /// A coverer must contain `j`'s first prefix / name / port, so looking up that one
    /// value is enough to find all of them.
    fn candidates<'a>(&'a self, j: &Rule) -> Vec<&'a [u32]> {
        let mut best: Vec<&[u32]> = vec![&self.all];
        let mut consider = |lists: Vec<&'a [u32]>| {
            if total(&lists) < total(&best) {
                best = lists;
            }
        };
        if let (true, Some(first)) = (self.key.has_src, j.source.first()) {
            let lists = self
                .src_lens
                .ancestors(first)
                .filter_map(|a| self.src.get(&a).map(Vec::as_slice))
                .collect();
            consider(lists);
        }
        match self.key.dst {
            DstKind::Addr => {
                if let Some(first) = j.destination.first() {
                    let lists = self
                        .dst_lens
                        .ancestors(first)
                        .filter_map(|a| self.dst.get(&a).map(Vec::as_slice))
                        .collect();
                    consider(lists);
                }
            }
            DstKind::Name => {
                if let Some(first) = j.destination_fqdn.first() {
                    let lists = name_ancestors(first.base())
                        .filter_map(|a| self.fqdn.get(a).map(Vec::as_slice))
                        .collect();
                    consider(lists);
                }
            }
            DstKind::Any => {}
        }
        if let (true, Some(first)) = (self.key.has_ports, j.destination_port.first()) {
            let mut lists: Vec<&[u32]> = vec![&self.port_wide];
            if first.lo == first.hi {
                if let Some(v) = self.port_single.get(&first.lo) {
                    lists.push(v);
                }
            }
            consider(lists);
        }
        best
    }
}

fn total(lists: &[&[u32]]) -> usize {
    lists.iter().map(|l| l.len()).sum()
}

/// Finds every rule covered by an earlier one, reporting the earliest coverer.
pub(crate) fn find_shadowed(rules: &[Rule]) -> ShadowReport {
    let mut report = ShadowReport::default();
    let mut shapes: Vec<Shape> = Vec::new();
    let mut shape_of: HashMap<ShapeKey, usize> = HashMap::default();
    let mut comparisons: u64 = 0;
    for (jdx, j) in rules.iter().enumerate() {
        let Ok(j32) = u32::try_from(jdx) else { break };
        let jkey = ShapeKey::of(j);
        let mut by: Option<u32> = None;
        // Scanning shapes costs too; count it so adversarial shape counts stay bounded.
        comparisons = comparisons.saturating_add(shapes.len() as u64);
        for shape in shapes.iter().filter(|s| s.key.may_cover(&jkey)) {
            let lists = shape.candidates(j);
            comparisons = comparisons.saturating_add(total(&lists) as u64);
            for list in lists {
                // Lists are ascending, so the first cover in a list is its earliest.
                for &i in list {
                    if by.is_some_and(|b| b <= i) {
                        break;
                    }
                    if rules.get(i as usize).is_some_and(|ri| covers(ri, j)) {
                        by = Some(i);
                        break;
                    }
                }
            }
        }
        if comparisons > MAX_COMPARISONS {
            report.incomplete = Some(jdx);
            return report;
        }
        if let Some(i) = by {
            report.found.push(Shadowed {
                shadowed: jdx,
                by: i as usize,
            });
        }
        let slot = match shape_of.get(&jkey) {
            Some(&s) => s,
            None => {
                shapes.push(Shape::new(jkey.clone()));
                shape_of.insert(jkey, shapes.len() - 1);
                shapes.len() - 1
            }
        };
        if let Some(shape) = shapes.get_mut(slot) {
            shape.add(j, j32);
        }
    }
    report
}

/// The straightforward O(n²) answer, the reference the indexed version is tested against.
#[cfg(test)]
pub(crate) fn find_shadowed_naive(rules: &[Rule]) -> Vec<Shadowed> {
    let mut out = Vec::new();
    for (jdx, j) in rules.iter().enumerate() {
        if let Some(i) = rules[..jdx].iter().position(|i| covers(i, j)) {
            out.push(Shadowed {
                shadowed: jdx,
                by: i,
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Action, FqdnPattern, Span};
    use proptest::prelude::*;

    const NETS: &[&str] = &[
        "0.0.0.0/0",
        "10.0.0.0/8",
        "10.1.0.0/16",
        "10.1.2.0/24",
        "10.1.2.3/32",
        "192.168.0.0/16",
        "::/0",
        "2001:db8::/32",
        "2001:db8::1/128",
    ];
    const NAMES: &[&str] = &[
        "example.com",
        "*.example.com",
        ".example.com",
        "a.example.com",
        ".a.example.com",
        ".com",
        "github.com",
    ];
    const PORTS: &[(u16, u16)] = &[(22, 22), (80, 80), (443, 443), (1, 1024), (1000, 2000)];

    fn nets() -> impl Strategy<Value = Vec<IpNet>> {
        prop::collection::vec(prop::sample::select(NETS), 0..3).prop_map(|v| {
            v.into_iter()
                .filter_map(|s| s.parse::<IpNet>().ok())
                .collect()
        })
    }

    fn rule() -> impl Strategy<Value = Rule> {
        let dir = prop::sample::select(vec![
            None,
            Some(Direction::Ingress),
            Some(Direction::Egress),
            Some(Direction::Input),
        ]);
        let dst_kind = 0..3u8;
        let fqdns = prop::collection::vec(prop::sample::select(NAMES), 1..3);
        let ports = prop::collection::vec(prop::sample::select(PORTS), 0..3);
        let proto = prop::sample::select(vec![
            None,
            Some(Protocol::Tcp),
            Some(Protocol::Udp),
            Some(Protocol::Icmp),
        ]);
        let iface = prop::sample::select(vec![None, Some("eth0"), Some("eth1")]);
        (
            dir,
            nets(),
            (dst_kind, nets(), fqdns),
            ports,
            proto,
            any::<bool>(),
            iface.clone(),
            iface,
        )
            .prop_map(
                |(direction, source, (kind, dnets, names), ports, protocol, est, ii, oi)| {
                    let destination_port: Vec<PortRange> = ports
                        .into_iter()
                        .map(|(lo, hi)| PortRange { lo, hi })
                        .collect();
                    // Mirror validation: ports only with tcp / udp / omitted.
                    let protocol = if destination_port.is_empty() {
                        protocol
                    } else {
                        protocol.filter(|p| p.has_ports())
                    };
                    Rule {
                        id: String::new(),
                        name: None,
                        action: Action::Accept,
                        direction,
                        source,
                        destination: if kind == 1 { dnets } else { vec![] },
                        destination_fqdn: if kind == 2 {
                            names
                                .into_iter()
                                .filter_map(|n| FqdnPattern::parse(n).ok())
                                .collect()
                        } else {
                            vec![]
                        },
                        destination_port,
                        protocol,
                        state: est.then_some(State::Established),
                        in_interface: ii.map(str::to_string),
                        out_interface: oi.map(str::to_string),
                        log: false,
                        span: Span::default(),
                    }
                },
            )
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(400))]
        #[test]
        fn indexed_equals_naive(rules in prop::collection::vec(rule(), 0..40)) {
            let fast = find_shadowed(&rules);
            prop_assert_eq!(fast.incomplete, None);
            prop_assert_eq!(fast.found, find_shadowed_naive(&rules));
        }
    }

    #[test]
    fn budget_stops_and_reports() {
        // Identical shape on every indexed field: each rule must be compared with all
        // earlier ones, so the budget is what keeps this bounded.
        let base = Rule {
            id: String::new(),
            name: None,
            action: Action::Accept,
            direction: Some(Direction::Input),
            source: vec![],
            destination: vec![],
            destination_fqdn: vec![],
            destination_port: vec![],
            protocol: None,
            state: None,
            in_interface: None,
            out_interface: None,
            log: false,
            span: Span::default(),
        };
        let rules: Vec<Rule> = (0..10_000)
            .map(|i| Rule {
                in_interface: Some(format!("if{i}")),
                ..base.clone()
            })
            .collect();
        let r = find_shadowed(&rules);
        assert!(r.found.is_empty());
        let stopped = r.incomplete.expect("budget must stop a quadratic case");
        assert!(stopped > 5000 && stopped < 10_000, "{stopped}");
    }
}
