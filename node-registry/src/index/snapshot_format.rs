//! The bytes of a read index snapshot: the catalog's image (every slot's
//! record as stored in `nodes`, with its revision and what the catalog
//! derived from it, then the posting lists), under a header that says which
//! bucket and revision it was taken at, closed by a trailer that repeats
//! the count (a cut snapshot is told from a whole one).
//!
//! ```text
//! header   "FLIDXSNP" | version u32 | bucket created (unix ns) i64 | revision u64 | slots u64 | layout u32
//! slot     revision u64 | length u32 | meta length u32 | value (the record's JSON, as stored) | meta
//! postings "FLIDXPST" | length u64 | the catalog's posting lists
//! trailer  "FLIDXEND" | slots u64
//! ```
//! Integers are little-endian. A free slot has a value and meta of length
//! 0. `layout` is the catalog's image layout ([`IMAGE_LAYOUT`]); the meta
//! and the posting lists are coded by the catalog.
//!
//! Version 1, written by earlier builds and still read, has no layout, no
//! meta, no free slots and no posting lists: a slot is `revision u64 |
//! length u32 | value`, and a load indexes each record's JSON.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use registry_core::catalog::{ImageSlot, IMAGE_LAYOUT};

const MAGIC: &[u8; 8] = b"FLIDXSNP";
const POSTINGS: &[u8; 8] = b"FLIDXPST";
const END: &[u8; 8] = b"FLIDXEND";
/// The format version this build writes.
pub const VERSION: u32 = 2;
/// The version of earlier builds, still read.
pub const VERSION_RECORDS_ONLY: u32 = 1;
const HEADER_V1_LEN: usize = 8 + 4 + 8 + 8 + 8;
const HEADER_LEN: usize = HEADER_V1_LEN + 4;
const RECORD_V1_PREFIX_LEN: usize = 8 + 4;
const SLOT_PREFIX_LEN: usize = 8 + 4 + 4;
const POSTINGS_PREFIX_LEN: usize = 8 + 8;
const TRAILER_LEN: usize = 8 + 8;
/// Largest record value, or slot meta, accepted (a node record is a few
/// KiB; the bound keeps a corrupt length from asking for gigabytes).
pub const MAX_VALUE_LEN: usize = 1 << 20;
/// Largest posting lists accepted (a million nodes' take a few tens of
/// MB).
pub const MAX_POSTINGS_LEN: u64 = 1 << 31;
/// Most slots a snapshot may claim (a bound on a figure read from the
/// bytes, far above any fleet).
pub const MAX_RECORDS: u64 = 100_000_000;

/// What a snapshot says it holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// The format version it was written in.
    pub version: u32,
    /// When the `nodes` bucket it was taken from was created (unix ns): a
    /// bucket deleted and made again is another bucket.
    pub bucket_created_ns: i64,
    /// The KV revision it holds everything up to.
    pub revision: u64,
    /// How many slots follow (free ones included).
    pub records: u64,
    /// The catalog image layout of its metas and posting lists (0 in
    /// version 1, which has none).
    pub layout: u32,
}

impl Header {
    /// The header of a snapshot this build writes.
    pub fn new(bucket_created_ns: i64, revision: u64, records: u64) -> Self {
        Self {
            version: VERSION,
            bucket_created_ns,
            revision,
            records,
            layout: IMAGE_LAYOUT,
        }
    }
}

/// Why bytes are not a snapshot this build can read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FormatError {
    /// The bytes do not start with the snapshot magic.
    #[error("not an index snapshot (bad magic)")]
    BadMagic,
    /// Written by a format this build does not read.
    #[error("snapshot format {0}, this build reads {VERSION_RECORDS_ONLY} and {VERSION}")]
    Version(u32),
    /// Its catalog image is of another layout than this build's.
    #[error("catalog image layout {0}, this build's is {IMAGE_LAYOUT}")]
    Layout(u32),
    /// The header claims more records than any fleet has.
    #[error("snapshot claims {0} records, more than {MAX_RECORDS}")]
    TooManyRecords(u64),
    /// A record's length, or its meta's, is over [`MAX_VALUE_LEN`].
    #[error("record {index} is {len} bytes long, over {MAX_VALUE_LEN}")]
    RecordTooLong {
        /// Its position, from 0.
        index: u64,
        /// The length it claims.
        len: usize,
    },
    /// The posting lists are missing or claim more than [`MAX_POSTINGS_LEN`].
    #[error("bad posting lists: {0}")]
    BadPostings(String),
    /// The trailer is missing, malformed or counts otherwise.
    #[error("bad trailer: {0}")]
    BadTrailer(String),
    /// Bytes follow the trailer.
    #[error("{0} bytes after the trailer")]
    TrailingBytes(usize),
    /// The bytes ended before a whole header.
    #[error("too short for a snapshot header")]
    NoHeader,
    /// The bytes ended before the trailer.
    #[error("snapshot cut short after {records} of {expected} records")]
    Truncated {
        /// Records read.
        records: u64,
        /// Records the header claims.
        expected: u64,
    },
}

