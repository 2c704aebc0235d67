//! Which upcasters an event goes through: pure functions of the declared
//! upcasters (topic pattern, from, to) and the versions a handler accepts,
//! used per event at delivery and, for whole topic patterns, at load and at
//! deploy to refuse a handler that some version cannot reach.

use crate::topic::Pattern;

/// What the plan needs of one upcaster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Edge {
    /// Its index among the configured upcasters.
    pub(crate) index: usize,
    /// Its topic pattern.
    pub(crate) topic: Pattern,
    /// Version read.
    pub(crate) from: u32,
    /// Version answered, more than `from`.
    pub(crate) to: u32,
}

/// The steps from an event's version to the one it is delivered as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Route {
    /// Indices of the upcasters to run, in order (empty: as stored).
    pub(crate) steps: Vec<usize>,
    /// The version it is delivered as.
    pub(crate) target: u32,
}

/// No route: the event's version reaches no version the handler accepts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Unreachable {
    /// The versions the chain from the event's version reaches.
    pub(crate) reached: Vec<u32>,
}

/// The chain from `version` on `topic`: at each version, the first
/// upcaster (in configuration order) whose pattern matches `matches` and
/// reads that version. Answers the edges taken; it ends because every
/// edge goes forward.
fn chain(edges: &[Edge], version: u32, matches: impl Fn(&Pattern) -> bool) -> Vec<&Edge> {
    let mut out = Vec::new();
    let mut at = version;
    while let Some(edge) = edges.iter().find(|e| e.from == at && matches(&e.topic)) {
        out.push(edge);
        at = edge.to;
    }
    out
}

/// The route of an event of `topic` at `version` to a handler accepting
/// `accepts` (empty: any version, so no upcasting): to the newest accepted
/// version the chain reaches.
pub(crate) fn route(edges: &[Edge], topic: &str, version: u32, accepts: &[u32]) -> Result<Route, Unreachable> {
    if accepts.is_empty() {
        return Ok(Route { steps: Vec::new(), target: version });
    }
    let chain = chain(edges, version, |p| p.matches(topic));
    // Versions along the chain, with how many steps reach each.
    let reached = std::iter::once(version).chain(chain.iter().map(|e| e.to));
    match reached.enumerate().filter(|(_, v)| accepts.contains(v)).max_by_key(|(_, v)| *v) {
        Some((steps, target)) => Ok(Route { steps: chain[..steps].iter().map(|e| e.index).collect(), target }),
        None => Err(Unreachable { reached: std::iter::once(version).chain(chain.iter().map(|e| e.to)).collect() }),
    }
}

/// Whether two patterns can match one topic (topics have three segments).
pub(crate) fn overlaps(a: &Pattern, b: &Pattern) -> bool {
    let slots = |p: &Pattern| -> Vec<Option<String>> {
        let text = p.to_string();
        let mut out = Vec::with_capacity(3);
        for seg in text.split('.') {
            match seg {
                ">" => {
                    while out.len() < 3 {
                        out.push(None);
                    }
                }
                "*" => out.push(None),
                literal => out.push(Some(literal.to_owned())),
            }
        }
        out
    };
    let (a, b) = (slots(a), slots(b));
    a.len() == b.len() && a.iter().zip(&b).all(|(x, y)| x.is_none() || y.is_none() || x == y)
}

/// Check that every version that can arrive on `pattern` reaches one of
/// `accepts`: version 1 (every event's default), every version an
/// upcaster overlapping the pattern reads or answers, and `extra` (versions
/// declared elsewhere, such as schemas). Answers why not, naming the
/// version, the versions it reaches and the ones accepted.
pub(crate) fn check_reach(edges: &[Edge], pattern: &Pattern, accepts: &[u32], extra: &[u32]) -> Result<(), String> {
    if accepts.is_empty() {
        return Ok(());
    }
    let relevant: Vec<Edge> = edges.iter().filter(|e| overlaps(&e.topic, pattern)).cloned().collect();
    let mut arriving: Vec<u32> =
        std::iter::once(1).chain(relevant.iter().flat_map(|e| [e.from, e.to])).chain(extra.iter().copied()).collect();
    arriving.sort_unstable();
    arriving.dedup();
    for version in arriving {
        let chain = chain(&relevant, version, |_| true);
        let reached: Vec<u32> = std::iter::once(version).chain(chain.iter().map(|e| e.to)).collect();
        if !reached.iter().any(|v| accepts.contains(v)) {
            let path = reached.iter().map(u32::to_string).collect::<Vec<_>>().join(" → ");
            return Err(format!(
                "version {version} of {pattern} reaches no version the handler accepts (chain {path}; accepts {})",
                list(accepts)
            ));
        }
    }
    Ok(())
}

/// `[1, 2]`.
pub(crate) fn list(versions: &[u32]) -> String {
    format!("[{}]", versions.iter().map(u32::to_string).collect::<Vec<_>>().join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn edge(index: usize, topic: &str, from: u32, to: u32) -> Edge {
        Edge { index, topic: Pattern::parse(topic).unwrap(), from, to }
    }

    #[test]
    fn a_route_goes_to_the_newest_accepted_version() {
        let edges = [edge(0, "o.o.c", 1, 2), edge(1, "o.o.c", 2, 3)];
        assert_eq!(route(&edges, "o.o.c", 1, &[3]).unwrap(), Route { steps: vec![0, 1], target: 3 });
        assert_eq!(route(&edges, "o.o.c", 1, &[2]).unwrap(), Route { steps: vec![0], target: 2 });
        assert_eq!(route(&edges, "o.o.c", 2, &[1, 2, 3]).unwrap(), Route { steps: vec![1], target: 3 });
        assert_eq!(route(&edges, "o.o.c", 3, &[3]).unwrap(), Route { steps: vec![], target: 3 });
        assert_eq!(route(&edges, "o.o.c", 7, &[]).unwrap(), Route { steps: vec![], target: 7 });
        assert_eq!(route(&edges, "x.o.c", 1, &[2]).unwrap_err().reached, vec![1]);
        assert_eq!(route(&edges, "o.o.c", 4, &[3]).unwrap_err().reached, vec![4]);
    }

    #[test]
    fn patterns_overlap_when_one_topic_can_match_both() {
        let p = |t| Pattern::parse(t).unwrap();
        assert!(overlaps(&p("orders.>"), &p("orders.order.created")));
        assert!(overlaps(&p("*.order.*"), &p("orders.*.created")));
        assert!(!overlaps(&p("orders.order.created"), &p("orders.order.paid")));
        assert!(!overlaps(&p("payments.>"), &p("orders.>")));
    }

    #[test]
    fn the_reach_check_names_the_version_that_cannot_reach() {
        let p = Pattern::parse("orders.>").unwrap();
        let edges = [edge(0, "orders.order.created", 1, 2)];
        assert!(check_reach(&edges, &p, &[2], &[]).is_ok());
        assert!(check_reach(&edges, &p, &[], &[]).is_ok());
        let err = check_reach(&edges, &p, &[3], &[]).unwrap_err();
        assert!(err.contains("version 1 of orders.>") && err.contains("1 → 2") && err.contains("[3]"), "{err}");
        let err = check_reach(&edges, &p, &[2], &[4]).unwrap_err();
        assert!(err.contains("version 4"), "{err}");
    }
}
