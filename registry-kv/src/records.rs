//! Node records in the `nodes` bucket, written only by compare-and-swap.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, Mutex};

use async_nats::jetstream::kv;
use schemas::NodeRecord;
use tracing::instrument;

/// A value with the KV revision it was read or written at.
#[derive(Debug, Clone, PartialEq)]
pub struct Versioned<T> {
    /// The value as read or written.
    pub value: T,
    /// The key's revision holding it.
    pub revision: u64,
}

/// A record encoded as its KV value, with its key: what the store writes,
/// and what the registry keeps afterwards (the same bytes, shared).
#[derive(Debug, Clone, PartialEq)]
pub struct EncodedRecord {
    /// The key (the node id).
    pub key: String,
    /// The value: the record as JSON.
    pub value: bytes::Bytes,
}

impl EncodedRecord {
    /// Encodes `record`.
    pub fn of(record: &NodeRecord) -> Self {
        Self {
            key: record.node_id.clone(),
            value: schemas::record::encode_record(record),
        }
    }
}

/// Why a record operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The key's revision is not the one expected: someone else wrote it.
    /// Re-read and re-decide; never retry blindly.
    #[error("record {key}: revision conflict")]
    Conflict {
        /// The key the operation was on.
        key: String,
    },
    /// The stored value is not a node record.
    #[error("record {key}: stored value is not a node record: {reason}")]
    Corrupt {
        /// The key the operation was on.
        key: String,
        /// Why it does not decode.
        reason: String,
    },
    /// The store failed (timeouts, lost connection); retryable.
    #[error("record {key}: {source}")]
    Backend {
        /// The key the operation was on.
        key: String,
        /// The underlying error.
        source: async_nats::Error,
    },
}

/// What the registry needs from a store of node records.
///
/// Every write names the revision it expects: `create` expects none, `update`
/// and `delete` the one last read or written. A mismatch is
/// [`StoreError::Conflict`], so a deposed or confused writer cannot clobber.
pub trait RecordStore: Send + Sync {
    /// The current record of `key`, if any.
    fn get(
        &self,
        key: &str,
    ) -> impl Future<Output = Result<Option<Versioned<NodeRecord>>, StoreError>> + Send;
    /// Writes a record whose key must not exist (or was deleted).
    fn create(
        &self,
        record: &EncodedRecord,
    ) -> impl Future<Output = Result<u64, StoreError>> + Send;
    /// Replaces a record whose key is at `revision`.
    fn update(
        &self,
        record: &EncodedRecord,
        revision: u64,
    ) -> impl Future<Output = Result<u64, StoreError>> + Send;
    /// Deletes a record whose key is at `revision`.
    fn delete(
        &self,
        key: &str,
        revision: u64,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
}

/// Decodes a KV value into a record.
pub fn decode_record(key: &str, value: &[u8]) -> Result<NodeRecord, StoreError> {
    schemas::record::decode_record(value).map_err(|e| StoreError::Corrupt {
        key: key.to_owned(),
        reason: e.to_string(),
    })
}

/// Records in a JetStream KV bucket.
#[derive(Debug, Clone)]
pub struct JetStreamRecords {
    store: kv::Store,
}

impl JetStreamRecords {
    /// Records in `store`.
    pub fn new(store: kv::Store) -> Self {
        Self { store }
    }

    /// The bucket the operation was on.
    pub fn store(&self) -> &kv::Store {
        &self.store
    }
}

fn backend(key: &str, source: impl Into<async_nats::Error>) -> StoreError {
    StoreError::Backend {
        key: key.to_owned(),
        source: source.into(),
    }
}

impl RecordStore for JetStreamRecords {
    #[instrument(skip(self))]
    async fn get(&self, key: &str) -> Result<Option<Versioned<NodeRecord>>, StoreError> {
        let entry = self.store.entry(key).await.map_err(|e| backend(key, e))?;
        match entry {
            Some(entry) if entry.operation == kv::Operation::Put => Ok(Some(Versioned {
                value: decode_record(key, &entry.value)?,
                revision: entry.revision,
            })),
            _ => Ok(None),
        }
    }

    #[instrument(skip_all, fields(node_id = %record.key))]
    async fn create(&self, record: &EncodedRecord) -> Result<u64, StoreError> {
        let key = record.key.as_str();
        self.store
            .create(key, record.value.clone())
            .await
            .map_err(|e| match e.kind() {
                kv::CreateErrorKind::AlreadyExists => StoreError::Conflict {
                    key: key.to_owned(),
                },
                _ => backend(key, e),
            })
    }

