//! The W3C trace context (`traceparent`, `tracestate`) on NATS headers: put
//! the current span's on a message sent, and continue a received one's.
//!
//! The propagator is the one the binary installed (`fleet-telemetry`
//! installs W3C trace context); with none, or with no OpenTelemetry layer
//! under `tracing`, both are no-ops.

use async_nats::HeaderMap;
use opentelemetry::propagation::{Extractor, Injector};
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

/// The W3C header that carries the trace and the parent span.
pub const TRACEPARENT: &str = "traceparent";

/// Puts the current span's trace context on `headers`.
pub fn inject(headers: &mut HeaderMap) {
    let context = tracing::Span::current().context();
    opentelemetry::global::get_text_map_propagator(|propagator| {
        propagator.inject_context(&context, &mut HeaderInjector(headers));
    });
}

/// Makes `span` a child of the trace `headers` carry, when they carry one.
/// Returns the trace id, for logs (also without an OpenTelemetry layer).
pub fn continue_trace(span: &tracing::Span, headers: Option<&HeaderMap>) -> Option<String> {
    let headers = headers?;
    let trace_id = trace_id(headers)?;
    let context = opentelemetry::global::get_text_map_propagator(|propagator| {
        propagator.extract(&HeaderExtractor(headers))
    });
    // An error here means the span is disabled or has no OpenTelemetry
    // layer: nothing to continue, nothing lost.
    let _ = span.set_parent(context);
    Some(trace_id)
}

/// The trace id of a well-formed `traceparent` header
/// (`00-<32 hex>-<16 hex>-<2 hex>`); `None` for anything else.
pub fn trace_id(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(TRACEPARENT)?.as_str();
    let mut parts = value.split('-');
    let (version, trace, parent, flags) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let hex = |s: &str, len: usize| s.len() == len && s.bytes().all(|b| b.is_ascii_hexdigit());
    let well_formed = hex(version, 2)
        && version != "ff"
        && hex(trace, 32)
        && trace.bytes().any(|b| b != b'0')
        && hex(parent, 16)
        && parent.bytes().any(|b| b != b'0')
        && hex(flags, 2)
        && (version != "00" || parts.next().is_none());
    well_formed.then(|| trace.to_ascii_lowercase())
}

struct HeaderInjector<'a>(&'a mut HeaderMap);

impl Injector for HeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        self.0.insert(key, value.as_str());
    }
}

struct HeaderExtractor<'a>(&'a HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(|v| v.as_str())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.iter().map(|(name, _)| name.as_ref()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(TRACEPARENT, value);
        headers
    }

    #[test]
    fn only_well_formed_traceparents_name_a_trace() {
        let good = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        assert_eq!(
            trace_id(&with(good)).as_deref(),
            Some("4bf92f3577b34da6a3ce929d0e0e4736")
        );
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473z-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
        ] {
            assert_eq!(trace_id(&with(bad)), None, "{bad}");
        }
        assert_eq!(trace_id(&HeaderMap::new()), None);
    }
}
