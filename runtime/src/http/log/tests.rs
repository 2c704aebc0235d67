use std::future::poll_fn;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper::body::Body as _;
use tokio::sync::{Semaphore, mpsc};

use super::{Outbox, SseBody};

/// What a body yields until it ends.
async fn drain(mut body: SseBody) -> Vec<String> {
    let mut out = Vec::new();
    while let Some(frame) = poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await {
        let data = frame.unwrap().into_data().unwrap();
        out.push(String::from_utf8(data.to_vec()).unwrap());
    }
    out
}

#[tokio::test]
async fn a_client_that_does_not_take_its_messages_is_dropped_with_a_final_event_after_them() {
    let (tx, rx) = mpsc::channel(2);
    let last_words = Arc::new(Mutex::new(None));
    let room = Arc::new(Semaphore::new(1 << 20));
    let out = Outbox {
        tx,
        room: Arc::clone(&room),
        max_bytes: 1 << 20,
        last_words: Arc::clone(&last_words),
        slow_after: Duration::from_millis(20),
    };
    assert!(out.send(super::message(Some(1), None, "{}"), Some(0)).await);
    assert!(out.send(super::message(Some(2), None, "{}"), Some(1)).await);
    // The buffer is full and nobody reads: the third is refused.
    assert!(!out.send(super::message(Some(3), None, "{}"), Some(2)).await);
    drop(out);
    let frames = drain(SseBody { rx, room, last_words }).await;
    assert_eq!(frames.len(), 3, "{frames:?}");
    assert!(frames[0].starts_with("id: 1\n") && frames[1].starts_with("id: 2\n"), "{frames:?}");
    // Everything handed over comes first; the last words name the
    // position to resume after, the last one handed over.
    assert!(frames[2].starts_with("event: dropped\n"), "{frames:?}");
    assert!(frames[2].contains("\"after\":2"), "{frames:?}");
}

#[tokio::test]
async fn a_client_that_went_away_ends_the_stream_without_last_words() {
    let (tx, rx) = mpsc::channel(2);
    let last_words = Arc::new(Mutex::new(None));
    let room = Arc::new(Semaphore::new(1 << 20));
    let out = Outbox {
        tx,
        room,
        max_bytes: 1 << 20,
        last_words: Arc::clone(&last_words),
        slow_after: Duration::from_secs(60),
    };
    drop(rx);
    assert!(!out.send(super::message(Some(1), None, "{}"), None).await);
    assert!(last_words.lock().unwrap().is_none());
}

#[tokio::test]
async fn the_buffer_is_bounded_by_bytes_and_room_comes_back_as_the_client_reads() {
    let (tx, mut rx) = mpsc::channel(100);
    let room = Arc::new(Semaphore::new(100));
    let out = Outbox {
        tx,
        room: Arc::clone(&room),
        max_bytes: 100,
        last_words: Arc::new(Mutex::new(None)),
        slow_after: Duration::from_millis(20),
    };
    let sized = |n: usize| axum::body::Bytes::from(vec![b'x'; n]);
    assert!(out.send(sized(60), None).await);
    // 60 of 100 bytes held: 50 more do not fit, though the channel has room.
    assert!(!out.send(sized(50), None).await);
    assert!(out.last_words.lock().unwrap().is_some(), "dropped");
    // Taken by the body, the 60 bytes are free again.
    let (first, held) = rx.recv().await.unwrap();
    room.add_permits(held);
    assert_eq!(first.len(), 60);
    assert_eq!(room.available_permits(), 100);
    // A message over the whole bound passes alone, holding all of it.
    assert!(out.send(sized(500), None).await);
    assert_eq!(room.available_permits(), 0);
}
