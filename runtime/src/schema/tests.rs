use serde_json::json;

use super::*;

fn schema(v: serde_json::Value) -> Schema {
    Schema::from_value(&v).unwrap()
}

fn fails(s: &Schema, v: serde_json::Value) -> Violation {
    s.validate(&v).unwrap_err()
}

#[test]
fn every_keyword_of_the_subset_is_enforced_with_its_pointer() {
    let s = schema(json!({
        "type": "object",
        "required": ["id", "amount"],
        "additionalProperties": false,
        "properties": {
            "id": {"type": "string", "minLength": 2, "maxLength": 4},
            "amount": {"type": ["number", "null"], "minimum": 0, "exclusiveMaximum": 100},
            "status": {"enum": ["new", "paid"]},
            "kind": {"const": "order"},
            "lines": {"type": "array", "minItems": 1, "maxItems": 2, "items": {"$ref": "#/$defs/line"}},
            "either": {"oneOf": [{"type": "integer"}, {"type": "string"}]},
            "any": {"anyOf": [{"type": "integer", "maximum": 1}, {"type": "boolean"}]},
            "all": {"allOf": [{"type": "integer"}, {"exclusiveMinimum": 5}, {"maximum": 9}]}
        },
        "$defs": {"line": {"type": "object", "required": ["sku"], "additionalProperties": {"type": "integer"}}}
    }));
    assert!(s.validate(&json!({"id": "ab", "amount": 1.5})).is_ok());
    assert!(s.validate(&json!({"id": "ab", "amount": null, "lines": [{"sku": 1, "n": 2}]})).is_ok());
    let cases = [
        (json!([]), "", "type"),
        (json!({"id": "ab"}), "", "required"),
        (json!({"id": "ab", "amount": 1, "extra": 1}), "/extra", "additionalProperties"),
        (json!({"id": "a", "amount": 1}), "/id", "minLength"),
        (json!({"id": "abcde", "amount": 1}), "/id", "maxLength"),
        (json!({"id": "ab", "amount": "1"}), "/amount", "type"),
        (json!({"id": "ab", "amount": -1}), "/amount", "minimum"),
        (json!({"id": "ab", "amount": 100}), "/amount", "exclusiveMaximum"),
        (json!({"id": "ab", "amount": 1, "status": "gone"}), "/status", "enum"),
        (json!({"id": "ab", "amount": 1, "kind": "x"}), "/kind", "const"),
        (json!({"id": "ab", "amount": 1, "lines": []}), "/lines", "minItems"),
        (json!({"id": "ab", "amount": 1, "lines": [{"sku": 1}, {"sku": 1}, {"sku": 1}]}), "/lines", "maxItems"),
        (json!({"id": "ab", "amount": 1, "lines": [{"x": 1}]}), "/lines/0", "required"),
        (json!({"id": "ab", "amount": 1, "lines": [{"sku": 1, "n": "2"}]}), "/lines/0/n", "type"),
        (json!({"id": "ab", "amount": 1, "either": 1.5}), "/either", "oneOf"),
        (json!({"id": "ab", "amount": 1, "any": 2}), "/any", "anyOf"),
        (json!({"id": "ab", "amount": 1, "all": 5}), "/all", "exclusiveMinimum"),
        (json!({"id": "ab", "amount": 1, "all": 10}), "/all", "maximum"),
    ];
    for (value, pointer, keyword) in cases {
        let v = fails(&s, value.clone());
        assert_eq!((v.pointer.as_str(), v.keyword), (pointer, keyword), "{value}: {v}");
    }
    // `1.0` is an integer, and equal to `1`.
    assert!(schema(json!({"type": "integer", "enum": [1]})).validate(&json!(1.0)).is_ok());
    // A failed branch leaves the pointer of the next failure as it was.
    let s = schema(json!({"anyOf": [{"additionalProperties": false}, {"properties": {"b": {"type": "string"}}}]}));
    assert_eq!(fails(&s, json!({"a": 1, "b": 2})).pointer, "");
    let s = schema(
        json!({"allOf": [{"anyOf": [{"additionalProperties": false}, true]}, {"properties": {"b": {"type": "string"}}}]}),
    );
    assert_eq!(fails(&s, json!({"a": 1, "b": 2})).pointer, "/b");
    // Pointers escape `/` and `~`.
    let v = fails(&schema(json!({"additionalProperties": false})), json!({"a/b~": 1}));
    assert_eq!(v.pointer, "/a~1b~0");
}

