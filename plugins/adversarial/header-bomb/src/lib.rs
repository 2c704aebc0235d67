//! Adversarial: on key `reserved` emits an event with a `weir-plugin-version`
//! header (the host's prefix); on `count` one with 65 small headers (over the
//! default cap of 64); on `bytes` one with a 20 KiB header (over the default
//! 16 KiB); on `ordered` one with the headers `h=1, h=2, a=3` (a repeated
//! name, out of alphabetical order); on any other key emits one event with a
//! million empty headers: two bytes each on the wire, well under the output
//! cap, but about 48 MB once decoded by a host that does not bound it.

use weir_sdk::prelude::*;

/// Headers on the bomb.
pub const HEADERS: usize = 1_000_000;

/// Emit the bomb, or the forged header.
#[weir_sdk::handler]
pub fn handle(event: &Event, _ctx: &mut Context) -> Result<Vec<Emit>, HandlerError> {
    if event.key.as_deref() == Some("reserved") {
        return Ok(vec![event.emit("adversarial.headers.forged").header("Weir-Plugin-Version", "0000000000000000")]);
    }
    if event.key.as_deref() == Some("count") {
        let emit = (0..65).fold(event.emit("adversarial.headers.count"), |e, i| e.header(format!("h{i}"), "v"));
        return Ok(vec![emit]);
    }
    if event.key.as_deref() == Some("topic") {
        // An invalid topic of 1 MiB full of newlines: the host's error quotes it.
        return Ok(vec![event.emit("\n".repeat(1 << 20))]);
    }
    if event.key.as_deref() == Some("ordered") {
        return Ok(vec![event.emit("adversarial.headers.ordered").header("h", "1").header("h", "2").header("a", "3")]);
    }
    if event.key.as_deref() == Some("bytes") {
        return Ok(vec![event.emit("adversarial.headers.bytes").header("big", "x".repeat(20 << 10))]);
    }
    let mut emit = event.emit("adversarial.headers.bomb");
    for _ in 0..HEADERS {
        emit = emit.header(String::new(), String::new());
    }
    Ok(vec![emit])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bomb_has_a_million_headers() {
        let event = weir_sdk::testing::event("a.b.c").key("x").build();
        let emits = handle(&event, &mut Context::new("s", 1)).unwrap();
        assert_eq!(emits[0].as_abi().headers.len(), HEADERS);
    }
}
