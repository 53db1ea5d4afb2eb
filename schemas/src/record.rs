//! A node record as its KV value in `nodes`: JSON, so that any NATS client
//! and `nats kv get` can read it.

use bytes::Bytes;

use crate::codec::{encode, Encoding};
use crate::NodeRecord;

/// Encodes a record as its KV value, in an allocation of exactly its size:
/// the registry keeps these bytes (shared by its fleet and read index).
pub fn encode_record(record: &NodeRecord) -> Bytes {
    encode(record, Encoding::Json).into_boxed_slice().into()
}

/// Decodes a KV value into a record.
pub fn decode_record(value: &[u8]) -> Result<NodeRecord, serde_json::Error> {
    serde_json::from_slice(value)
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
