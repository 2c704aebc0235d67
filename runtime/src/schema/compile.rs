//! A JSON Schema text into the nodes the validator and the compatibility
//! check walk: one arena per schema, `$ref`s resolved to node ids at load.
//!
//! Only the subset in docs/schemas.md is accepted; any other keyword is
//! refused here, so what a schema says is what Weir enforces. Every bound a
//! hostile schema could push (its size, its nesting, its node count, `$ref`
//! loops) is checked here, once, at load.

use serde_json::{Map, Value};

/// Largest schema text, in bytes.
pub const MAX_SCHEMA_BYTES: usize = 256 << 10;
/// Most subschemas (objects and booleans) in one schema.
pub const MAX_SCHEMA_NODES: usize = 10_000;
/// Deepest nesting of subschemas in one schema.
pub const MAX_SCHEMA_DEPTH: usize = 32;

/// Index of a node in its schema's arena.
pub(crate) type NodeId = usize;

/// A set of JSON types; `number` holds `integer`.
pub(crate) type Types = u8;
pub(crate) const NULL: Types = 1;
pub(crate) const BOOLEAN: Types = 2;
pub(crate) const OBJECT: Types = 4;
pub(crate) const ARRAY: Types = 8;
/// A number that is not an integer.
pub(crate) const FRACTION: Types = 16;
pub(crate) const STRING: Types = 32;
pub(crate) const INTEGER: Types = 64;
pub(crate) const NUMBER: Types = FRACTION | INTEGER;
pub(crate) const ANY: Types = NULL | BOOLEAN | OBJECT | ARRAY | NUMBER | STRING;

/// One subschema.
#[derive(Debug, Clone)]
pub(crate) enum Node {
    /// `true` (anything) or `false` (nothing).
    Bool(bool),
    /// An object of keywords.
    Keywords(Box<Keywords>),
}

/// The keywords of a subschema object, as far as the subset goes. `None` and
/// empty lists mean the keyword is absent.
#[derive(Debug, Clone, Default)]
pub(crate) struct Keywords {
    pub(crate) types: Option<Types>,
    /// `enum`, or `const` as an enum of one.
    pub(crate) enumeration: Option<Vec<Value>>,
    /// Validation steps one `enum` check is charged: one per value, plus
    /// one per 64 bytes of their JSON text.
    pub(crate) enumeration_cost: u64,
    pub(crate) minimum: Option<f64>,
    pub(crate) maximum: Option<f64>,
    pub(crate) exclusive_minimum: Option<f64>,
    pub(crate) exclusive_maximum: Option<f64>,
    pub(crate) min_length: Option<u64>,
    pub(crate) max_length: Option<u64>,
    pub(crate) min_items: Option<u64>,
    pub(crate) max_items: Option<u64>,
    pub(crate) properties: Vec<(String, NodeId)>,
    pub(crate) required: Vec<String>,
    pub(crate) additional: Option<NodeId>,
    pub(crate) items: Option<NodeId>,
    pub(crate) all_of: Vec<NodeId>,
    pub(crate) any_of: Vec<NodeId>,
    pub(crate) one_of: Vec<NodeId>,
    pub(crate) reference: Option<NodeId>,
}

impl Keywords {
    /// The schema a property called `name` is checked against, if any
    /// beyond `true`: its `properties` entry, else `additionalProperties`.
    /// `properties` is sorted by name: a payload's keys cost a binary search
    /// each, not a walk of the schema's properties.
    pub(crate) fn property(&self, name: &str) -> Option<NodeId> {
        match self.properties.binary_search_by(|(n, _)| n.as_str().cmp(name)) {
            Ok(i) => Some(self.properties[i].1),
            Err(_) => self.additional,
        }
    }

    /// Whether `properties` names `name`.
    pub(crate) fn declares(&self, name: &str) -> bool {
        self.properties.binary_search_by(|(n, _)| n.as_str().cmp(name)).is_ok()
    }
}

/// A schema that passed [`Schema::parse`].
#[derive(Debug, Clone)]
pub struct Schema {
    pub(crate) nodes: Vec<Node>,
    /// The root is always node 0.
    pub(crate) text_bytes: usize,
}

/// Why a schema was refused: where in the schema, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}{reason}", if .pointer.is_empty() { String::new() } else { format!("at {}: ", .pointer) })]
pub struct CompileError {
    /// JSON pointer into the schema (`/properties/amount/type`); empty for
    /// the schema as a whole.
    pub pointer: String,
    /// What is wrong.
    pub reason: String,
}

