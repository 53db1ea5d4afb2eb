//! The catalog as an index snapshot carries it: each slot's stored value
//! with what the catalog derived from it (its id, status, shape digest and
//! figures), and the posting lists as they are. A cold start rebuilds the
//! catalog from an image without reading a million records' JSON or
//! indexing them again: at a million nodes, reading and indexing the JSON
//! was five of a cold start's seven seconds.
//!
//! An image is taken at once, under the index's read lock, so its slots and
//! postings agree; it is read back slot by slot ([`ImageLoader`]) and
//! checked: ids unique, every posting list within the occupied slots.

use bytes::Bytes;
use roaring::RoaringBitmap;
use schemas::status::NodeStatus;

use super::{Catalog, Facts, Postings, Slot};

/// The layout of what the catalog derives from a record: bumped whenever
/// [`Facts`], the shape digest, the posting lists or the status codes
/// change, so an image of another layout is not loaded (the load then
/// reads the bucket's records instead).
pub const LAYOUT: u32 = 1;

/// Longest string an image may hold (a node id, a label key or value, a
/// tag, a model): far above what validation lets a record carry, a bound
/// on a length read from the bytes.
pub const MAX_TEXT: usize = 64 << 10;

/// Bytes of a slot's figures after its id (status, shape, flags, eight
/// figures, cores and GPUs).
const FIGURES_LEN: usize = 1 + 8 + 1 + 8 * 8 + 4 + 4;

/// A status as an image codes it: its position in [`NodeStatus::ALL`];
/// one this build does not know is [`UNKNOWN_STATUS`].
const UNKNOWN_STATUS: u8 = u8::MAX;

/// One occupied slot of an image.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageSlot {
    /// The record as stored in KV (shared with the catalog, not copied).
    pub value: Bytes,
    /// Its KV revision.
    pub revision: u64,
    /// What the catalog derived from it, coded.
    pub meta: Bytes,
}

/// A whole catalog, taken at one revision.
#[derive(Debug, Clone, PartialEq)]
pub struct Image {
    /// The highest KV revision the catalog held.
    pub revision: u64,
    /// Every slot in order; `None` for a free one.
    pub slots: Vec<Option<ImageSlot>>,
    /// The posting lists and model sizes, coded.
    pub postings: Bytes,
}

/// Why bytes are not an image this build can load.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ImageError {
    /// A slot's figures or the posting lists end early.
    #[error("{0} cut short")]
    Short(&'static str),
    /// Bytes follow a slot's figures or the posting lists.
    #[error("{0} bytes after the {1}")]
    Trailing(usize, &'static str),
    /// A string is longer than [`MAX_TEXT`] or not UTF-8.
    #[error("a string in the {0} is too long or not UTF-8")]
    BadText(&'static str),
    /// Two slots hold the same node.
    #[error("node {0:?} is in two slots")]
    DuplicateId(String),
    /// A kind of posting list this build does not know.
    #[error("unknown posting list kind {0}")]
    UnknownKind(u8),
    /// A posting list does not read, or names a slot not occupied.
    #[error("posting list {0:?}: {1}")]
    BadPosting(String, String),
    /// More slots than a catalog numbers.
    #[error("more slots than a catalog can number")]
    TooManySlots,
}

/// The posting lists an image carries, by kind.
const KINDS: [u8; 8] = [1, 2, 3, 4, 5, 6, 7, 8];
const TAGS: u8 = 1;
const LABEL_KEYS: u8 = 2;
const LABEL_VALUES: u8 = 3;
const MODELS: u8 = 4;
const ROLES: u8 = 5;
const NATS_SERVERS: u8 = 6;
const NATS_CLUSTERS: u8 = 7;
const NATS_DOMAINS: u8 = 8;
/// After the posting lists: the model sizes.
const MODEL_SIZES: u8 = 0x80;

fn put_text(out: &mut Vec<u8>, text: &str) {
    out.extend_from_slice(&(text.len() as u32).to_le_bytes());
    out.extend_from_slice(text.as_bytes());
}

fn put_bitmap(out: &mut Vec<u8>, bitmap: &RoaringBitmap) {
    out.extend_from_slice(&(bitmap.serialized_size() as u64).to_le_bytes());
    // Writing into a Vec does not fail.
    let _ = bitmap.serialize_into(&mut *out);
}

/// Codes what the catalog derived from one slot's record.
fn slot_meta(out: &mut Vec<u8>, slot: &Slot) {
    put_text(out, &slot.node_id);
    let status = slot
        .status
        .and_then(|s| NodeStatus::ALL.iter().position(|t| *t == s.as_str()))
        .and_then(|p| u8::try_from(p).ok())
        .unwrap_or(UNKNOWN_STATUS);
    out.push(status);
    out.extend_from_slice(&slot.shape.to_le_bytes());
    let f = &slot.facts;
    let flags = u8::from(f.has_capabilities)
        | u8::from(f.best_vram_gb.is_some()) << 1
        | u8::from(f.gpus_out) << 2;
    out.push(flags);
    for figure in [
        f.cpu_pct,
        f.gpu_pct,
        f.free_vram_gb,
        f.best_vram_gb.unwrap_or_default(),
        f.total_vram_gb,
        f.ram_gb,
        f.disk_gb,
        f.nats_rtt_ms,
    ] {
        out.extend_from_slice(&figure.to_le_bytes());
    }
    out.extend_from_slice(&f.cpu_cores.to_le_bytes());
    out.extend_from_slice(&f.gpus.to_le_bytes());
}

/// Reads coded bytes front to back.
struct Reader<'b> {
    bytes: &'b [u8],
    what: &'static str,
}

impl<'b> Reader<'b> {
    fn take(&mut self, n: usize) -> Result<&'b [u8], ImageError> {
        if self.bytes.len() < n {
            return Err(ImageError::Short(self.what));
        }
        let (head, rest) = self.bytes.split_at(n);
        self.bytes = rest;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], ImageError> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }

    fn u8(&mut self) -> Result<u8, ImageError> {
        Ok(self.array::<1>()?[0])
    }

    fn u32(&mut self) -> Result<u32, ImageError> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    fn u64(&mut self) -> Result<u64, ImageError> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    fn f64(&mut self) -> Result<f64, ImageError> {
        Ok(f64::from_le_bytes(self.array()?))
    }

    fn text(&mut self) -> Result<&'b str, ImageError> {
        let len = self.u32()? as usize;
        if len > MAX_TEXT {
            return Err(ImageError::BadText(self.what));
        }
        std::str::from_utf8(self.take(len)?).map_err(|_| ImageError::BadText(self.what))
    }

    fn bitmap(&mut self, name: &str) -> Result<RoaringBitmap, ImageError> {
        let len = usize::try_from(self.u64()?).unwrap_or(usize::MAX);
        let bytes = self.take(len)?;
        let bitmap = RoaringBitmap::deserialize_from(bytes)
            .map_err(|e| ImageError::BadPosting(name.to_owned(), e.to_string()))?;
        if bitmap.serialized_size() != len {
            return Err(ImageError::BadPosting(
                name.to_owned(),
                "bytes after the bitmap".to_owned(),
            ));
        }
        Ok(bitmap)
    }

    fn end(&self) -> Result<(), ImageError> {
        match self.bytes.len() {
            0 => Ok(()),
            n => Err(ImageError::Trailing(n, self.what)),
        }
    }
}

