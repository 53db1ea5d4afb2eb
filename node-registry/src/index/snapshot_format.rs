//! The bytes of a read index snapshot: every record as stored in `nodes`,
//! with its revision, under a header that says which bucket and revision
//! it was taken at, closed by a trailer that repeats the count (a cut
//! snapshot is told from a whole one).
//!
//! ```text
//! header   "FLIDXSNP" | version u32 | bucket created (unix ns) i64 | revision u64 | records u64
//! record   revision u64 | length u32 | value (the record's JSON, as stored)
//! trailer  "FLIDXEND" | records u64
//! ```
//! Integers are little-endian. The key of a record is its node id, read
//! from the value when it is indexed.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};

const MAGIC: &[u8; 8] = b"FLIDXSNP";
const END: &[u8; 8] = b"FLIDXEND";
/// The format version this build writes and reads.
pub const VERSION: u32 = 1;
const HEADER_LEN: usize = 8 + 4 + 8 + 8 + 8;
const RECORD_PREFIX_LEN: usize = 8 + 4;
const TRAILER_LEN: usize = 8 + 8;
/// Largest record value accepted (a node record is a few KiB; the bound
/// keeps a corrupt length from asking for gigabytes).
pub const MAX_VALUE_LEN: usize = 1 << 20;
/// Most records a snapshot may claim (a bound on a figure read from the
/// bytes, far above any fleet).
pub const MAX_RECORDS: u64 = 100_000_000;

/// What a snapshot says it holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// When the `nodes` bucket it was taken from was created (unix ns): a
    /// bucket deleted and made again is another bucket.
    pub bucket_created_ns: i64,
    /// The KV revision it holds everything up to.
    pub revision: u64,
    /// How many records follow.
    pub records: u64,
}

/// Why bytes are not a snapshot this build can read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FormatError {
    /// The bytes do not start with the snapshot magic.
    #[error("not an index snapshot (bad magic)")]
    BadMagic,
    /// Written by a format this build does not read.
    #[error("snapshot format {0}, this build reads {VERSION}")]
    Version(u32),
    /// The header claims more records than any fleet has.
    #[error("snapshot claims {0} records, more than {MAX_RECORDS}")]
    TooManyRecords(u64),
    /// A record's length is over [`MAX_VALUE_LEN`].
    #[error("record {index} is {len} bytes long, over {MAX_VALUE_LEN}")]
    RecordTooLong {
        /// Its position, from 0.
        index: u64,
        /// The length it claims.
        len: usize,
    },
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
    /// A record: its revision and value, borrowed from the buffer.
    Record {
        /// The KV revision it was stored at.
        revision: u64,
        /// Its value as stored.
        value: &'b [u8],
    },
    /// The trailer: the snapshot is whole.
    End,
}

/// Reads a snapshot piece by piece from buffers that grow as bytes arrive.
#[derive(Debug, Default)]
pub struct Decoder {
    header: Option<Header>,
    records: u64,
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

impl Decoder {
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
            if buf.len() < HEADER_LEN {
                return Ok(None);
            }
            if &buf[..8] != MAGIC {
                return Err(FormatError::BadMagic);
            }
            let version = u32_at(buf, 8);
            if version != VERSION {
                return Err(FormatError::Version(version));
            }
            let header = Header {
                bucket_created_ns: u64_at(buf, 12) as i64,
                revision: u64_at(buf, 20),
                records: u64_at(buf, 28),
            };
            if header.records > MAX_RECORDS {
                return Err(FormatError::TooManyRecords(header.records));
            }
            self.header = Some(header);
            return Ok(Some((Piece::Header(header), HEADER_LEN)));
        };
        if self.records == header.records {
            if buf.len() < TRAILER_LEN {
                return Ok(None);
            }
            if &buf[..8] != END {
                return Err(FormatError::BadTrailer(format!(
                    "no end marker after {} records",
                    self.records
                )));
            }
            let counted = u64_at(buf, 8);
            if counted != self.records {
                return Err(FormatError::BadTrailer(format!(
                    "trailer counts {counted} records, the header {}",
                    self.records
                )));
            }
            self.ended = true;
            return Ok(Some((Piece::End, TRAILER_LEN)));
        }
        if buf.len() < RECORD_PREFIX_LEN {
            return Ok(None);
        }
        let revision = u64_at(buf, 0);
        let len = u32_at(buf, 8) as usize;
        if len > MAX_VALUE_LEN {
            return Err(FormatError::RecordTooLong {
                index: self.records,
                len,
            });
        }
        let Some(value) = buf.get(RECORD_PREFIX_LEN..RECORD_PREFIX_LEN + len) else {
            return Ok(None);
        };
        self.records += 1;
        Ok(Some((
            Piece::Record { revision, value },
            RECORD_PREFIX_LEN + len,
        )))
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
    pending: Bytes,
    /// A record's value, due after its prefix.
    value: Option<Bytes>,
    records: std::vec::IntoIter<(Bytes, u64)>,
    trailer: Option<Bytes>,
}

