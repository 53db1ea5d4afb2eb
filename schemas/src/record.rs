//! A node record as its KV value in `nodes`: JSON, so that any NATS client
//! and `nats kv get` can read it.

use bytes::Bytes;

use crate::codec::{encode, Encoding};
use crate::NodeRecord;

/// Encodes a record as its KV value, in an allocation of exactly its size:
/// the registry keeps these bytes (shared by its fleet and read index).
pub fn encode_record(record: &NodeRecord) -> Bytes {
    // NOTE: a copy, not `into_boxed_slice`: the encoder's buffer grows by
    // doubling, and an allocator may keep a block shrunk by up to half where
    // it is (mimalloc does), so a 1.1 KB record kept a 2 KiB block: a
    // seventh of the registry's memory at 100 000 nodes (tests/benches/memory.rs).
    Bytes::copy_from_slice(&encode(record, Encoding::Json))
}

/// Decodes a KV value into a record.
pub fn decode_record(value: &[u8]) -> Result<NodeRecord, serde_json::Error> {
    crate::json::from_bytes(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_round_trips_through_its_kv_value() {
        let record = NodeRecord {
            node_id: "node-a".into(),
            status: "online".into(),
            ..NodeRecord::default()
        };
        let value = encode_record(&record);
        assert_eq!(value.len(), value.as_ref().len());
        assert_eq!(decode_record(&value).ok(), Some(record));
        assert!(decode_record(b"{").is_err());
    }
}