/// Keywords that only annotate: accepted, and enforce nothing.
const ANNOTATIONS: [&str; 9] =
    ["$schema", "$comment", "title", "description", "default", "examples", "deprecated", "readOnly", "writeOnly"];

impl Schema {
    /// Parse and check schema text.
    ///
    /// # Errors
    ///
    /// A [`CompileError`] naming the place in the schema and the reason:
    /// not JSON, over a bound, a keyword outside the subset, a bad `$ref`.
    pub fn parse(text: &str) -> Result<Self, CompileError> {
        let whole = |reason: String| CompileError { pointer: String::new(), reason };
        if text.len() > MAX_SCHEMA_BYTES {
            return Err(whole(format!(
                "the schema is {} bytes, over the maximum of {MAX_SCHEMA_BYTES} bytes",
                text.len()
            )));
        }
        // serde_json's own recursion limit (128) bounds the parse; the
        // nesting bound below is tighter.
        let value: Value = serde_json::from_str(text).map_err(|e| whole(format!("not JSON: {e}")))?;
        let mut schema = Self::from_value(&value)?;
        schema.text_bytes = text.len();
        Ok(schema)
    }

    /// Check a schema already parsed as JSON.
    ///
    /// # Errors
    ///
    /// As [`Schema::parse`].
    pub fn from_value(value: &Value) -> Result<Self, CompileError> {
        let mut c = Compiler { nodes: vec![Node::Bool(true)], defs: Vec::new() };
        // Reserve a node per `$defs` entry first, so a `$ref` anywhere
        // (a def's own included) resolves to an id before its target is built.
        if let Value::Object(root) = value
            && let Some(defs) = root.get("$defs")
        {
            let Value::Object(defs) = defs else {
                return Err(CompileError { pointer: "/$defs".into(), reason: "must be an object".into() });
            };
            for name in defs.keys() {
                c.reserve()?;
                c.defs.push((name.clone(), c.nodes.len() - 1));
            }
            for (i, (name, def)) in defs.iter().enumerate() {
                let pointer = format!("/$defs/{}", escape(name));
                let node = c.node(def, &pointer, 1)?;
                c.nodes[i + 1] = node;
            }
        }
        let root = c.node_at_root(value)?;
        c.nodes[0] = root;
        let schema = Self { nodes: c.nodes, text_bytes: 0 };
        schema.check_ref_loops(&c.defs)?;
        Ok(schema)
    }

    /// The schema `true`: any value.
    #[must_use]
    pub fn any() -> Self {
        Self { nodes: vec![Node::Bool(true)], text_bytes: 0 }
    }

    /// The size of the text it was parsed from.
    #[must_use]
    pub fn text_bytes(&self) -> usize {
        self.text_bytes
    }

    /// How many subschemas it has.
    #[must_use]
    pub fn node_count(&self) -> usize {
        self.nodes.len()
    }

    pub(crate) fn node(&self, id: NodeId) -> &Node {
        &self.nodes[id]
    }

    /// A `$ref` cycle that never descends into the instance (`a` refers to
    /// `b` which refers to `a`, or through `allOf`/`anyOf`/`oneOf`) would
    /// validate forever on one value: refused. Cycles through `properties`,
    /// `additionalProperties` or `items` (a linked list, a tree) are fine:
    /// each turn goes one level into the instance, whose depth is bounded.
    fn check_ref_loops(&self, defs: &[(String, NodeId)]) -> Result<(), CompileError> {
        // 0 unvisited, 1 on the path, 2 done.
        let mut colour = vec![0u8; self.nodes.len()];
        let name = |id: NodeId| {
            if id == 0 {
                "#".to_owned()
            } else {
                defs.iter()
                    .find(|(_, d)| *d == id)
                    .map_or_else(|| format!("node {id}"), |(n, _)| format!("#/$defs/{n}"))
            }
        };
        for start in 0..self.nodes.len() {
            if colour[start] != 0 {
                continue;
            }
            // Iterative depth-first search: (node, next edge index).
            let mut stack = vec![(start, 0usize)];
            colour[start] = 1;
            while let Some(&mut (id, ref mut next)) = stack.last_mut() {
                let edges = self.in_place_edges(id);
                if let Some(&to) = edges.get(*next) {
                    *next += 1;
                    match colour[to] {
                        0 => {
                            colour[to] = 1;
                            stack.push((to, 0));
                        }
                        1 => {
                            return Err(CompileError {
                                pointer: String::new(),
                                reason: format!(
                                    "$ref loop: {} reaches itself through $ref/allOf/anyOf/oneOf without descending into the instance",
                                    name(to)
                                ),
                            });
                        }
                        _ => {}
                    }
                } else {
                    colour[id] = 2;
                    stack.pop();
                }
            }
        }
        Ok(())
    }