impl Encoder {
    /// The snapshot of `records` (values as stored, with their revisions)
    /// under `header` (whose count must be theirs).
    pub fn new(header: Header, records: Vec<(Bytes, u64)>) -> Self {
        let mut head = Vec::with_capacity(HEADER_LEN);
        head.extend_from_slice(MAGIC);
        head.extend_from_slice(&VERSION.to_le_bytes());
        head.extend_from_slice(&header.bucket_created_ns.to_le_bytes());
        head.extend_from_slice(&header.revision.to_le_bytes());
        head.extend_from_slice(&(records.len() as u64).to_le_bytes());
        let mut tail = Vec::with_capacity(TRAILER_LEN);
        tail.extend_from_slice(END);
        tail.extend_from_slice(&(records.len() as u64).to_le_bytes());
        Self {
            pending: Bytes::from(head),
            value: None,
            records: records.into_iter(),
            trailer: Some(Bytes::from(tail)),
        }
    }

    fn next_piece(&mut self) -> Option<Bytes> {
        if let Some(value) = self.value.take() {
            return Some(value);
        }
        match self.records.next() {
            Some((value, revision)) => {
                let mut prefix = Vec::with_capacity(RECORD_PREFIX_LEN);
                prefix.extend_from_slice(&revision.to_le_bytes());
                prefix.extend_from_slice(&(value.len() as u32).to_le_bytes());
                self.value = Some(value);
                Some(Bytes::from(prefix))
            }
            None => self.trailer.take(),
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
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    fn header(records: u64) -> Header {
        Header {
            bucket_created_ns: 1_700_000_000_123_456_789,
            revision: 42,
            records,
        }
    }

    async fn encoded(records: Vec<(Bytes, u64)>) -> Vec<u8> {
        let mut out = Vec::new();
        Encoder::new(header(records.len() as u64), records)
            .read_to_end(&mut out)
            .await
            .expect("in memory");
        out
    }

    /// Records as decoded: revision and value.
    type Records = Vec<(u64, Vec<u8>)>;

    /// Decodes `bytes` fed `step` bytes at a time.
    fn decode(bytes: &[u8], step: usize) -> Result<(Header, Records), FormatError> {
        let mut decoder = Decoder::default();
        let mut buf: Vec<u8> = Vec::new();
        let mut records = Vec::new();
        for piece in bytes.chunks(step.max(1)) {
            buf.extend_from_slice(piece);
            let mut at = 0;
            while let Some((piece, used)) = decoder.next(&buf[at..])? {
                if let Piece::Record { revision, value } = piece {
                    records.push((revision, value.to_vec()));
                }
                at += used;
            }
            buf.drain(..at);
        }
        Ok((decoder.finish()?, records))
    }

    #[tokio::test]
    async fn records_come_back_as_written_whatever_the_read_sizes() {
        let records: Vec<(Bytes, u64)> = (0..50u64)
            .map(|i| (Bytes::from(format!("{{\"node_id\":\"n{i}\"}}")), 100 + i))
            .collect();
        let bytes = encoded(records.clone()).await;
        for step in [1, 7, 64, bytes.len()] {
            let (h, back) = decode(&bytes, step).expect("whole snapshot");
            assert_eq!(h, header(50));
            assert_eq!(back.len(), 50);
            for ((value, revision), (r, v)) in records.iter().zip(&back) {
                assert_eq!((revision, value.as_ref()), (r, v.as_slice()));
            }
        }
    }

    #[tokio::test]
    async fn an_empty_index_is_a_snapshot_too() {
        let bytes = encoded(Vec::new()).await;
        let (h, back) = decode(&bytes, 5).expect("whole snapshot");
        assert_eq!((h.records, back.len()), (0, 0));
    }

    #[tokio::test]
    async fn a_cut_snapshot_is_refused_at_the_end() {
        let records = vec![
            (Bytes::from_static(b"{}"), 1),
            (Bytes::from_static(b"{}"), 2),
        ];
        let bytes = encoded(records).await;
        assert_eq!(decode(&bytes[..3], 4).err(), Some(FormatError::NoHeader));
        for cut in [HEADER_LEN, HEADER_LEN + 5, bytes.len() - 1] {
            assert!(
                matches!(decode(&bytes[..cut], 4), Err(FormatError::Truncated { .. })),
                "cut at {cut}"
            );
        }
    }

    #[tokio::test]
    async fn bad_bytes_get_a_reason_not_a_panic() {
        let bytes = encoded(vec![(Bytes::from_static(b"{}"), 1)]).await;
        let mut magic = bytes.clone();
        magic[0] = b'X';
        assert_eq!(decode(&magic, 64).err(), Some(FormatError::BadMagic));
        let mut version = bytes.clone();
        version[8] = 9;
        assert_eq!(decode(&version, 64).err(), Some(FormatError::Version(9)));
        let mut count = bytes.clone();
        count[28..36].copy_from_slice(&u64::MAX.to_le_bytes());
        assert_eq!(
            decode(&count, 64).err(),
            Some(FormatError::TooManyRecords(u64::MAX))
        );
        let mut long = bytes.clone();
        long[HEADER_LEN + 8..HEADER_LEN + 12].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(
            decode(&long, 64),
            Err(FormatError::RecordTooLong { index: 0, .. })
        ));
        let mut trailer = bytes.clone();
        let n = trailer.len();
        trailer[n - 1] = 7;
        assert!(matches!(
            decode(&trailer, 64),
            Err(FormatError::BadTrailer(_))
        ));
        let mut extra = bytes.clone();
        extra.push(0);
        assert_eq!(
            decode(&extra, 64).err(),
            Some(FormatError::TrailingBytes(1))
        );
    }
}