impl Catalog {
    /// The catalog as a snapshot carries it, taken at once (the values are
    /// shared, not copied).
    pub fn image(&self) -> Image {
        let mut meta = Vec::with_capacity(self.len() * (FIGURES_LEN + 24));
        let mut ends = Vec::with_capacity(self.slots.len());
        for slot in &self.slots {
            if let Some(slot) = slot {
                slot_meta(&mut meta, slot);
            }
            ends.push(meta.len());
        }
        let meta = Bytes::from(meta);
        let mut start = 0;
        let slots = self
            .slots
            .iter()
            .zip(ends)
            .map(|(slot, end)| {
                let slot = slot.as_ref().map(|s| ImageSlot {
                    value: s.encoded.clone(),
                    revision: s.revision,
                    meta: meta.slice(start..end),
                });
                start = end;
                slot
            })
            .collect();
        Image {
            revision: self.revision,
            slots,
            postings: Bytes::from(self.postings_image()),
        }
    }

    fn postings_image(&self) -> Vec<u8> {
        let mut out = Vec::new();
        let simple = [
            (TAGS, &self.tags),
            (LABEL_KEYS, &self.label_keys),
            (MODELS, &self.models),
            (ROLES, &self.roles),
            (NATS_SERVERS, &self.nats_servers),
            (NATS_CLUSTERS, &self.nats_clusters),
            (NATS_DOMAINS, &self.nats_domains),
        ];
        for (kind, postings) in simple {
            for (key, bitmap) in postings {
                out.push(kind);
                put_text(&mut out, key);
                put_bitmap(&mut out, bitmap);
            }
        }
        for (key, values) in &self.label_values {
            for (value, bitmap) in values {
                out.push(LABEL_VALUES);
                put_text(&mut out, key);
                put_text(&mut out, value);
                put_bitmap(&mut out, bitmap);
            }
        }
        for (model, size) in &self.model_sizes {
            out.push(MODEL_SIZES);
            put_text(&mut out, model);
            out.extend_from_slice(&size.to_le_bytes());
        }
        out
    }
}

/// Rebuilds a catalog from an image: slot by slot as they are read, then
/// the posting lists.
#[derive(Debug)]
pub struct ImageLoader {
    catalog: Catalog,
    status: Vec<RoaringBitmap>,
}

