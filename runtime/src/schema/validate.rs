//! A JSON value against a [`Schema`]: the first failure, with the JSON
//! pointer of the instance location and the keyword.
//!
//! Bounded whatever the schema and the value: every subschema applied costs
//! a step, at most [`MAX_VALIDATION_STEPS`] per value (an `anyOf` of
//! `anyOf`s through `$ref`s could otherwise take exponential time), and at
//! most [`MAX_VALIDATION_DEPTH`] subschemas nest while one value is checked.
//! The value's own depth is bounded by the JSON parser (128 levels).

use serde_json::Value;

use super::compile::{ARRAY, BOOLEAN, FRACTION, INTEGER, Keywords, NULL, Node, NodeId, OBJECT, STRING, Schema, Types};

/// Most subschemas applied while validating one value.
pub const MAX_VALIDATION_STEPS: u64 = 1_000_000;
/// Most subschemas nested (through properties, items, `$ref`s and
/// combinators) while validating one value.
pub const MAX_VALIDATION_DEPTH: usize = 256;

/// The first place a value fails its schema.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// JSON pointer of the failing instance location (`""` for the whole
    /// payload, `/items/0/amount`).
    pub pointer: String,
    /// The keyword that failed (`type`, `required`, …), or `budget` when
    /// validation hit one of its bounds.
    pub keyword: &'static str,
    /// Why, in words.
    pub reason: String,
}

enum Fail {
    /// The value does not match: an enclosing `anyOf`/`oneOf` may try
    /// another branch.
    Invalid(Violation),
    /// A bound was hit: the whole validation stops.
    Budget(Violation),
}

enum Seg<'v> {
    Key(&'v str),
    Index(usize),
}

impl Schema {
    /// Validate `value`.
    ///
    /// # Errors
    ///
    /// The first [`Violation`] found (keywords are checked in a fixed order,
    /// properties in the value's order).
    pub fn validate(&self, value: &Value) -> Result<(), Violation> {
        self.validate_at(0, value)
    }

    /// Validate `value` against the subschema `id` (the compatibility check
    /// asks whether old `enum` values pass the new schema).
    pub(crate) fn validate_at(&self, id: NodeId, value: &Value) -> Result<(), Violation> {
        let mut v = Validator { schema: self, steps: 0, trials: 0, path: Vec::new() };
        v.check(id, value, 0).map_err(|f| match f {
            Fail::Invalid(v) | Fail::Budget(v) => v,
        })
    }
}

struct Validator<'s, 'v> {
    schema: &'s Schema,
    steps: u64,
    /// How many `anyOf`/`oneOf` branches being tried enclose the current
    /// check: a failure there is thrown away, so its pointer is not built
    /// (a payload key can be long, and branches can be many).
    trials: u32,
    path: Vec<Seg<'v>>,
}