#[test]
fn what_is_outside_the_subset_is_refused_at_load() {
    for (bad, needle) in [
        (json!({"pattern": "^a"}), "regular-expression"),
        (json!({"format": "email"}), "not enforced"),
        (json!({"uniqueItems": true}), "not in the subset"),
        (json!({"items": [{}]}), "tuple"),
        (json!({"$ref": "other.json"}), "local references"),
        (json!({"$ref": "#/$defs/missing"}), "no such entry"),
        (json!({"type": "float"}), "not a JSON type"),
        (json!({"properties": {"a": {"$defs": {}}}}), "only accepted at the root"),
        (json!(3), "object or a boolean"),
    ] {
        let e = Schema::from_value(&bad).unwrap_err();
        assert!(e.to_string().contains(needle), "{bad}: {e}");
    }
}

#[test]
fn hostile_schemas_are_bounded() {
    // Too big.
    let big = format!("{{\"enum\": [{}0]}}", "0,".repeat(MAX_SCHEMA_BYTES / 2));
    assert!(Schema::parse(&big).unwrap_err().reason.contains("over the maximum"));
    // Too deep.
    let mut deep = json!(true);
    for _ in 0..=MAX_SCHEMA_DEPTH {
        deep = json!({"items": deep});
    }
    assert!(Schema::from_value(&deep).unwrap_err().reason.contains("deeper"));
    // Too many nodes.
    let props: serde_json::Map<String, serde_json::Value> =
        (0..=MAX_SCHEMA_NODES).map(|i| (format!("p{i}"), json!(true))).collect();
    let e = Schema::from_value(&json!({"properties": props})).unwrap_err();
    assert!(e.reason.contains("subschemas"), "{e}");
    // `$ref` loops that never descend are refused; recursion through
    // properties is fine.
    for looping in [
        json!({"$ref": "#"}),
        json!({"$defs": {"a": {"$ref": "#/$defs/b"}, "b": {"anyOf": [{"$ref": "#/$defs/a"}]}}, "$ref": "#/$defs/a"}),
    ] {
        assert!(Schema::from_value(&looping).unwrap_err().reason.contains("$ref loop"), "{looping}");
    }
    let list = schema(json!({"type": "object", "properties": {"next": {"$ref": "#"}}}));
    let mut value = json!({});
    for _ in 0..100 {
        value = json!({"next": value});
    }
    assert!(list.validate(&value).is_ok());
    // Exponential work through `anyOf`s of `$ref`s: stopped by the step bound.
    let mut defs = serde_json::Map::new();
    defs.insert("d0".into(), json!({"type": "string"}));
    for i in 1..40 {
        let prev = format!("#/$defs/d{}", i - 1);
        defs.insert(format!("d{i}"), json!({"anyOf": [{"$ref": prev}, {"$ref": prev}]}));
    }
    let blowup = schema(json!({"$defs": defs, "$ref": "#/$defs/d39"}));
    let v = blowup.validate(&json!(1)).unwrap_err();
    assert_eq!(v.keyword, "budget", "{v}");

    // Work per step is charged too: a 1 MiB string measured again and again,
    // a large enum checked for every item of a large array.
    let started = std::time::Instant::now();
    let mut defs = serde_json::Map::new();
    defs.insert("d0".into(), json!({"type": "string", "minLength": 1, "enum": ["x"]}));
    for i in 1..40 {
        let prev = format!("#/$defs/d{}", i - 1);
        defs.insert(format!("d{i}"), json!({"anyOf": [{"$ref": prev}, {"$ref": prev}]}));
    }
    let strings = schema(json!({"$defs": defs, "$ref": "#/$defs/d39"}));
    let v = strings.validate(&json!("y".repeat(1 << 20))).unwrap_err();
    assert_eq!(v.keyword, "budget", "{v}");
    let values: Vec<serde_json::Value> = (0..20_000).map(|i| json!(format!("value-{i}"))).collect();
    let big_enum = schema(json!({"type": "array", "items": {"enum": values}}));
    let items: Vec<serde_json::Value> = (0..10_000).map(|_| json!("value-19999")).collect();
    assert!(big_enum.validate(&json!(["value-7"])).is_ok());
    let v = big_enum.validate(&json!(items)).unwrap_err();
    assert_eq!(v.keyword, "budget", "{v}");
    // An object of many keys walked again and again.
    let mut defs = serde_json::Map::new();
    // Fails at the last key, after walking the others.
    defs.insert("d0".into(), json!({"required": ["k0"], "properties": {"k99999": {"type": "string"}}}));
    for i in 1..40 {
        let prev = format!("#/$defs/d{}", i - 1);
        defs.insert(format!("d{i}"), json!({"anyOf": [{"$ref": prev}, {"$ref": prev}]}));
    }
    let objects = schema(json!({"$defs": defs, "$ref": "#/$defs/d39"}));
    let wide: serde_json::Map<String, serde_json::Value> = (0..100_000).map(|i| (format!("k{i}"), json!(i))).collect();
    let v = objects.validate(&serde_json::Value::Object(wide)).unwrap_err();
    assert_eq!(v.keyword, "budget", "{v}");
    // Generous for a debug build on a busy machine; well under a second in
    // release.
    assert!(started.elapsed() < std::time::Duration::from_secs(20), "{:?}", started.elapsed());
}