    /// The subschemas applied to the same instance location as `id`.
    fn in_place_edges(&self, id: NodeId) -> Vec<NodeId> {
        match &self.nodes[id] {
            Node::Bool(_) => Vec::new(),
            Node::Keywords(k) => {
                k.reference.iter().chain(&k.all_of).chain(&k.any_of).chain(&k.one_of).copied().collect()
            }
        }
    }
}

struct Compiler {
    nodes: Vec<Node>,
    defs: Vec<(String, NodeId)>,
}

impl Compiler {
    fn reserve(&mut self) -> Result<NodeId, CompileError> {
        if self.nodes.len() >= MAX_SCHEMA_NODES {
            return Err(CompileError {
                pointer: String::new(),
                reason: format!("the schema has more than {MAX_SCHEMA_NODES} subschemas"),
            });
        }
        self.nodes.push(Node::Bool(true));
        Ok(self.nodes.len() - 1)
    }

    fn node_at_root(&mut self, value: &Value) -> Result<Node, CompileError> {
        self.build(value, "", 0, true)
    }

    fn node(&mut self, value: &Value, pointer: &str, depth: usize) -> Result<Node, CompileError> {
        self.build(value, pointer, depth, false)
    }

    fn child(&mut self, value: &Value, pointer: &str, depth: usize) -> Result<NodeId, CompileError> {
        let id = self.reserve()?;
        let node = self.node(value, pointer, depth + 1)?;
        self.nodes[id] = node;
        Ok(id)
    }

    fn build(&mut self, value: &Value, pointer: &str, depth: usize, root: bool) -> Result<Node, CompileError> {
        let at = |key: &str, reason: String| CompileError { pointer: format!("{pointer}/{}", escape(key)), reason };
        if depth > MAX_SCHEMA_DEPTH {
            return Err(CompileError {
                pointer: pointer.to_owned(),
                reason: format!("subschemas nest deeper than {MAX_SCHEMA_DEPTH} levels"),
            });
        }
        let map: &Map<String, Value> = match value {
            Value::Bool(b) => return Ok(Node::Bool(*b)),
            Value::Object(map) => map,
            other => {
                return Err(CompileError {
                    pointer: pointer.to_owned(),
                    reason: format!("a schema must be an object or a boolean, not {}", kind(other)),
                });
            }
        };
        let mut k = Keywords::default();
        for (key, v) in map {
            match key.as_str() {
                "type" => k.types = Some(types(v).map_err(|r| at(key, r))?),
                "enum" => {
                    let Value::Array(values) = v else { return Err(at(key, "must be an array".into())) };
                    k.enumeration_cost = enumeration_cost(values);
                    k.enumeration = Some(values.clone());
                }
                "const" => {
                    k.enumeration_cost = enumeration_cost(std::slice::from_ref(v));
                    k.enumeration = Some(vec![v.clone()]);
                }
                "minimum" => k.minimum = Some(number(v).map_err(|r| at(key, r))?),
                "maximum" => k.maximum = Some(number(v).map_err(|r| at(key, r))?),
                "exclusiveMinimum" => k.exclusive_minimum = Some(number(v).map_err(|r| at(key, r))?),
                "exclusiveMaximum" => k.exclusive_maximum = Some(number(v).map_err(|r| at(key, r))?),
                "minLength" => k.min_length = Some(count(v).map_err(|r| at(key, r))?),
                "maxLength" => k.max_length = Some(count(v).map_err(|r| at(key, r))?),
                "minItems" => k.min_items = Some(count(v).map_err(|r| at(key, r))?),
                "maxItems" => k.max_items = Some(count(v).map_err(|r| at(key, r))?),
                "required" => {
                    let Value::Array(names) = v else { return Err(at(key, "must be an array of strings".into())) };
                    for name in names {
                        let Value::String(name) = name else {
                            return Err(at(key, "must be an array of strings".into()));
                        };
                        if !k.required.contains(name) {
                            k.required.push(name.clone());
                        }
                    }
                }
                "properties" => {
                    let Value::Object(props) = v else { return Err(at(key, "must be an object".into())) };
                    for (name, sub) in props {
                        let id = self.child(sub, &format!("{pointer}/properties/{}", escape(name)), depth)?;
                        k.properties.push((name.clone(), id));
                    }
                    k.properties.sort_by(|a, b| a.0.cmp(&b.0));
                }
                "additionalProperties" => {
                    k.additional = Some(self.child(v, &format!("{pointer}/additionalProperties"), depth)?);
                }
                "items" => {
                    if v.is_array() {
                        return Err(at(key, "must be a schema: the array (tuple) form is not in the subset".into()));
                    }
                    k.items = Some(self.child(v, &format!("{pointer}/items"), depth)?);
                }
                "allOf" | "anyOf" | "oneOf" => {
                    let Value::Array(subs) = v else {
                        return Err(at(key, "must be a non-empty array of schemas".into()));
                    };
                    if subs.is_empty() {
                        return Err(at(key, "must be a non-empty array of schemas".into()));
                    }
                    let mut ids = Vec::with_capacity(subs.len());
                    for (i, sub) in subs.iter().enumerate() {
                        ids.push(self.child(sub, &format!("{pointer}/{key}/{i}"), depth)?);
                    }
                    match key.as_str() {
                        "allOf" => k.all_of = ids,
                        "anyOf" => k.any_of = ids,
                        _ => k.one_of = ids,
                    }
                }
                "$ref" => {
                    let Value::String(target) = v else { return Err(at(key, "must be a string".into())) };
                    k.reference = Some(self.resolve(target).map_err(|r| at(key, r))?);
                }
                "$defs" if root => {}
                "$id" if root => {}
                "$defs" | "$id" => {
                    return Err(at(key, "is only accepted at the root of the schema".into()));
                }
                "pattern" | "patternProperties" => {
                    return Err(at(
                        key,
                        "is not supported: Weir has no regular-expression engine, so it cannot enforce it (docs/schemas.md lists the subset)".into(),
                    ));
                }
                "definitions" => return Err(at(key, "is not in the subset: use $defs".into())),
                "format" => {
                    return Err(at(
                        key,
                        "is not enforced by Weir, so it is refused rather than silently ignored (docs/schemas.md lists the subset)".into(),
                    ));
                }
                a if ANNOTATIONS.contains(&a) => {}
                other => {
                    return Err(at(
                        key,
                        format!(
                            "keyword {other:?} is not in the subset Weir enforces, so it is refused rather than silently ignored (docs/schemas.md lists the subset)"
                        ),
                    ));
                }
            }
        }
        Ok(Node::Keywords(Box::new(k)))
    }

