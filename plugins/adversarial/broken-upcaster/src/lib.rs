//! Adversarial upcaster 1 → 2, standing in for a broken deploy of
//! plugins/orders-upcaster. On key `loop` it never returns; on `huge` it
//! answers a 16 MiB payload; on `many` it answers 100 000 events; on
//! `trap` it panics; on anything else it fails with a reason. The host must
//! stop each one, dead-letter the event as `upcast_failed` with the event as
//! stored, and go on.

use weir_sdk::prelude::*;

fn spin() -> ! {
    let mut n: u64 = 0;
    loop {
        n = std::hint::black_box(n.wrapping_add(1));
    }
}

/// Fail, one way or another.
#[weir_sdk::upcaster(topic = "orders.order.created", from = 1, to = 2)]
pub fn upcast(event: &Event) -> Result<Vec<Upcast>, String> {
    match event.key.as_deref() {
        Some("loop") => spin(),
        Some("huge") => Ok(vec![Upcast::bytes(event, vec![b'x'; 16 << 20])]),
        Some("many") => Ok((0..100_000).map(|_| Upcast::bytes(event, Vec::new())).collect()),
        Some("trap") => panic!("the broken upcaster panics"),
        _ => Err("this upcaster is broken".into()),
    }
}