fn compat(mode: &str, old: serde_json::Value, new: serde_json::Value) -> Result<(), String> {
    Compatibility::parse(mode).unwrap().check(&schema(old), &schema(new))
}

#[test]
fn compatibility_refuses_with_the_reason() {
    let v1 = json!({"type": "object", "required": ["id"], "additionalProperties": false,
        "properties": {"id": {"type": "string"}, "n": {"type": "integer"}}});
    // Adding an optional property to a closed object, widening a type: backward.
    let v2 = json!({"type": "object", "required": ["id"], "additionalProperties": false,
        "properties": {"id": {"type": "string"}, "n": {"type": "number"}, "note": {"type": "string"}}});
    // To an open one it is not: `{"note": 5}` was valid.
    let open = json!({"type": "object", "properties": {"note": {"type": "string"}}});
    let e = compat("backward", json!({"type": "object"}), open).unwrap_err();
    assert!(e.contains("/properties/note"), "{e}");
    compat("backward", v1.clone(), v2.clone()).unwrap();
    // ...not forward: `n` narrowed from number to integer seen the other way.
    let e = compat("forward", v1.clone(), v2.clone()).unwrap_err();
    assert!(e.contains("type narrowed") && e.contains("/properties/n"), "{e}");
    let e = compat(
        "forward",
        v1.clone(),
        json!({"type": "object", "required": ["id"], "additionalProperties": false,
        "properties": {"id": {"type": "string"}, "n": {"type": "integer"}, "note": {"type": "string"}}}),
    )
    .unwrap_err();
    assert!(e.contains("/properties/note") && e.contains("allows nothing"), "{e}");
    assert!(compat("full", v1.clone(), v2).is_err());
    // A new required property.
    let v3 = json!({"type": "object", "required": ["id", "currency"], "properties": {"id": {"type": "string"}}});
    let e = compat("backward", v1.clone(), v3).unwrap_err();
    assert!(e.contains("\"currency\" is required"), "{e}");
    // A removed enum value.
    let e = compat("backward", json!({"enum": ["a", "b"]}), json!({"enum": ["a"]})).unwrap_err();
    assert!(e.contains("\"b\""), "{e}");
    compat("backward", json!({"enum": ["a"]}), json!({"enum": ["a", "b"]})).unwrap();
    // Bounds.
    assert!(compat("backward", json!({"maxLength": 10}), json!({"maxLength": 5})).unwrap_err().contains("maxLength"));
    assert!(compat("backward", json!({"minimum": 0}), json!({"exclusiveMinimum": 0})).is_err());
    compat("backward", json!({"exclusiveMinimum": 0}), json!({"minimum": 0})).unwrap();
    // Closing an open object.
    assert!(compat("backward", v1.clone(), json!({"type": "object", "additionalProperties": false})).is_err());
    // Identical, with oneOf and recursion: compatible every way.
    let rec = json!({"oneOf": [{"required": ["a"]}, {"required": ["b"]}], "properties": {"next": {"$ref": "#"}}});
    compat("full", rec.clone(), rec).unwrap();
    // anyOf split on the old side.
    compat(
        "backward",
        json!({"anyOf": [{"type": "integer"}, {"type": "string"}]}),
        json!({"type": ["number", "string"]}),
    )
    .unwrap();
    assert!(compat("none", json!({"type": "string"}), json!({"type": "integer"})).is_ok());
    // The orders example: amount from a number to an object.
    let o1 = json!({"type": "object", "properties": {"amount": {"type": "number"}}});
    let o2 = json!({"type": "object", "properties": {"amount": {"type": "object", "required": ["value", "currency"]}}});
    let e = compat("backward", o1, o2).unwrap_err();
    assert!(e.contains("/properties/amount") && e.contains("number"), "{e}");
}

