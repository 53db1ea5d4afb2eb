//! The object store of read index snapshots: one object per `nodes` bucket,
//! named after it, replaced whole by each write (the store's own rollup),
//! read back as a byte stream. What the bytes mean is the registry's
//! business; this is the JetStream side only.

use std::collections::HashMap;

use async_nats::jetstream::object_store::{self, GetErrorKind, ObjectMetadata, ObjectStore};

/// Why a snapshot could not be written or read.
#[derive(Debug, thiserror::Error)]
#[error("snapshot {name} in {bucket}: {source}")]
pub struct SnapshotError {
    /// The object store bucket.
    pub bucket: String,
    /// The object's name.
    pub name: String,
    /// What failed.
    pub source: async_nats::Error,
}

/// One stored snapshot, opened for reading.
#[derive(Debug)]
pub struct StoredSnapshot {
    /// Its size in bytes, as stored.
    pub size: u64,
    /// Its bytes (checked against the stored digest as they are read: a
    /// read fails at the end if they differ).
    pub reader: object_store::Object,
}

/// The object store bucket snapshots are kept in.
#[derive(Clone)]
pub struct SnapshotStore {
    store: ObjectStore,
    bucket: String,
}

impl std::fmt::Debug for SnapshotStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SnapshotStore")
            .field("bucket", &self.bucket)
            .finish()
    }
}

impl SnapshotStore {
    /// Snapshots kept in `store`, the bucket named `bucket`.
    pub fn new(store: ObjectStore, bucket: String) -> Self {
        Self { store, bucket }
    }

    fn error(&self, name: &str, source: impl Into<async_nats::Error>) -> SnapshotError {
        SnapshotError {
            bucket: self.bucket.clone(),
            name: name.to_owned(),
            source: source.into(),
        }
    }

    /// Stores what `data` reads as object `name`, in chunks of
    /// `chunk_size` bytes, replacing the object written before; returns
    /// the size stored.
    pub async fn put(
        &self,
        name: &str,
        metadata: HashMap<String, String>,
        chunk_size: usize,
        data: &mut (impl tokio::io::AsyncRead + Unpin),
    ) -> Result<u64, SnapshotError> {
        let meta = ObjectMetadata {
            name: name.to_owned(),
            description: Some("read index snapshot".into()),
            chunk_size: Some(chunk_size),
            metadata,
            headers: None,
        };
        let info = self
            .store
            .put(meta, data)
            .await
            .map_err(|e| self.error(name, e))?;
        Ok(info.size as u64)
    }

    /// Opens object `name`; `None` when there is none.
    pub async fn get(&self, name: &str) -> Result<Option<StoredSnapshot>, SnapshotError> {
        match self.store.get(name).await {
            Ok(reader) => Ok(Some(StoredSnapshot {
                size: reader.info.size as u64,
                reader,
            })),
            Err(e) if e.kind() == GetErrorKind::NotFound => Ok(None),
            Err(e) => Err(self.error(name, e)),
        }
    }
}