impl<'v> Validator<'_, 'v> {
    fn pointer(&self) -> String {
        let mut out = String::new();
        for seg in &self.path {
            out.push('/');
            match seg {
                Seg::Key(k) => out.push_str(&super::compile::escape(k)),
                Seg::Index(i) => out.push_str(&i.to_string()),
            }
        }
        out
    }

    fn invalid(&self, keyword: &'static str, reason: String) -> Fail {
        let pointer = if self.trials > 0 { String::new() } else { self.pointer() };
        Fail::Invalid(Violation { pointer, keyword, reason })
    }

    /// Count `n` steps of work against the budget.
    fn charge(&mut self, n: u64) -> Result<(), Fail> {
        self.steps = self.steps.saturating_add(n);
        if self.steps > MAX_VALIDATION_STEPS {
            return Err(Fail::Budget(Violation {
                pointer: self.pointer(),
                keyword: "budget",
                reason: format!("validation took more than {MAX_VALIDATION_STEPS} steps; the payload is refused"),
            }));
        }
        Ok(())
    }

    fn check(&mut self, id: NodeId, value: &'v Value, depth: usize) -> Result<(), Fail> {
        self.charge(1)?;
        if depth > MAX_VALIDATION_DEPTH {
            return Err(Fail::Budget(Violation {
                pointer: self.pointer(),
                keyword: "budget",
                reason: format!("subschemas nested deeper than {MAX_VALIDATION_DEPTH} levels; the payload is refused"),
            }));
        }
        let schema = self.schema;
        let k: &Keywords = match schema.node(id) {
            Node::Bool(true) => return Ok(()),
            Node::Bool(false) => return Err(self.invalid("false", "no value is allowed here".into())),
            Node::Keywords(k) => k,
        };
        if let Some(types) = k.types
            && types & type_of(value) == 0
        {
            return Err(
                self.invalid("type", format!("{} is not of type {}", super::compile::kind(value), type_names(types)))
            );
        }
        if k.enumeration.is_some() {
            // Comparing is work too: a large enum, or large values in it,
            // cost in proportion (weighed once, at load).
            self.charge(k.enumeration_cost)?;
        }
        if let Some(values) = &k.enumeration
            && !values.iter().any(|e| json_eq(e, value))
        {
            let keyword = if values.len() == 1 { "const" } else { "enum" };
            return Err(self.invalid(keyword, format!("{} is not one of the allowed values", preview(value))));
        }
        match value {
            Value::Number(n) => self.number(k, n.as_f64().unwrap_or(f64::NAN))?,
            Value::String(s) if k.min_length.is_some() || k.max_length.is_some() => {
                // Counting characters reads the string: charged by its size.
                self.charge(1 + s.len() as u64 / 256)?;
                let len = s.chars().count() as u64;
                if let Some(min) = k.min_length
                    && len < min
                {
                    return Err(self.invalid("minLength", format!("string of {len} characters, shorter than {min}")));
                }
                if let Some(max) = k.max_length
                    && len > max
                {
                    return Err(self.invalid("maxLength", format!("string of {len} characters, longer than {max}")));
                }
            }
            Value::Array(items) => {
                let len = items.len() as u64;
                if let Some(min) = k.min_items
                    && len < min
                {
                    return Err(self.invalid("minItems", format!("array of {len} items, fewer than {min}")));
                }
                if let Some(max) = k.max_items
                    && len > max
                {
                    return Err(self.invalid("maxItems", format!("array of {len} items, more than {max}")));
                }
                if let Some(item) = k.items {
                    for (i, v) in items.iter().enumerate() {
                        self.path.push(Seg::Index(i));
                        let r = self.check(item, v, depth + 1);
                        self.path.pop();
                        r?;
                    }
                }
            }
            Value::Object(map) => {
                // Each required name is looked up, each key of the value
                // walked: work in proportion, charged before it is done.
                self.charge(k.required.len() as u64)?;
                if let Some(missing) = k.required.iter().find(|name| !map.contains_key(name.as_str())) {
                    return Err(self.invalid("required", format!("required property {missing:?} is missing")));
                }
                if !k.properties.is_empty() || k.additional.is_some() {
                    self.charge(map.len() as u64)?;
                    for (name, v) in map {
                        let Some(sub) = k.property(name) else { continue };
                        self.path.push(Seg::Key(name));
                        if matches!(schema.node(sub), Node::Bool(false)) {
                            let declared = k.declares(name);
                            let keyword = if declared { "properties" } else { "additionalProperties" };
                            let name = preview(&Value::String(name.clone()));
                            let fail = self.invalid(keyword, format!("property {name} is not allowed"));
                            self.path.pop();
                            return Err(fail);
                        }
                        let r = self.check(sub, v, depth + 1);
                        self.path.pop();
                        r?;
                    }
                }
            }
            _ => {}
        }
        if let Some(target) = k.reference {
            self.check(target, value, depth + 1)?;
        }
        for &sub in &k.all_of {
            self.check(sub, value, depth + 1)?;
        }
        if !k.any_of.is_empty() {
            let mut matched = false;
            for &sub in &k.any_of {
                self.trials += 1;
                let tried = self.check(sub, value, depth + 1);
                self.trials -= 1;
                match tried {
                    Ok(()) => {
                        matched = true;
                        break;
                    }
                    Err(Fail::Invalid(_)) => {}
                    Err(budget) => return Err(budget),
                }
            }
            if !matched {
                return Err(self.invalid("anyOf", format!("matches none of the {} schemas of anyOf", k.any_of.len())));
            }
        }
        if !k.one_of.is_empty() {
            let mut matched = 0;
            for &sub in &k.one_of {
                self.trials += 1;
                let tried = self.check(sub, value, depth + 1);
                self.trials -= 1;
                match tried {
                    Ok(()) => matched += 1,
                    Err(Fail::Invalid(_)) => {}
                    Err(budget) => return Err(budget),
                }
            }
            if matched != 1 {
                return Err(self.invalid(
                    "oneOf",
                    format!("matches {matched} of the {} schemas of oneOf; exactly one must match", k.one_of.len()),
                ));
            }
        }
        Ok(())
    }

    fn number(&self, k: &Keywords, n: f64) -> Result<(), Fail> {
        let checks: [NumberCheck; 4] = [
            ("minimum", k.minimum, |n, b| n >= b, "less than the minimum"),
            ("maximum", k.maximum, |n, b| n <= b, "greater than the maximum"),
            ("exclusiveMinimum", k.exclusive_minimum, |n, b| n > b, "not greater than the exclusive minimum"),
            ("exclusiveMaximum", k.exclusive_maximum, |n, b| n < b, "not less than the exclusive maximum"),
        ];
        for (keyword, bound, ok, what) in checks {
            if let Some(b) = bound
                && !ok(n, b)
            {
                return Err(self.invalid(keyword, format!("{n} is {what} {b}")));
            }
        }
        Ok(())
    }
}