#[test]
fn the_registry_checks_size_version_and_body() {
    let entry = TopicSchemas::new(
        crate::topic::Pattern::parse("orders.order.*").unwrap(),
        Compatibility::Backward,
        Some(32),
        vec![SchemaVersion {
            version: 1,
            origin: Some("inline".into()),
            text: None,
            schema: Some(std::sync::Arc::new(schema(json!({"type": "object", "required": ["id"]})))),
        }],
    );
    let schemas = Schemas::new(vec![entry]);
    schemas.check("orders.order.created", 1, br#"{"id":1}"#).unwrap();
    schemas.check("payments.card.charged", 7, b"not json at all, no schema").unwrap();
    let code = |r: Result<(), SchemaError>| r.unwrap_err().code();
    assert_eq!(code(schemas.check("orders.order.created", 2, b"{}")), "unknown_schema_version");
    assert_eq!(code(schemas.check("orders.order.created", 1, b"{}")), "schema_violation");
    assert_eq!(code(schemas.check("orders.order.created", 1, b"<xml/>")), "schema_violation");
    let e = schemas.check("orders.order.created", 1, &[b' '; 33]).unwrap_err();
    assert_eq!(e.code(), "payload_too_large");
    assert!(e.to_string().contains("32 bytes"), "{e}");
    let ids = crate::ids::IdGenerator::new();
    let event = |topic: &str| {
        crate::envelope::JsonEvent { topic: topic.into(), ..Default::default() }.into_event(&ids, "t").unwrap()
    };
    schemas.observe(&[event("orders.order.created"), event("payments.card.charged")]);
    let mut out = String::new();
    schemas.render_metrics(&mut out);
    assert!(out.contains("weir_payload_bytes_count{pattern=\"orders.order.*\"} 1"), "{out}");
    assert!(out.contains("weir_payload_bytes_count{pattern=\"other\"} 1"), "{out}");
}

#[test]
fn validation_depth_and_compatibility_work_are_bounded() {
    // A chain of `allOf`s through `$ref`s nests past the depth bound on a
    // single value, within every load bound.
    let mut defs = serde_json::Map::new();
    defs.insert("d0".into(), json!(true));
    for i in 1..300 {
        defs.insert(format!("d{i}"), json!({"allOf": [{"$ref": format!("#/$defs/d{}", i - 1)}]}));
    }
    let chain = schema(json!({"$defs": defs, "$ref": "#/$defs/d299"}));
    let v = chain.validate(&json!(1)).unwrap_err();
    assert!(v.keyword == "budget" && v.reason.contains("deeper"), "{v}");

    // Two exponential `anyOf` chains that differ at the bottom: the
    // comparison stops at its step bound, and says so.
    let blowup = |bottom: serde_json::Value| {
        let mut defs = serde_json::Map::new();
        defs.insert("d0".into(), bottom);
        for i in 1..40 {
            let prev = format!("#/$defs/d{}", i - 1);
            defs.insert(format!("d{i}"), json!({"anyOf": [{"$ref": prev}, {"$ref": prev}]}));
        }
        json!({"$defs": defs, "$ref": "#/$defs/d39"})
    };
    let e = compat("backward", blowup(json!({"type": "string"})), blowup(json!({"type": "integer"}))).unwrap_err();
    assert!(e.contains("nest too deeply"), "{e}");
    // Wide and shallow: alternative i of 500 fits the reader's alternative
    // i, found after i tries: 125,000 comparisons.
    let writer: Vec<_> = (0..500).map(|i| json!({"type": "integer", "maximum": i})).collect();
    let mut reader: Vec<_> = (0..500).map(|i| json!({"type": "integer", "maximum": i})).collect();
    reader.push(json!({"type": "string"}));
    let e = compat("backward", json!({"anyOf": writer}), json!({"anyOf": reader})).unwrap_err();
    assert!(e.contains("too complex"), "{e}");
}

mod soundness {
    //! The compatibility check is sound: whenever it says `a` is included
    //! in `b`, no value valid under `a` is refused by `b`. Random schemas of
    //! the subset against random values. (Of random pairs, about one in
    //! eight is found included with a value valid under the first, so the
    //! property is not vacuous.)

    use proptest::prelude::*;
    use serde_json::{Value, json};

    use super::super::{Schema, compat::includes};

    fn value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(json!(null)),
            any::<bool>().prop_map(Value::from),
            (-2i64..4).prop_map(Value::from),
            Just(json!(1.5)),
            prop::sample::select(vec!["", "a", "ab", "abc"]).prop_map(Value::from),
        ];
        leaf.prop_recursive(3, 16, 3, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..3).prop_map(Value::from),
                prop::collection::btree_map(prop::sample::select(vec!["a", "b", "c"]), inner, 0..3)
                    .prop_map(|m| { Value::Object(m.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()) }),
            ]
        })
    }

    fn type_name() -> impl Strategy<Value = &'static str> {
        prop::sample::select(vec!["null", "boolean", "object", "array", "number", "integer", "string"])
    }

    fn schema() -> impl Strategy<Value = Value> {
        let small = prop_oneof![
            any::<bool>().prop_map(Value::from),
            type_name().prop_map(|t| json!({"type": t})),
            (type_name(), type_name()).prop_map(|(t, u)| json!({"type": [t, u]})),
            prop::collection::vec(value(), 1..3).prop_map(|v| json!({"enum": v})),
            value().prop_map(|v| json!({"const": v})),
            (-2i64..4).prop_map(|n| json!({"minimum": n})),
            (-2i64..4).prop_map(|n| json!({"exclusiveMaximum": n})),
            (0u64..3).prop_map(|n| json!({"type": "string", "maxLength": n})),
            (0u64..3).prop_map(|n| json!({"minItems": n})),
            prop::collection::vec(prop::sample::select(vec!["a", "b"]), 1..3).prop_map(|r| json!({"required": r})),
        ];
        small.prop_recursive(3, 24, 3, |inner| {
            prop_oneof![
                (inner.clone(), inner.clone())
                    .prop_map(|(a, b)| json!({"properties": {"a": a}, "additionalProperties": b})),
                (inner.clone(), prop::option::of(inner.clone())).prop_map(|(a, b)| match b {
                    Some(b) => json!({"type": "object", "properties": {"a": a, "b": b}}),
                    None => json!({"properties": {"a": a}, "required": ["a"]}),
                }),
                inner.clone().prop_map(|s| json!({"type": "array", "items": s})),
                prop::collection::vec(inner.clone(), 1..3).prop_map(|v| json!({"anyOf": v})),
                prop::collection::vec(inner.clone(), 1..3).prop_map(|v| json!({"allOf": v})),
                prop::collection::vec(inner.clone(), 1..3).prop_map(|v| json!({"oneOf": v})),
                (inner.clone(), type_name())
                    .prop_map(|(s, t)| json!({"$defs": {"d": s}, "$ref": "#/$defs/d", "type": t})),
            ]
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]
        #[test]
        fn included_means_no_counterexample(a in schema(), b in schema(), values in prop::collection::vec(value(), 48)) {
            let (Ok(sa), Ok(sb)) = (Schema::from_value(&a), Schema::from_value(&b)) else { return Ok(()) };
            prop_assert!(includes(&sa, &sa).is_ok(), "not reflexive: {}", a);
            if includes(&sa, &sb).is_ok() {
                for v in &values {
                    if sa.validate(v).is_ok() {
                        prop_assert!(sb.validate(v).is_ok(), "{} included in {} but {} is refused by the latter", a, b, v);
                    }
                }
            }
        }
    }
}
