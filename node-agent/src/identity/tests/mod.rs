//! Unit tests of the parent module (kept apart so the module reads short).

use super::*;

#[test]
fn derives_once_and_reuses() {
    let dir = tempfile::tempdir().expect("tempdir");
    let first = load_or_create(None, dir.path(), "GPU-Box").expect("created");
    assert!(first.as_str().starts_with("node-gpu-box-"), "{first}");
    assert_eq!(first.as_str().len(), "node-gpu-box-".len() + 8);
    let again = load_or_create(None, dir.path(), "renamed-host").expect("reused");
    assert_eq!(first, again);
}

#[test]
fn configured_id_wins_and_bad_stored_ids_are_errors() {
    let dir = tempfile::tempdir().expect("tempdir");
    let id = load_or_create(Some("my-node"), dir.path(), "h").expect("configured");
    assert_eq!(id.as_str(), "my-node");
    std::fs::write(dir.path().join(NODE_ID_FILE), "Not Valid\n").expect("write");
    assert!(matches!(
        load_or_create(None, dir.path(), "h"),
        Err(IdentityError::Invalid { .. })
    ));
}
