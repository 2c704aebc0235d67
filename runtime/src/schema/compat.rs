//! Compatibility between two versions of a topic's schema, on the subset.
//!
//! The question is one of inclusion: is every payload valid under schema
//! `a` also valid under schema `b`? `backward` asks it with `a` the old
//! version and `b` the new (consumers on the new version read everything the
//! old one allowed), `forward` the other way round, `full` both.
//!
//! The check is sound and conservative: when it says yes, the inclusion
//! holds; when it cannot show it, it says no, with the first reason it met.
//! docs/schemas.md lists exactly what it compares. In short, for each
//! keyword of `b` it looks for a keyword of `a` at least as strict:
//!
//! - `type`: `a`'s types (every conjunct's, intersected) within `b`'s
//!   (`integer` within `number`);
//! - `enum`/`const`: `a` must be finite itself, and each of its values is
//!   validated against `b` (exact);
//! - bounds (`minimum`…, `minLength`…, `minItems`…): `a`'s as tight or
//!   tighter, checked only when `a` allows that type at all;
//! - `required`: every name `b` requires, `a` requires;
//! - `properties`/`additionalProperties`/`items`: recursively, what `a`
//!   allows for a property or an item within what `b` allows;
//! - `allOf` in `b`: each; `anyOf` in `b`: some branch; `oneOf` in `b`: one
//!   branch, and every other branch's types disjoint from `a`'s;
//! - `allOf`, `anyOf`, `oneOf` and `$ref` in `a`: conjuncts are combined,
//!   alternatives are split and each checked on its own;
//! - identical subschemas are included in each other without further look;
//!   recursive `$ref`s are assumed included when met again (co-induction).
//!
//! The work is bounded by [`MAX_COMPAT_STEPS`]; past it the versions are
//! called incompatible, with that reason.

use std::collections::HashSet;

use serde_json::Value;

use super::compile::{ANY, ARRAY, Keywords, NUMBER, Node, NodeId, OBJECT, STRING, Schema};
use super::validate::{json_eq, type_names as type_names_of};

/// Most comparisons one compatibility check makes.
pub const MAX_COMPAT_STEPS: u64 = 100_000;
/// Deepest nesting of comparisons (each a few stack frames): `$ref` chains
/// can nest deeper than the schema text does.
pub const MAX_COMPAT_DEPTH: usize = 64;

/// The compatibility a topic's versions must keep (`compatibility` in
/// `[[schemas]]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Compatibility {
    /// Each new version accepts every payload the earlier versions accepted.
    #[default]
    Backward,
    /// Each earlier version accepts every payload the new one accepts.
    Forward,
    /// Both.
    Full,
    /// No check.
    None,
}

impl Compatibility {
    /// The mode named `text`.
    ///
    /// # Errors
    ///
    /// The accepted names, when `text` is none of them.
    pub fn parse(text: &str) -> Result<Self, String> {
        Ok(match text {
            "backward" => Self::Backward,
            "forward" => Self::Forward,
            "full" => Self::Full,
            "none" => Self::None,
            other => return Err(format!("{other:?} is not one of \"backward\", \"forward\", \"full\", \"none\"")),
        })
    }

    /// Its name in the configuration.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Backward => "backward",
            Self::Forward => "forward",
            Self::Full => "full",
            Self::None => "none",
        }
    }

    /// Whether `new` may follow `old` in this mode; else the reason.
    ///
    /// # Errors
    ///
    /// Which direction fails, and the first reason found.
    pub fn check(self, old: &Schema, new: &Schema) -> Result<(), String> {
        if matches!(self, Self::Backward | Self::Full) {
            includes(old, new)
                .map_err(|why| format!("not backward compatible (the new version must accept every payload the old one accepted; writer = old, reader = new): {why}"))?;
        }
        if matches!(self, Self::Forward | Self::Full) {
            includes(new, old)
                .map_err(|why| format!("not forward compatible (the old version must accept every payload the new one accepts; writer = new, reader = old): {why}"))?;
        }
        Ok(())
    }
}

