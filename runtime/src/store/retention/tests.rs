use super::*;

#[test]
fn keep_and_start_positions_parse() {
    assert_eq!(Keep::parse("forever").unwrap(), Keep::Forever);
    assert_eq!(Keep::parse("2h").unwrap(), Keep::For(Duration::from_secs(7200)));
    assert_eq!(Keep::parse("10KiB").unwrap(), Keep::Bytes(10 * 1024));
    assert_eq!(Keep::parse("3MB").unwrap(), Keep::Bytes(3_000_000));
    assert!(Keep::parse("0B").is_err());
    assert!(Keep::parse("0s").is_err());
    assert!(Keep::parse("lots").is_err());
    assert_eq!(StartPosition::parse("end").unwrap(), StartPosition::End);
    assert_eq!(StartPosition::parse("beginning").unwrap(), StartPosition::Beginning);
    assert_eq!(StartPosition::parse("42").unwrap(), StartPosition::Seq(42));
    assert_eq!(StartPosition::parse("1970-01-01T00:00:01Z").unwrap(), StartPosition::Time(1000));
    assert!(StartPosition::parse("yesterday").is_err());
}

#[test]
fn the_time_index_answers_the_first_event_appended_in_or_after_a_second() {
    let (_dir, store) = super::super::testing::temp_store();
    let db = store.shared.database().unwrap();
    for (first, head, ms) in [(0, 3, 10_500), (3, 5, 10_900), (5, 9, 12_000), (9, 10, 11_000)] {
        let txn = db.begin_write().unwrap();
        index_time(&txn, first, head, ms).unwrap();
        txn.commit().unwrap();
    }
    // One entry per second; a clock that went back adds none.
    assert_eq!(store.time_index_len().unwrap(), 2);
    assert_eq!(store.seq_at_time(0).unwrap(), 0);
    assert_eq!(store.seq_at_time(10_999).unwrap(), 0);
    assert_eq!(store.seq_at_time(11_000).unwrap(), 5);
    assert_eq!(store.seq_at_time(12_999).unwrap(), 5);
    assert_eq!(store.seq_at_time(13_000).unwrap(), store.head());
}
