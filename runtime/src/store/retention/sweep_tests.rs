use super::*;
use crate::store::ParkedEntry;
use crate::store::codec::encode;
use crate::store::testing::{event, temp_store, write_at};
use weir_abi::Event;

fn pass(store: &Store) {
    write_at(store, super::super::now_ms(), |w| sweep(w, &store.shared.retention).map(drop));
}

fn left(store: &Store) -> Vec<u64> {
    store.read_log(0, usize::MAX).unwrap().into_iter().map(|(s, _)| s).collect()
}

#[test]
fn a_parked_event_and_an_unread_one_hold_retention_and_the_hold_is_reported() {
    let (_dir, store) = temp_store();
    let events: Vec<Event> = (0..6).map(|i| event(&format!("k{i}"))).collect();
    store.publish_blocking(events).unwrap();
    let pattern = Pattern::parse("orders.>").unwrap();
    store.register_reader("a/x", RetentionReader { patterns: Some(vec![pattern.clone()]), position: None });
    store.register_reader("b/x", RetentionReader { patterns: Some(vec![pattern]), position: None });
    // a has read everything but seq 2, parked; b is at 4.
    write_at(&store, 0, |w| {
        w.cursors.insert("a/x", 6)?;
        w.parked.insert(("a/x", 2), encode(&ParkedEntry::waiting(2, None)).map_err(Fatal)?.as_slice())?;
        w.cursors.insert("b/x", 4)?;
        Ok(())
    });
    store.set_retention(RetentionPolicy { rules: Vec::new(), default: Keep::Bytes(1) });
    pass(&store);
    assert_eq!(left(&store), [2, 3, 4, 5]);
    let held = store.retention_held();
    assert_eq!(held["a/x"], HeldBack { events: 4, since_seq: 2 });
    assert_eq!(held["b/x"], HeldBack { events: 2, since_seq: 4 });

    // A reader whose patterns do not match holds nothing; an
    // unregistered cursor (an orphan) holds every topic.
    write_at(&store, 0, |w| {
        w.parked.remove(("a/x", 2))?;
        w.cursors.insert("b/x", 6)?;
        w.cursors.insert("orphan/x", 5)?;
        Ok(())
    });
    store.register_reader(
        "c/x",
        RetentionReader { patterns: Some(vec![Pattern::parse("other.>").unwrap()]), position: None },
    );
    pass(&store);
    assert_eq!(left(&store), [5]);
    // The id index forgets the removed events.
    assert_eq!(store.seq_of(event("k0").id).unwrap(), None);
    assert_eq!(store.seq_of(event("k5").id).unwrap(), Some(5));
    assert_eq!(store.retention_held().keys().collect::<Vec<_>>(), ["orphan/x"]);
    assert!(store.log_bytes() > 0);
}

#[test]
fn compaction_forgets_a_key_once_its_last_event_is_removed() {
    let (_dir, store) = temp_store();
    let mut events: Vec<Event> = (0..3).map(|i| event(&format!("id{i}"))).collect();
    for e in &mut events {
        e.key = Some("same".into());
    }
    store.publish_blocking(events).unwrap();
    write_at(&store, 0, |w| w.cursors.insert("a/x", 3).map(drop).map_err(Fatal::from));
    let rule = RetentionRule { pattern: Pattern::parse("orders.>").unwrap(), keep: Keep::Forever, compact: true };
    store.set_retention(RetentionPolicy { rules: vec![rule.clone()], default: Keep::Forever });
    pass(&store);
    assert_eq!(left(&store), [2], "the last event of the key is kept");
    let latest = |store: &Store| {
        let read = store.shared.begin_read().unwrap();
        read.open_table(COMPACT_LATEST).unwrap().len().unwrap()
    };
    assert_eq!(latest(&store), 1);
    // A size rule then removes the last one too: its entry goes.
    store.set_retention(RetentionPolicy {
        rules: vec![RetentionRule { keep: Keep::Bytes(1), ..rule }],
        default: Keep::Forever,
    });
    pass(&store);
    assert!(left(&store).is_empty());
    assert_eq!(latest(&store), 0);
}