/// Whether every value valid under `a` is valid under `b` (as far as the
/// check can show); else the first reason it could not.
///
/// # Errors
///
/// The reason, with the schema location it was found at.
pub(crate) fn includes(a: &Schema, b: &Schema) -> Result<(), String> {
    let mut c = Checker { a, b, steps: 0, depth: 0, abort: None, assumed: HashSet::new() };
    let result = c.sub(vec![Item::Whole(0)], 0, "");
    // A bound hit inside an `anyOf` trial must not read as that branch's
    // failure: it ends the whole check, with its own reason.
    match c.abort {
        Some(why) => Err(why),
        None => result,
    }
}

/// A conjunct of the `a` side: a whole subschema, or one whose `anyOf` and
/// `oneOf` were split off already.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Item {
    Whole(NodeId),
    Base(NodeId),
}

struct Checker<'s> {
    a: &'s Schema,
    b: &'s Schema,
    steps: u64,
    depth: usize,
    /// Set once a bound is hit: every later comparison fails with it.
    abort: Option<String>,
    assumed: HashSet<(Vec<Item>, NodeId)>,
}

impl Checker<'_> {
    /// Whether the conjunction `s` of `a`'s subschemas is included in `b`'s
    /// subschema `t`.
    fn sub(&mut self, s: Vec<Item>, t: NodeId, at: &str) -> Result<(), String> {
        if let Some(why) = &self.abort {
            return Err(why.clone());
        }
        if self.depth >= MAX_COMPAT_DEPTH {
            let why =
                format!("{}: the schemas nest too deeply to compare (more than {MAX_COMPAT_DEPTH} levels)", place(at));
            self.abort = Some(why.clone());
            return Err(why);
        }
        self.depth += 1;
        let result = self.included(s, t, at);
        self.depth -= 1;
        result
    }

    fn included(&mut self, s: Vec<Item>, t: NodeId, at: &str) -> Result<(), String> {
        self.steps += 1;
        if self.steps > MAX_COMPAT_STEPS {
            let why = format!("the schemas are too complex to compare within {MAX_COMPAT_STEPS} steps");
            self.abort = Some(why.clone());
            return Err(why);
        }
        if let [Item::Whole(n)] = s.as_slice()
            && equal(self.a, *n, self.b, t, &mut HashSet::new(), 0)
        {
            return Ok(());
        }
        // Flatten `a`'s conjuncts: `$ref` and `allOf` join the list; the
        // first `anyOf`/`oneOf` met splits the question into one per branch.
        let mut conj: Vec<NodeId> = Vec::new();
        // The same conjuncts with their split marks, for the comparisons
        // below: a `Base` must not be split again.
        let mut flat: Vec<Item> = Vec::new();
        let mut seen: HashSet<Item> = HashSet::new();
        let mut work = s.clone();
        while let Some(item) = work.pop() {
            if !seen.insert(item) {
                continue;
            }
            let (id, whole) = match item {
                Item::Whole(id) => (id, true),
                Item::Base(id) => (id, false),
            };
            let k = match self.a.node(id) {
                Node::Bool(true) => continue,
                // Nothing is valid under `a`: included in anything.
                Node::Bool(false) => return Ok(()),
                Node::Keywords(k) => k,
            };
            // A node with both `anyOf` and `oneOf` is split on `anyOf`; its
            // `Base` keeps neither, so it is looser than the node: still sound.
            let branches = if k.any_of.is_empty() { &k.one_of } else { &k.any_of };
            if whole && !branches.is_empty() {
                for &branch in branches {
                    let mut split: Vec<Item> = s.iter().copied().filter(|i| *i != item).collect();
                    split.push(Item::Base(id));
                    split.push(Item::Whole(branch));
                    self.sub(split, t, at)?;
                }
                return Ok(());
            }
            conj.push(id);
            flat.push(item);
            work.extend(k.reference.map(Item::Whole));
            work.extend(k.all_of.iter().map(|&i| Item::Whole(i)));
        }
        let kt: &Keywords = match self.b.node(t) {
            Node::Bool(true) => return Ok(()),
            Node::Bool(false) => {
                return if self.types(&conj) == 0 {
                    Ok(())
                } else {
                    Err(format!("{}: the reader's schema allows nothing here", place(at)))
                };
            }
            Node::Keywords(k) => k,
        };
        let mut key = s;
        key.sort_unstable();
        if !self.assumed.insert((key, t)) {
            return Ok(());
        }
        self.keywords(&conj, &flat, t, kt, at)
    }

    fn keywords(&mut self, conj: &[NodeId], flat: &[Item], t: NodeId, kt: &Keywords, at: &str) -> Result<(), String> {
        let ks: Vec<&Keywords> = conj
            .iter()
            .filter_map(|&id| match self.a.node(id) {
                Node::Keywords(k) => Some(&**k),
                Node::Bool(_) => None,
            })
            .collect();
        // A finite `a`: each of its values against `b`, exactly.
        if let Some(values) = ks.iter().find_map(|k| k.enumeration.as_ref()) {
            for value in values {
                let mut valid_under_a = true;
                for &id in conj {
                    match self.a.validate_at(id, value) {
                        Ok(()) => {}
                        Err(v) if v.keyword == "budget" => return Err(format!("{}: {v}", place(at))),
                        Err(_) => valid_under_a = false,
                    }
                }
                if !valid_under_a {
                    continue;
                }
                self.b.validate_at(t, value).map_err(|v| {
                    format!(
                        "{}: the value {value} is allowed by the writer's schema but refused by the reader's: {v}",
                        place(at)
                    )
                })?;
            }
            return Ok(());
        }
        let types = self.types(conj);
        if types == 0 {
            return Ok(());
        }
        if let Some(tt) = kt.types
            && types & !tt != 0
        {
            return Err(format!(
                "{}: type narrowed: the writer's schema allows {}, the reader's only {}",
                place(at),
                type_names_of(types & !tt),
                type_names_of(tt)
            ));
        }
        if kt.enumeration.is_some() {
            return Err(format!("{}: enum/const added or narrowed where the other side is not an enum", place(at)));
        }
        if types & NUMBER != 0 {
            bound_check(&ks, kt, at)?;
        }
        if types & STRING != 0 {
            min_count(ks.iter().filter_map(|k| k.min_length).max(), kt.min_length, "minLength", at)?;
            max_count(ks.iter().filter_map(|k| k.max_length).min(), kt.max_length, "maxLength", at)?;
        }
        if types & ARRAY != 0 {
            min_count(ks.iter().filter_map(|k| k.min_items).max(), kt.min_items, "minItems", at)?;
            max_count(ks.iter().filter_map(|k| k.max_items).min(), kt.max_items, "maxItems", at)?;
            if let Some(ti) = kt.items {
                let items: Vec<Item> = ks.iter().filter_map(|k| k.items).map(Item::Whole).collect();
                self.sub(items, ti, &format!("{at}/items"))?;
            }
        }
        if types & OBJECT != 0 {
            self.object(&ks, kt, at)?;
        }
        if let Some(target) = kt.reference {
            self.sub(flat.to_vec(), target, at)?;
        }
        for &branch in &kt.all_of {
            self.sub(flat.to_vec(), branch, at)?;
        }
        if !kt.any_of.is_empty() {
            let mut first = None;
            let mut ok = false;
            for (i, &branch) in kt.any_of.iter().enumerate() {
                match self.sub(flat.to_vec(), branch, &format!("{at}/anyOf/{i}")) {
                    Ok(()) => {
                        ok = true;
                        break;
                    }
                    Err(e) => {
                        first.get_or_insert(e);
                    }
                }
            }
            if !ok {
                return Err(first.unwrap_or_default());
            }
        }
        if !kt.one_of.is_empty() {
            let mut found = None;
            for (i, &branch) in kt.one_of.iter().enumerate() {
                if self.sub(flat.to_vec(), branch, &format!("{at}/oneOf/{i}")).is_ok() {
                    found = Some(i);
                    break;
                }
            }
            let Some(i) = found else {
                return Err(format!("{}: the writer's schema fits no single branch of the reader's oneOf", place(at)));
            };
            for (j, &other) in kt.one_of.iter().enumerate() {
                if j != i && types & self.b_types(other) != 0 {
                    return Err(format!(
                        "{}: cannot show that only branch {i} of the reader's oneOf matches: branch {j} allows the same types",
                        place(at)
                    ));
                }
            }
        }
        Ok(())
    }

    fn object(&mut self, ks: &[&Keywords], kt: &Keywords, at: &str) -> Result<(), String> {
        for name in &kt.required {
            if !ks.iter().any(|k| k.required.contains(name)) {
                return Err(format!(
                    "{}: property {name:?} is required by the reader's schema and not by the writer's (make it optional)",
                    place(at)
                ));
            }
        }
        for (name, tp) in &kt.properties {
            let of_a: Vec<Item> = ks.iter().filter_map(|k| k.property(name)).map(Item::Whole).collect();
            self.sub(of_a, *tp, &format!("{at}/properties/{}", super::compile::escape(name)))?;
        }
        if let Some(ta) = kt.additional {
            let mut names: Vec<&str> = Vec::new();
            for k in ks {
                for (name, _) in &k.properties {
                    if !kt.properties.iter().any(|(n, _)| n == name) && !names.contains(&name.as_str()) {
                        names.push(name);
                    }
                }
            }
            for name in names {
                let of_a: Vec<Item> = ks.iter().filter_map(|k| k.property(name)).map(Item::Whole).collect();
                self.sub(of_a, ta, &format!("{at}/properties/{}", super::compile::escape(name)))?;
            }
            let rest: Vec<Item> = ks.iter().filter_map(|k| k.additional).map(Item::Whole).collect();
            self.sub(rest, ta, &format!("{at}/additionalProperties"))?;
        }
        Ok(())
    }

    /// The types `a`'s conjuncts all allow.
    fn types(&self, conj: &[NodeId]) -> u8 {
        conj.iter().fold(ANY, |acc, &id| match self.a.node(id) {
            Node::Keywords(k) => acc & k.types.unwrap_or(ANY),
            Node::Bool(true) => acc,
            Node::Bool(false) => 0,
        })
    }

    /// The types a node of `b` allows, by its own `type` alone (an upper
    /// bound, which is what a disjointness proof needs).
    fn b_types(&self, id: NodeId) -> u8 {
        match self.b.node(id) {
            Node::Keywords(k) => k.types.unwrap_or(ANY),
            Node::Bool(true) => ANY,
            Node::Bool(false) => 0,
        }
    }
}

