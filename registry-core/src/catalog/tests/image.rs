use super::*;
use crate::catalog::RecordView;
use schemas::{Capabilities, Gpu, NodeRecord, Ollama, OllamaModel};

fn record(i: usize) -> NodeRecord {
    let status = ["online", "degraded", "offline", "maintenance", "odd"][i % 5];
    NodeRecord {
        node_id: format!("n{i}"),
        status: status.into(),
        role: (i % 3 == 0).then(|| "inference".to_owned()),
        labels: [
            ("region".to_owned(), ["eu", "us"][i % 2].to_owned()),
            ("rack".to_owned(), format!("r{}", i % 7)),
        ]
        .into_iter()
        .collect(),
        capabilities: (i % 4 != 0).then(|| Capabilities {
            cpu_cores: 8,
            ram_gb: 31.5,
            tags: vec!["gpu".into()],
            models: vec![format!("m{}", i % 3)],
            gpus: vec![Gpu {
                vram_gb: 24.0,
                ..Gpu::default()
            }],
            ollama: Some(Ollama {
                models: vec![OllamaModel {
                    name: format!("m{}", i % 3),
                    size_bytes: 1000 + i as u64,
                }],
                ..Ollama::default()
            }),
            ..Capabilities::default()
        }),
        ..NodeRecord::default()
    }
}

/// A catalog with free slots among the occupied ones.
fn catalog() -> Catalog {
    let mut c = Catalog::new();
    for i in 0..40 {
        c.upsert(record(i));
    }
    for i in [3, 17, 18] {
        c.remove(&format!("n{i}"));
    }
    c.revision = 77;
    c
}

fn load(image: &Image) -> Result<Catalog, ImageError> {
    let mut loader = ImageLoader::with_capacity(image.slots.len());
    for slot in &image.slots {
        loader.push(
            slot.as_ref()
                .map(|s| (s.value.clone(), s.revision, &s.meta[..])),
        )?;
    }
    loader.finish(image.revision, &image.postings)
}

/// Everything a catalog answers with, in one comparable form.
fn answers(c: &Catalog) -> Vec<String> {
    let mut out = vec![format!("revision {} len {}", c.revision, c.len())];
    for slot in c.all() {
        out.push(format!(
            "{slot} {:?} {:?} {:?} {:?}",
            c.node_id(slot),
            c.facts(slot),
            c.hot(slot),
            c.json(slot).map(<[u8]>::len)
        ));
    }
    for status in NodeStatus::ALL {
        if let Ok(s) = status.parse() {
            out.push(format!("{status} {:?}", c.with_status(s)));
        }
    }
    for key in ["region", "rack", "gpu", "inference", "m0", "m1", "m2"] {
        out.push(format!(
            "{key}: {:?} {:?} {:?} {:?} {:?} {:?}",
            c.exists(key),
            c.equals(key, "eu"),
            c.capability(key),
            c.with_model(key),
            c.with_role(key),
            c.model_size(key)
        ));
    }
    let mut values: Vec<String> = c
        .label_values("rack")
        .map(|(v, b)| format!("{v}={b:?}"))
        .collect();
    values.sort();
    out.extend(values);
    out
}

#[test]
fn a_loaded_image_answers_as_the_catalog_it_was_taken_from() {
    let original = catalog();
    let loaded = load(&original.image()).expect("loads");
    assert_eq!(answers(&loaded), answers(&original));
    // And it goes on like it: a change of shape, a new node in the
    // first free slot, a removal.
    let (mut a, mut b) = (original, loaded);
    for c in [&mut a, &mut b] {
        let mut moved = record(5);
        moved.labels.insert("region".into(), "ap".into());
        c.upsert(moved);
        c.upsert(record(100));
        c.remove("n6");
        let stored = schemas::record::encode_record(&record(7));
        let view = RecordView::of(&stored).expect("reads");
        c.insert(&view, stored.clone(), 90);
    }
    assert_eq!(answers(&b), answers(&a));
    assert_eq!(b.slots.len(), a.slots.len(), "free slots reused alike");
}

#[test]
fn an_empty_catalog_images_to_an_empty_one() {
    let loaded = load(&Catalog::new().image()).expect("loads");
    assert!(loaded.is_empty());
}

#[test]
fn bad_images_are_refused_with_a_reason() {
    let image = catalog().image();
    // A slot's figures cut, or with bytes after them.
    let mut cut = image.clone();
    if let Some(Some(s)) = cut.slots.first_mut() {
        s.meta = s.meta.slice(..s.meta.len() - 1);
    }
    assert_eq!(load(&cut).err(), Some(ImageError::Short("slot figures")));
    let mut long = image.clone();
    if let Some(Some(s)) = long.slots.first_mut() {
        let mut m = s.meta.to_vec();
        m.push(0);
        s.meta = m.into();
    }
    assert_eq!(
        load(&long).err(),
        Some(ImageError::Trailing(1, "slot figures"))
    );
    // One node in two slots.
    let mut twice = image.clone();
    let first = twice.slots[0].clone();
    twice.slots.push(first);
    assert_eq!(
        load(&twice).err(),
        Some(ImageError::DuplicateId("n0".into()))
    );
    // A posting list naming a free slot (slot 3 was freed).
    let mut postings = Vec::new();
    postings.push(TAGS);
    put_text(&mut postings, "gpu");
    put_bitmap(&mut postings, &RoaringBitmap::from_iter([3u32]));
    let mut stray = image.clone();
    stray.postings = postings.into();
    assert!(matches!(load(&stray), Err(ImageError::BadPosting(..))));
    // An unknown kind, and posting lists cut short.
    let mut unknown = image.clone();
    unknown.postings = Bytes::from_static(&[9, 1, 0, 0, 0, b'x']);
    assert_eq!(load(&unknown).err(), Some(ImageError::UnknownKind(9)));
    let mut short = image.clone();
    short.postings = short.postings.slice(..short.postings.len() - 1);
    assert!(matches!(
        load(&short),
        Err(ImageError::Short(_) | ImageError::BadPosting(..))
    ));
}
