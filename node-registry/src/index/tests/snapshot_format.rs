use super::*;
use tokio::io::AsyncReadExt;

fn header(version: u32, records: u64) -> Header {
    Header {
        version,
        bucket_created_ns: 1_700_000_000_123_456_789,
        revision: 42,
        records,
        layout: if version == VERSION { IMAGE_LAYOUT } else { 0 },
    }
}

/// Slots `n0`… with a meta each, every fifth free.
fn slots(n: u64) -> Vec<Option<ImageSlot>> {
    (0..n)
        .map(|i| {
            (i % 5 != 4).then(|| ImageSlot {
                value: Bytes::from(format!("{{\"node_id\":\"n{i}\"}}")),
                revision: 100 + i,
                meta: Bytes::from(format!("meta of n{i}")),
            })
        })
        .collect()
}

async fn encoded(version: u32, slots: Vec<Option<ImageSlot>>, postings: &'static [u8]) -> Vec<u8> {
    let mut out = Vec::new();
    Encoder::new(
        header(version, slots.len() as u64),
        slots,
        Bytes::from_static(postings),
    )
    .read_to_end(&mut out)
    .await
    .expect("in memory");
    out
}

/// What was decoded: the header, the slots (revision, value, meta) and
/// the posting lists.
type Decoded = (Header, Vec<(u64, Vec<u8>, Vec<u8>)>, Option<Vec<u8>>);

/// Decodes `bytes` fed `step` bytes at a time.
fn decode(bytes: &[u8], step: usize) -> Result<Decoded, FormatError> {
    let mut decoder = Decoder::default();
    let mut buf: Vec<u8> = Vec::new();
    let mut records = Vec::new();
    let mut postings = None;
    for piece in bytes.chunks(step.max(1)) {
        buf.extend_from_slice(piece);
        let mut at = 0;
        while let Some((piece, used)) = decoder.next(&buf[at..])? {
            match piece {
                Piece::Record {
                    revision,
                    value,
                    meta,
                } => records.push((revision, value.to_vec(), meta.to_vec())),
                Piece::Postings(p) => postings = Some(p.to_vec()),
                Piece::Header(_) | Piece::End => {}
            }
            at += used;
        }
        buf.drain(..at);
    }
    Ok((decoder.finish()?, records, postings))
}

#[tokio::test]
async fn slots_and_postings_come_back_as_written_whatever_the_read_sizes() {
    let written = slots(50);
    let bytes = encoded(VERSION, written.clone(), b"the posting lists").await;
    for step in [1, 7, 64, bytes.len()] {
        let (h, back, postings) = decode(&bytes, step).expect("whole snapshot");
        assert_eq!(h, header(VERSION, 50));
        assert_eq!(postings.as_deref(), Some(&b"the posting lists"[..]));
        assert_eq!(back.len(), 50);
        for (slot, (r, v, m)) in written.iter().zip(&back) {
            match slot {
                Some(s) => assert_eq!(
                    (s.revision, s.value.as_ref(), s.meta.as_ref()),
                    (*r, v.as_slice(), m.as_slice())
                ),
                None => assert!(v.is_empty() && m.is_empty(), "a free slot"),
            }
        }
    }
}

#[tokio::test]
async fn a_version_1_snapshot_still_reads_as_records_without_meta() {
    let written: Vec<Option<ImageSlot>> = slots(20).into_iter().flatten().map(Some).collect();
    let bytes = encoded(VERSION_RECORDS_ONLY, written.clone(), b"ignored").await;
    let (h, back, postings) = decode(&bytes, 9).expect("whole snapshot");
    assert_eq!(h, header(VERSION_RECORDS_ONLY, 16));
    assert_eq!(postings, None);
    for (slot, (r, v, m)) in written.iter().flatten().zip(&back) {
        assert_eq!((slot.revision, slot.value.as_ref()), (*r, v.as_slice()));
        assert!(m.is_empty());
    }
}

#[tokio::test]
async fn an_empty_index_is_a_snapshot_too() {
    let bytes = encoded(VERSION, Vec::new(), b"").await;
    let (h, back, postings) = decode(&bytes, 5).expect("whole snapshot");
    assert_eq!((h.records, back.len(), postings), (0, 0, Some(Vec::new())));
}

#[tokio::test]
async fn a_cut_snapshot_is_refused_at_the_end() {
    let bytes = encoded(VERSION, slots(2), b"p").await;
    assert_eq!(decode(&bytes[..3], 4).err(), Some(FormatError::NoHeader));
    for cut in [
        HEADER_LEN,
        HEADER_LEN + 5,
        bytes.len() - 20,
        bytes.len() - 1,
    ] {
        assert!(
            matches!(decode(&bytes[..cut], 4), Err(FormatError::Truncated { .. })),
            "cut at {cut}"
        );
    }
}

#[tokio::test]
async fn bad_bytes_get_a_reason_not_a_panic() {
    let bytes = encoded(VERSION, slots(1), b"p").await;
    let mut magic = bytes.clone();
    magic[0] = b'X';
    assert_eq!(decode(&magic, 64).err(), Some(FormatError::BadMagic));
    let mut version = bytes.clone();
    version[8] = 9;
    assert_eq!(decode(&version, 64).err(), Some(FormatError::Version(9)));
    let mut layout = bytes.clone();
    layout[36..40].copy_from_slice(&(IMAGE_LAYOUT + 1).to_le_bytes());
    assert_eq!(
        decode(&layout, 64).err(),
        Some(FormatError::Layout(IMAGE_LAYOUT + 1))
    );
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
    let mut long_meta = bytes.clone();
    long_meta[HEADER_LEN + 12..HEADER_LEN + 16].copy_from_slice(&u32::MAX.to_le_bytes());
    assert!(matches!(
        decode(&long_meta, 64),
        Err(FormatError::RecordTooLong { index: 0, .. })
    ));
    let postings_at = bytes.len() - TRAILER_LEN - POSTINGS_PREFIX_LEN - 1;
    let mut no_postings = bytes.clone();
    no_postings[postings_at] = b'X';
    assert!(matches!(
        decode(&no_postings, 64),
        Err(FormatError::BadPostings(_))
    ));
    let mut huge_postings = bytes.clone();
    huge_postings[postings_at + 8..postings_at + 16].copy_from_slice(&u64::MAX.to_le_bytes());
    assert!(matches!(
        decode(&huge_postings, 64),
        Err(FormatError::BadPostings(_))
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
