//! Subjects and node ids as they arrive on the wire. Must never panic, and
//! a parsed id must build back the subject it came from.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(id) = subjects::parse_node_events(text) {
        assert_eq!(subjects::node_events(&id), text);
    }
    if let Ok(id) = subjects::parse_node_tasks(text) {
        assert_eq!(subjects::node_tasks(&id), text);
    }
    let _ = subjects::NodeId::parse(text);
});