impl ImageLoader {
    /// A loader sized for `slots` slots.
    pub fn with_capacity(slots: usize) -> Self {
        Self {
            catalog: Catalog::with_capacity(slots),
            status: vec![RoaringBitmap::new(); NodeStatus::ALL.len()],
        }
    }

    /// Adds the next slot: its stored value, revision and coded meta, or
    /// `None` for a free slot.
    pub fn push(&mut self, slot: Option<(Bytes, u64, &[u8])>) -> Result<(), ImageError> {
        let catalog = &mut self.catalog;
        let number = u32::try_from(catalog.slots.len()).map_err(|_| ImageError::TooManySlots)?;
        if number == u32::MAX {
            return Err(ImageError::TooManySlots);
        }
        let Some((encoded, revision, meta)) = slot else {
            catalog.slots.push(None);
            catalog.hot.push([0.0; 3]);
            catalog.free.push(number);
            return Ok(());
        };
        let mut r = Reader {
            bytes: meta,
            what: "slot figures",
        };
        let node_id = r.text()?;
        let status = match r.u8()? {
            UNKNOWN_STATUS => None,
            code => NodeStatus::ALL
                .get(usize::from(code))
                .and_then(|s| s.parse::<NodeStatus>().ok()),
        };
        let shape = r.u64()?;
        let flags = r.u8()?;
        let mut figures = [0.0f64; 8];
        for figure in &mut figures {
            *figure = r.f64()?;
        }
        let [cpu_pct, gpu_pct, free_vram_gb, best_vram_gb, total_vram_gb, ram_gb, disk_gb, nats_rtt_ms] =
            figures;
        let facts = Facts {
            has_capabilities: flags & 1 != 0,
            cpu_pct,
            gpu_pct,
            free_vram_gb,
            best_vram_gb: (flags & 2 != 0).then_some(best_vram_gb),
            total_vram_gb,
            ram_gb,
            disk_gb,
            cpu_cores: r.u32()?,
            gpus: r.u32()?,
            gpus_out: flags & 4 != 0,
            nats_rtt_ms,
        };
        r.end()?;
        catalog.slots.push(Some(Slot {
            node_id: node_id.into(),
            encoded,
            facts,
            revision,
            status,
            shape,
        }));
        let slots = &catalog.slots;
        if !catalog
            .by_id
            .insert_new(node_id, number, |s| super::id_in(slots, s))
        {
            return Err(ImageError::DuplicateId(node_id.to_owned()));
        }
        catalog
            .hot
            .push([facts.cpu_pct, facts.gpu_pct, facts.free_vram_gb]);
        // Slots come in increasing order: appended, not inserted.
        catalog.live.push(number);
        if let Some(bitmap) = status
            .and_then(|s| NodeStatus::ALL.iter().position(|t| *t == s.as_str()))
            .and_then(|p| self.status.get_mut(p))
        {
            bitmap.push(number);
        }
        Ok(())
    }

    /// The catalog at `revision`, with the posting lists of `postings`;
    /// every list must name occupied slots only.
    pub fn finish(self, revision: u64, postings: &[u8]) -> Result<Catalog, ImageError> {
        let Self {
            mut catalog,
            status,
        } = self;
        for (bitmap, name) in status.into_iter().zip(NodeStatus::ALL) {
            if let (false, Ok(status)) = (bitmap.is_empty(), name.parse::<NodeStatus>()) {
                catalog.status.insert(status, bitmap);
            }
        }
        let mut r = Reader {
            bytes: postings,
            what: "posting lists",
        };
        while !r.bytes.is_empty() {
            let kind = r.u8()?;
            let key = r.text()?;
            if kind == MODEL_SIZES {
                let size = r.u64()?;
                catalog.model_sizes.insert(key.to_owned(), size);
                continue;
            }
            if !KINDS.contains(&kind) {
                return Err(ImageError::UnknownKind(kind));
            }
            let value = if kind == LABEL_VALUES {
                Some(r.text()?)
            } else {
                None
            };
            let bitmap = r.bitmap(key)?;
            if bitmap.is_empty() || !bitmap.is_subset(&catalog.live) {
                return Err(ImageError::BadPosting(
                    key.to_owned(),
                    "empty, or names a slot not occupied".to_owned(),
                ));
            }
            let postings: &mut Postings = match kind {
                TAGS => &mut catalog.tags,
                LABEL_KEYS => &mut catalog.label_keys,
                MODELS => &mut catalog.models,
                ROLES => &mut catalog.roles,
                NATS_SERVERS => &mut catalog.nats_servers,
                NATS_CLUSTERS => &mut catalog.nats_clusters,
                NATS_DOMAINS => &mut catalog.nats_domains,
                _ => catalog.label_values.entry(key.to_owned()).or_default(),
            };
            postings.insert(value.unwrap_or(key).to_owned(), bitmap);
        }
        r.end()?;
        catalog.revision = revision;
        Ok(catalog)
    }
}

#[cfg(test)]
#[path = "tests/image.rs"]
mod tests;