fn place(at: &str) -> String {
    if at.is_empty() { "at the root".to_owned() } else { format!("at {at}") }
}

fn min_count(a: Option<u64>, b: Option<u64>, keyword: &str, at: &str) -> Result<(), String> {
    match (a, b) {
        (_, None) => Ok(()),
        (Some(a), Some(b)) if a >= b => Ok(()),
        (a, Some(b)) => Err(format!("{}: {keyword} raised to {b} (was {})", place(at), a.unwrap_or(0))),
    }
}

fn max_count(a: Option<u64>, b: Option<u64>, keyword: &str, at: &str) -> Result<(), String> {
    match (a, b) {
        (_, None) => Ok(()),
        (Some(a), Some(b)) if a <= b => Ok(()),
        (a, Some(b)) => Err(format!(
            "{}: {keyword} lowered to {b} (was {})",
            place(at),
            a.map_or_else(|| "unbounded".to_owned(), |a| a.to_string())
        )),
    }
}

/// `a`'s numeric bounds (the tightest of its conjuncts) within `b`'s.
fn bound_check(ks: &[&Keywords], kt: &Keywords, at: &str) -> Result<(), String> {
    // (value, exclusive): larger value wins; at a tie, exclusive is tighter.
    let lower = ks
        .iter()
        .flat_map(|k| k.minimum.map(|m| (m, false)).into_iter().chain(k.exclusive_minimum.map(|m| (m, true))))
        .fold(None, |acc: Option<(f64, bool)>, x| match acc {
            Some(a) if a.0 > x.0 || (a.0 == x.0 && a.1) => Some(a),
            _ => Some(x),
        });
    let upper = ks
        .iter()
        .flat_map(|k| k.maximum.map(|m| (m, false)).into_iter().chain(k.exclusive_maximum.map(|m| (m, true))))
        .fold(None, |acc: Option<(f64, bool)>, x| match acc {
            Some(a) if a.0 < x.0 || (a.0 == x.0 && a.1) => Some(a),
            _ => Some(x),
        });
    let was = |b: Option<(f64, bool)>| {
        b.map_or_else(|| "unbounded".to_owned(), |(v, x)| format!("{v}{}", if x { " exclusive" } else { "" }))
    };
    if let Some(m) = kt.minimum
        && !lower.is_some_and(|(v, _)| v >= m)
    {
        return Err(format!("{}: minimum raised to {m} (was {})", place(at), was(lower)));
    }
    if let Some(m) = kt.exclusive_minimum
        && !lower.is_some_and(|(v, x)| v > m || (v == m && x))
    {
        return Err(format!("{}: exclusiveMinimum raised to {m} (was {})", place(at), was(lower)));
    }
    if let Some(m) = kt.maximum
        && !upper.is_some_and(|(v, _)| v <= m)
    {
        return Err(format!("{}: maximum lowered to {m} (was {})", place(at), was(upper)));
    }
    if let Some(m) = kt.exclusive_maximum
        && !upper.is_some_and(|(v, x)| v < m || (v == m && x))
    {
        return Err(format!("{}: exclusiveMaximum lowered to {m} (was {})", place(at), was(upper)));
    }
    Ok(())
}