/// One piece decoded from the front of a buffer.
#[derive(Debug, PartialEq, Eq)]
pub enum Piece<'b> {
    /// The header (always first).
    Header(Header),
    /// A slot: its record's revision, value and meta, borrowed from the
    /// buffer (in version 1, the meta is empty; a free slot's value and
    /// meta are both empty).
    Record {
        /// The KV revision it was stored at.
        revision: u64,
        /// Its value as stored.
        value: &'b [u8],
        /// What the catalog derived from it, coded.
        meta: &'b [u8],
    },
    /// The catalog's posting lists, after the last slot (version 2).
    Postings(&'b [u8]),
    /// The trailer: the snapshot is whole.
    End,
}

/// Reads a snapshot piece by piece from buffers that grow as bytes arrive.
#[derive(Debug, Default)]
pub struct Decoder {
    header: Option<Header>,
    records: u64,
    postings: bool,
    ended: bool,
}

fn u32_at(buf: &[u8], at: usize) -> u32 {
    let mut b = [0u8; 4];
    b.copy_from_slice(&buf[at..at + 4]);
    u32::from_le_bytes(b)
}

fn u64_at(buf: &[u8], at: usize) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&buf[at..at + 8]);
    u64::from_le_bytes(b)
}

/// The figure after `marker` at the front of `buf` (the trailer's count,
/// the posting lists' length): `None` until its 16 bytes are there,
/// `Some(None)` when another marker is.
fn marked(buf: &[u8], marker: &[u8; 8]) -> Option<Option<u64>> {
    if buf.len() < 16 {
        return None;
    }
    Some((&buf[..8] == marker).then(|| u64_at(buf, 8)))
}

impl Decoder {
    /// A decoder of the bytes after `header` (read by another decoder).
    pub fn after(header: Header) -> Self {
        Self {
            header: Some(header),
            ..Self::default()
        }
    }

    /// The next piece at the front of `buf` and how many bytes it took;
    /// `None` when `buf` does not hold a whole piece yet.
    pub fn next<'b>(&mut self, buf: &'b [u8]) -> Result<Option<(Piece<'b>, usize)>, FormatError> {
        if self.ended {
            return match buf.len() {
                0 => Ok(None),
                n => Err(FormatError::TrailingBytes(n)),
            };
        }
        let Some(header) = self.header else {
            return self.read_header(buf);
        };
        if self.records == header.records {
            if header.version == VERSION && !self.postings {
                return self.postings(buf);
            }
            let Some(counted) = marked(buf, END) else {
                return Ok(None);
            };
            let Some(counted) = counted else {
                return Err(FormatError::BadTrailer(format!(
                    "no end marker after {} records",
                    self.records
                )));
            };
            if counted != self.records {
                return Err(FormatError::BadTrailer(format!(
                    "trailer counts {counted} records, the header {}",
                    self.records
                )));
            }
            self.ended = true;
            return Ok(Some((Piece::End, TRAILER_LEN)));
        }
        let (prefix, meta_len) = match header.version {
            VERSION_RECORDS_ONLY => (RECORD_V1_PREFIX_LEN, 0),
            _ if buf.len() < SLOT_PREFIX_LEN => return Ok(None),
            _ => (SLOT_PREFIX_LEN, u32_at(buf, 12) as usize),
        };
        if buf.len() < prefix {
            return Ok(None);
        }
        let revision = u64_at(buf, 0);
        let len = u32_at(buf, 8) as usize;
        if len.max(meta_len) > MAX_VALUE_LEN {
            return Err(FormatError::RecordTooLong {
                index: self.records,
                len: len.max(meta_len),
            });
        }
        let Some(value) = buf.get(prefix..prefix + len) else {
            return Ok(None);
        };
        let Some(meta) = buf.get(prefix + len..prefix + len + meta_len) else {
            return Ok(None);
        };
        self.records += 1;
        Ok(Some((
            Piece::Record {
                revision,
                value,
                meta,
            },
            prefix + len + meta_len,
        )))
    }

    fn read_header<'b>(
        &mut self,
        buf: &'b [u8],
    ) -> Result<Option<(Piece<'b>, usize)>, FormatError> {
        if buf.len() < 12 {
            return Ok(None);
        }
        if &buf[..8] != MAGIC {
            return Err(FormatError::BadMagic);
        }
        let version = u32_at(buf, 8);
        let len = match version {
            VERSION_RECORDS_ONLY => HEADER_V1_LEN,
            VERSION => HEADER_LEN,
            other => return Err(FormatError::Version(other)),
        };
        if buf.len() < len {
            return Ok(None);
        }
        let header = Header {
            version,
            bucket_created_ns: u64_at(buf, 12) as i64,
            revision: u64_at(buf, 20),
            records: u64_at(buf, 28),
            layout: if version == VERSION {
                u32_at(buf, 36)
            } else {
                0
            },
        };
        if version == VERSION && header.layout != IMAGE_LAYOUT {
            return Err(FormatError::Layout(header.layout));
        }
        if header.records > MAX_RECORDS {
            return Err(FormatError::TooManyRecords(header.records));
        }
        self.header = Some(header);
        Ok(Some((Piece::Header(header), len)))
    }

    fn postings<'b>(&mut self, buf: &'b [u8]) -> Result<Option<(Piece<'b>, usize)>, FormatError> {
        let Some(len) = marked(buf, POSTINGS) else {
            return Ok(None);
        };
        let Some(len) = len else {
            return Err(FormatError::BadPostings(format!(
                "no posting lists after {} records",
                self.records
            )));
        };
        if len > MAX_POSTINGS_LEN {
            return Err(FormatError::BadPostings(format!(
                "{len} bytes claimed, over {MAX_POSTINGS_LEN}"
            )));
        }
        let len = len as usize;
        let Some(postings) = buf.get(POSTINGS_PREFIX_LEN..POSTINGS_PREFIX_LEN + len) else {
            return Ok(None);
        };
        self.postings = true;
        Ok(Some((Piece::Postings(postings), POSTINGS_PREFIX_LEN + len)))
    }

    /// Checks that the bytes ended where a snapshot may end.
    pub fn finish(&self) -> Result<Header, FormatError> {
        match self.header {
            Some(header) if self.ended => Ok(header),
            Some(header) => Err(FormatError::Truncated {
                records: self.records,
                expected: header.records,
            }),
            None => Err(FormatError::NoHeader),
        }
    }

    /// The header, once read.
    pub fn header(&self) -> Option<Header> {
        self.header
    }
}

