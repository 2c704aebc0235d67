use super::super::testing::{event, temp_store};
use super::*;
use crate::consumer::ConsumerError;

fn ask<T: Send + 'static>(send: impl FnOnce(Reply<T>)) -> Result<T, StoreError> {
    let (tx, rx) = std::sync::mpsc::channel();
    send(Box::new(move |r| drop(tx.send(r))));
    rx.recv().unwrap()
}

fn spec(max_deliveries: u32) -> ConsumerSpec {
    ConsumerSpec {
        topics: vec!["orders.>".into()],
        ack_wait_ms: 60_000,
        max_deliveries,
        backoff_ms: Vec::new(),
        per_key_ordering: false,
        max_in_flight: 100,
    }
}

#[test]
fn an_ack_batch_applies_each_token_once_and_a_term_dead_letters_in_the_same_commit() {
    let (_dir, store) = temp_store();
    store.publish_blocking(vec![event("a"), event("b")]).unwrap();
    let from = ("beginning".to_owned(), StartAt::Beginning);
    let (created, record) = ask(|r| store.consumer_put("c".into(), spec(5), from.clone(), 1, r)).unwrap().unwrap();
    assert!(created);
    assert_eq!(record.cursor, 0);
    // The server's bound: a second consumer is refused, a change is not.
    let refused = ask(|r| store.consumer_put("d".into(), spec(5), from.clone(), 1, r)).unwrap();
    assert!(matches!(refused, Err(ConsumerError::TooMany { limit: 1 })));
    assert!(!ask(|r| store.consumer_put("c".into(), spec(5), from.clone(), 1, r)).unwrap().unwrap().0);

    let fetched = ask(|r| store.consumer_fetch("c".into(), 10, r)).unwrap().unwrap();
    let tokens: Vec<Token> = fetched.deliveries.iter().map(|d| d.token).collect();
    assert_eq!(tokens.iter().map(|t| (t.seq, t.attempt)).collect::<Vec<_>>(), [(0, 1), (1, 1)]);
    assert_eq!(fetched.low_water, 0);
    let items = vec![
        (tokens[0], AckAction::Ack),
        (tokens[0], AckAction::Ack),
        (tokens[1], AckAction::Term { reason: "no".into() }),
    ];
    let results = ask(|r| store.consumer_ack("c".into(), items, r)).unwrap().unwrap();
    assert_eq!(results, [Ok(AckDone::Acked), Err(Stale::Unknown), Ok(AckDone::DeadLettered)]);
    let views = store.consumers().unwrap();
    assert_eq!((views[0].record.cursor, views[0].pending), (2, 0));
    let dead = store.dlq_entry("consumers/c", 1).unwrap().unwrap();
    assert_eq!((dead.code.as_str(), dead.message.as_str(), dead.attempts), ("consumer_term", "no", 1));

    // Redrive: back as a first delivery; a delete removes it all.
    assert_eq!(ask(|r| store.consumer_redrive("c".into(), vec![1, 7], r)).unwrap().unwrap(), 1);
    assert!(store.dlq_entry("consumers/c", 1).unwrap().is_none());
    let again = ask(|r| store.consumer_fetch("c".into(), 10, r)).unwrap().unwrap();
    assert_eq!(again.deliveries.iter().map(|d| (d.token.seq, d.token.attempt)).collect::<Vec<_>>(), [(1, 1)]);
    assert!(ask(|r| store.consumer_delete("c".into(), r)).unwrap());
    assert!(store.consumers().unwrap().is_empty());
    assert!(!ask(|r| store.consumer_delete("c".into(), r)).unwrap());
    let gone = ask(|r| store.consumer_fetch("c".into(), 10, r)).unwrap();
    assert!(matches!(gone, Err(ConsumerError::NotFound(_))));
}

#[test]
fn an_undecodable_log_record_is_quarantined_and_the_consumer_goes_on() {
    use super::super::testing::write_at;
    let (_dir, store) = temp_store();
    store.publish_blocking(vec![event("a"), event("b"), event("c")]).unwrap();
    write_at(&store, 0, |w| {
        w.log.insert(1, b"not a record".as_slice())?;
        Ok(())
    });
    let from = ("beginning".to_owned(), StartAt::Beginning);
    ask(|r| store.consumer_put("c".into(), spec(5), from, 64, r)).unwrap().unwrap();
    let fetched = ask(|r| store.consumer_fetch("c".into(), 10, r)).unwrap().unwrap();
    assert_eq!(fetched.deliveries.iter().map(|d| d.token.seq).collect::<Vec<_>>(), [0, 2]);
    assert_eq!(fetched.dead_lettered, 1);
    let entry = store.dlq_entry("consumers/c", 1).unwrap().unwrap();
    assert_eq!((entry.code.as_str(), entry.event.topic.as_str()), ("record_corrupt", "weir.record.corrupt"));
    assert_eq!(store.consumers().unwrap()[0].record.cursor, 3);
}
