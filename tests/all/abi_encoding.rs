//! Property tests of the ABI encoding: every envelope, delivery and outcome
//! survives a round trip, including arbitrary bytes and unicode.

use proptest::prelude::*;
use weir_abi::encoding::{decode, encode};
use weir_abi::{Delivery, DeliveryRef, Emit, Event, EventId, Header, Outcome};

fn id() -> impl Strategy<Value = EventId> {
    any::<[u8; 16]>().prop_map(EventId)
}

fn headers() -> impl Strategy<Value = Vec<Header>> {
    prop::collection::vec((any::<String>(), any::<String>()).prop_map(|(name, value)| Header { name, value }), 0..4)
}

prop_compose! {
    fn event()(
        id in id(), topic in any::<String>(), source in any::<String>(), key in any::<Option<String>>(),
        schema_version in any::<u32>(), time in any::<i64>(), content_type in any::<String>(),
        headers in headers(), idempotency_key in any::<String>(),
        correlation_id in prop::option::of(id()), causation_id in prop::option::of(id()),
        payload in prop::collection::vec(any::<u8>(), 0..2048),
    ) -> Event {
        Event { id, topic, source, key, schema_version, time, content_type, headers, idempotency_key, correlation_id, causation_id, payload }
    }
}

prop_compose! {
    fn emit()(
        topic in any::<String>(), key in any::<Option<String>>(), schema_version in any::<u32>(),
        content_type in any::<String>(), headers in headers(), idempotency_key in any::<Option<String>>(),
        correlation_id in prop::option::of(id()), causation_id in prop::option::of(id()),
        payload in prop::collection::vec(any::<u8>(), 0..1024),
    ) -> Emit {
        Emit { topic, key, schema_version, content_type, headers, idempotency_key, correlation_id, causation_id, payload }
    }
}

fn outcome() -> impl Strategy<Value = Outcome> {
    prop_oneof![
        prop::collection::vec(emit(), 0..5).prop_map(Outcome::Ok),
        any::<String>().prop_map(Outcome::Retry),
        any::<String>().prop_map(Outcome::Reject),
    ]
}

proptest! {
    #[test]
    fn delivery_round_trips(event in event(), subscription in any::<String>(), attempt in any::<u32>()) {
        let delivery = Delivery { event, subscription, attempt };
        let bytes = encode(&delivery).unwrap();
        prop_assert_eq!(decode::<Delivery>(&bytes).unwrap(), delivery.clone());
        // The borrowed form the host uses encodes to the very same bytes.
        let by_ref = DeliveryRef { event: &delivery.event, subscription: &delivery.subscription, attempt: delivery.attempt };
        prop_assert_eq!(encode(&by_ref).unwrap(), bytes);
    }

    #[test]
    fn outcome_round_trips(outcome in outcome()) {
        let bytes = encode(&outcome).unwrap();
        prop_assert_eq!(decode::<Outcome>(&bytes).unwrap(), outcome);
    }

    #[test]
    fn payload_costs_its_length_plus_a_prefix(payload in prop::collection::vec(any::<u8>(), 0..70_000)) {
        // A payload costs its length plus a 1-, 3- or 5-byte varint prefix.
        let emit = Emit {
            topic: String::new(), key: None, schema_version: 0, content_type: String::new(), headers: vec![],
            idempotency_key: None, correlation_id: None, causation_id: None, payload: payload.clone(),
        };
        let prefix = match payload.len() { 0..=250 => 1, 251..=65_535 => 3, _ => 5 };
        prop_assert_eq!(encode(&emit).unwrap().len(), 8 + prefix + payload.len());
    }

    #[test]
    fn truncated_or_garbage_input_is_an_error_never_a_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        // Whatever the result, decoding must return rather than panic.
        let _ = decode::<Delivery>(&bytes);
        let _ = decode::<Outcome>(&bytes);
    }

    #[test]
    fn every_strict_prefix_of_an_outcome_is_refused(outcome in outcome()) {
        let bytes = encode(&outcome).unwrap();
        let step = (bytes.len() / 256).max(1);
        for cut in (0..bytes.len()).step_by(step) {
            prop_assert!(decode::<Outcome>(&bytes[..cut]).is_err());
        }
    }
}