/// Whether two subschemas (of two schemas) are the same, keyword for
/// keyword. `$ref` pairs met again are assumed equal.
/// Past 10,000 pairs or [`MAX_COMPAT_DEPTH`] levels it answers "not equal",
/// which only costs the shortcut.
fn equal(a: &Schema, x: NodeId, b: &Schema, y: NodeId, seen: &mut HashSet<(NodeId, NodeId)>, depth: usize) -> bool {
    if !seen.insert((x, y)) {
        return true;
    }
    if seen.len() > 10_000 || depth > MAX_COMPAT_DEPTH {
        return false;
    }
    let depth = depth + 1;
    let (kx, ky) = match (a.node(x), b.node(y)) {
        (Node::Bool(p), Node::Bool(q)) => return p == q,
        (Node::Keywords(kx), Node::Keywords(ky)) => (kx, ky),
        _ => return false,
    };
    let opt = |p: Option<NodeId>, q: Option<NodeId>, seen: &mut HashSet<(NodeId, NodeId)>| match (p, q) {
        (None, None) => true,
        (Some(p), Some(q)) => equal(a, p, b, q, seen, depth),
        _ => false,
    };
    let list = |p: &[NodeId], q: &[NodeId], seen: &mut HashSet<(NodeId, NodeId)>| {
        p.len() == q.len() && p.iter().zip(q).all(|(p, q)| equal(a, *p, b, *q, seen, depth))
    };
    let values = |p: &Option<Vec<Value>>, q: &Option<Vec<Value>>| match (p, q) {
        (None, None) => true,
        (Some(p), Some(q)) => p.len() == q.len() && p.iter().zip(q).all(|(p, q)| json_eq(p, q)),
        _ => false,
    };
    kx.types == ky.types
        && values(&kx.enumeration, &ky.enumeration)
        && kx.minimum == ky.minimum
        && kx.maximum == ky.maximum
        && kx.exclusive_minimum == ky.exclusive_minimum
        && kx.exclusive_maximum == ky.exclusive_maximum
        && kx.min_length == ky.min_length
        && kx.max_length == ky.max_length
        && kx.min_items == ky.min_items
        && kx.max_items == ky.max_items
        && kx.required.len() == ky.required.len()
        && kx.required.iter().all(|r| ky.required.contains(r))
        && kx.properties.len() == ky.properties.len()
        && kx.properties.iter().all(|(n, p)| {
            ky.properties.iter().find(|(m, _)| m == n).is_some_and(|(_, q)| equal(a, *p, b, *q, seen, depth))
        })
        && opt(kx.additional, ky.additional, seen)
        && opt(kx.items, ky.items, seen)
        && opt(kx.reference, ky.reference, seen)
        && list(&kx.all_of, &ky.all_of, seen)
        && list(&kx.any_of, &ky.any_of, seen)
        && list(&kx.one_of, &ky.one_of, seen)
}
