//! A discovery request as the service reads it (strict JSON, then
//! validation into a query, whose selector is parsed), and the selector
//! syntax on its own. Must never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use registry_core::discovery::Query;
use schemas::status::{SortOrder, StatusFilter};
use schemas::DiscoverRequest;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = schemas::selector::Selector::parse(text);
    }
    if let Ok(request) = serde_json::from_slice::<DiscoverRequest>(data) {
        let _ = Query::from_request(request, StatusFilter::Online, SortOrder::LeastLoaded);
    }
});