    fn resolve(&self, target: &str) -> Result<NodeId, String> {
        if target == "#" {
            return Ok(0);
        }
        let Some(name) = target.strip_prefix("#/$defs/") else {
            return Err(format!("{target:?}: only local references, \"#\" or \"#/$defs/<name>\", are in the subset"));
        };
        let name = name.replace("~1", "/").replace("~0", "~");
        self.defs
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, id)| *id)
            .ok_or_else(|| format!("{target:?}: no such entry in the root's $defs"))
    }
}

fn enumeration_cost(values: &[Value]) -> u64 {
    let bytes: usize = values.iter().map(|v| serde_json::to_string(v).map_or(0, |t| t.len())).sum();
    values.len() as u64 + bytes as u64 / 64
}

fn types(v: &Value) -> Result<Types, String> {
    let one = |name: &str| -> Result<Types, String> {
        Ok(match name {
            "null" => NULL,
            "boolean" => BOOLEAN,
            "object" => OBJECT,
            "array" => ARRAY,
            "number" => NUMBER,
            "integer" => INTEGER,
            "string" => STRING,
            other => return Err(format!("{other:?} is not a JSON type")),
        })
    };
    match v {
        Value::String(name) => one(name),
        Value::Array(names) if !names.is_empty() => names.iter().try_fold(0, |acc, n| match n {
            Value::String(name) => Ok(acc | one(name)?),
            _ => Err("must be a type name or an array of type names".to_owned()),
        }),
        _ => Err("must be a type name or a non-empty array of type names".into()),
    }
}

fn number(v: &Value) -> Result<f64, String> {
    v.as_f64().filter(|f| f.is_finite()).ok_or_else(|| "must be a number".to_owned())
}

fn count(v: &Value) -> Result<u64, String> {
    v.as_u64().ok_or_else(|| "must be a non-negative integer".to_owned())
}

pub(crate) fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// A JSON pointer segment: `~` as `~0`, `/` as `~1`.
pub(crate) fn escape(segment: &str) -> String {
    segment.replace('~', "~0").replace('/', "~1")
}
