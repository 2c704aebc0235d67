//! Adversarial: every event emits four events of just under 1 MiB each,
//! just under 4 MiB of output in all (the default output cap), each payload
//! within the default ingest payload cap of 1 MiB. Valid, only large: the
//! host must not hold a whole read batch of them at once.

use weir_sdk::prelude::*;

/// Emits per event.
pub const EMITS: usize = 4;
/// Payload bytes per emit: 1 MiB less room for the rest of the output.
pub const PAYLOAD: usize = (1 << 20) - 1024;

/// Four large emits.
#[weir_sdk::handler]
pub fn handle(event: &Event, _ctx: &mut Context) -> Result<Vec<Emit>, HandlerError> {
    Ok((0..EMITS)
        .map(|i| event.emit("adversarial.output.flood").bytes(vec![i as u8; PAYLOAD], "application/octet-stream"))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn just_under_four_mib_of_payload() {
        let event = weir_sdk::testing::event("a.b.c").build();
        let emits = handle(&event, &mut Context::new("s", 1)).unwrap();
        let total: usize = emits.iter().map(|e| e.payload().len()).sum();
        assert!(total < 4 << 20 && total > (4 << 20) - 8192, "{total}");
    }
}