/// A numeric keyword: its name, its bound, whether a number passes it, and
/// what a failing number is.
type NumberCheck = (&'static str, Option<f64>, fn(f64, f64) -> bool, &'static str);

/// The type bit of a value: integers (`1`, `1.0`) are `integer`, other
/// numbers the rest of `number`.
pub(crate) fn type_of(v: &Value) -> Types {
    match v {
        Value::Null => NULL,
        Value::Bool(_) => BOOLEAN,
        Value::Number(n) => {
            if n.is_i64() || n.is_u64() || n.as_f64().is_some_and(|f| f.is_finite() && f.fract() == 0.0) {
                INTEGER
            } else {
                FRACTION
            }
        }
        Value::String(_) => STRING,
        Value::Array(_) => ARRAY,
        Value::Object(_) => OBJECT,
    }
}

pub(crate) fn type_names(types: Types) -> String {
    let mut names = Vec::new();
    for (bit, name) in [(NULL, "null"), (BOOLEAN, "boolean"), (OBJECT, "object"), (ARRAY, "array"), (STRING, "string")]
    {
        if types & bit != 0 {
            names.push(name);
        }
    }
    if types & FRACTION != 0 {
        names.push("number");
    } else if types & INTEGER != 0 {
        names.push("integer");
    }
    names.join(" or ")
}

/// JSON equality as JSON Schema has it: numbers by value (`1` equals `1.0`).
pub(crate) fn json_eq(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => match (x.as_i64(), y.as_i64()) {
            (Some(x), Some(y)) => x == y,
            _ => match (x.as_u64(), y.as_u64()) {
                (Some(x), Some(y)) => x == y,
                _ => x.as_f64() == y.as_f64(),
            },
        },
        (Value::Array(x), Value::Array(y)) => x.len() == y.len() && x.iter().zip(y).all(|(a, b)| json_eq(a, b)),
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| json_eq(v, w)))
        }
        _ => a == b,
    }
}

/// A value for an error message, cut short: scalars as they are (strings
/// cut to 64 characters), arrays and objects by kind only, so a failing
/// branch of an `anyOf` never serializes a large payload.
fn preview(v: &Value) -> String {
    match v {
        // By bytes: counting the characters of a long string is work.
        Value::String(s) if s.len() > 64 => {
            let cut: String = s.chars().take(61).collect();
            format!("{:?}...", cut)
        }
        Value::Array(_) | Value::Object(_) => super::compile::kind(v).to_owned(),
        scalar => scalar.to_string(),
    }
}
