//! A node event as JSON, as the registry's worker reads it: size check,
//! strict decoding, validation against the subject's id. Must never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use schemas::codec::{decode, Encoding, MAX_EVENT_BYTES};
use schemas::NodeEvent;

fuzz_target!(|data: &[u8]| {
    let Ok(subject_id) = subjects::NodeId::parse("node-fuzz-0001") else {
        return;
    };
    if let Ok(event) = decode::<NodeEvent>(data, Encoding::Json, MAX_EVENT_BYTES) {
        let _ = schemas::validate::validate_event(event, &subject_id);
    }
});