    #[instrument(skip_all, fields(node_id = %record.key, revision))]
    async fn update(&self, record: &EncodedRecord, revision: u64) -> Result<u64, StoreError> {
        let key = record.key.as_str();
        self.store
            .update(key, record.value.clone(), revision)
            .await
            .map_err(|e| match e.kind() {
                kv::UpdateErrorKind::WrongLastRevision => StoreError::Conflict {
                    key: key.to_owned(),
                },
                _ => backend(key, e),
            })
    }

    #[instrument(skip(self))]
    async fn delete(&self, key: &str, revision: u64) -> Result<(), StoreError> {
        self.store
            .delete_expect_revision(key, Some(revision))
            .await
            .map_err(|e| match e.kind() {
                kv::DeleteErrorKind::WrongLastRevision => StoreError::Conflict {
                    key: key.to_owned(),
                },
                _ => backend(key, e),
            })
    }
}

/// Records in memory, with the same revision rules, for unit tests.
#[derive(Debug, Clone, Default)]
pub struct MemoryRecords {
    inner: Arc<Mutex<MemoryInner>>,
}

#[derive(Debug, Default)]
struct MemoryInner {
    revision: u64,
    records: BTreeMap<String, Versioned<NodeRecord>>,
    /// Every write fails as a backend error (a store that is down).
    failing: bool,
}

impl MemoryInner {
    /// Stores a record at the next revision, which it returns.
    fn store(&mut self, key: &str, value: NodeRecord) -> u64 {
        self.revision += 1;
        let revision = self.revision;
        self.records
            .insert(key.to_owned(), Versioned { value, revision });
        revision
    }
}

impl MemoryRecords {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// Every record, by key.
    pub fn snapshot(&self) -> BTreeMap<String, Versioned<NodeRecord>> {
        self.lock().records.clone()
    }

    /// From now on, every write fails as the backend would when it is down
    /// (`true`), or succeeds again (`false`).
    pub fn set_failing(&self, failing: bool) {
        self.lock().failing = failing;
    }

    /// Writes a record as someone else would (no revision check): the
    /// registry's next CAS write of that key then conflicts.
    pub fn write_behind_our_back(&self, record: NodeRecord) -> u64 {
        let key = record.node_id.clone();
        self.lock().store(&key, record)
    }

    /// A backend failure, if the store is failing.
    fn down(inner: &MemoryInner, key: &str) -> Result<(), StoreError> {
        if inner.failing {
            return Err(StoreError::Backend {
                key: key.to_owned(),
                source: "the memory store is failing".into(),
            });
        }
        Ok(())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, MemoryInner> {
        // A panic while holding this lock leaves plain data; keep going.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl RecordStore for MemoryRecords {
    async fn get(&self, key: &str) -> Result<Option<Versioned<NodeRecord>>, StoreError> {
        Ok(self.lock().records.get(key).cloned())
    }

    async fn create(&self, record: &EncodedRecord) -> Result<u64, StoreError> {
        let value = decode_record(&record.key, &record.value)?;
        let mut inner = self.lock();
        Self::down(&inner, &record.key)?;
        if inner.records.contains_key(&record.key) {
            return Err(StoreError::Conflict {
                key: record.key.clone(),
            });
        }
        Ok(inner.store(&record.key, value))
    }

    async fn update(&self, record: &EncodedRecord, revision: u64) -> Result<u64, StoreError> {
        let value = decode_record(&record.key, &record.value)?;
        let mut inner = self.lock();
        Self::down(&inner, &record.key)?;
        match inner.records.get(&record.key) {
            Some(current) if current.revision == revision => {}
            _ => {
                return Err(StoreError::Conflict {
                    key: record.key.clone(),
                })
            }
        }
        Ok(inner.store(&record.key, value))
    }

    async fn delete(&self, key: &str, revision: u64) -> Result<(), StoreError> {
        let mut inner = self.lock();
        Self::down(&inner, key)?;
        match inner.records.get(key) {
            Some(current) if current.revision == revision => {
                inner.records.remove(key);
                inner.revision += 1;
                Ok(())
            }
            _ => Err(StoreError::Conflict {
                key: key.to_owned(),
            }),
        }
    }
}