/// A snapshot being written: reads as its bytes, produced as they are
/// asked for (the values are shared with the index, not copied first).
#[derive(Debug)]
pub struct Encoder {
    version: u32,
    pending: Bytes,
    /// A slot's value and meta, due after its prefix.
    value: Option<Bytes>,
    meta: Option<Bytes>,
    slots: std::vec::IntoIter<Option<ImageSlot>>,
    postings: Option<Bytes>,
    trailer: Option<Bytes>,
}

impl Encoder {
    /// The snapshot of a catalog's image (its `slots` and `postings`)
    /// under `header` (whose count must be the slots').
    pub fn new(header: Header, slots: Vec<Option<ImageSlot>>, postings: Bytes) -> Self {
        let mut head = Vec::with_capacity(HEADER_LEN);
        head.extend_from_slice(MAGIC);
        head.extend_from_slice(&header.version.to_le_bytes());
        head.extend_from_slice(&header.bucket_created_ns.to_le_bytes());
        head.extend_from_slice(&header.revision.to_le_bytes());
        head.extend_from_slice(&(slots.len() as u64).to_le_bytes());
        let postings = if header.version == VERSION {
            head.extend_from_slice(&header.layout.to_le_bytes());
            let mut p = Vec::with_capacity(POSTINGS_PREFIX_LEN + postings.len());
            p.extend_from_slice(POSTINGS);
            p.extend_from_slice(&(postings.len() as u64).to_le_bytes());
            p.extend_from_slice(&postings);
            Some(Bytes::from(p))
        } else {
            None
        };
        let mut tail = Vec::with_capacity(TRAILER_LEN);
        tail.extend_from_slice(END);
        tail.extend_from_slice(&(slots.len() as u64).to_le_bytes());
        Self {
            version: header.version,
            pending: Bytes::from(head),
            value: None,
            meta: None,
            slots: slots.into_iter(),
            postings,
            trailer: Some(Bytes::from(tail)),
        }
    }

    fn next_piece(&mut self) -> Option<Bytes> {
        if let Some(value) = self.value.take() {
            return Some(value);
        }
        if let Some(meta) = self.meta.take() {
            return Some(meta);
        }
        match self.slots.next() {
            Some(slot) => {
                let (revision, value, meta) = slot
                    .map(|s| (s.revision, s.value, s.meta))
                    .unwrap_or_default();
                let mut prefix = Vec::with_capacity(SLOT_PREFIX_LEN);
                prefix.extend_from_slice(&revision.to_le_bytes());
                prefix.extend_from_slice(&(value.len() as u32).to_le_bytes());
                if self.version == VERSION {
                    prefix.extend_from_slice(&(meta.len() as u32).to_le_bytes());
                    self.meta = Some(meta);
                }
                self.value = Some(value);
                Some(Bytes::from(prefix))
            }
            None => self.postings.take().or_else(|| self.trailer.take()),
        }
    }
}

impl tokio::io::AsyncRead for Encoder {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        while buf.remaining() > 0 {
            if self.pending.is_empty() {
                match self.next_piece() {
                    Some(piece) => self.pending = piece,
                    None => break,
                }
                continue;
            }
            let n = buf.remaining().min(self.pending.len());
            buf.put_slice(&self.pending[..n]);
            self.pending.advance(n);
        }
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
#[path = "tests/snapshot_format.rs"]
mod tests;
