//! Unit tests of the parent module (kept apart so the module reads short).

use super::fixture::*;
use super::*;

fn probe(sys: &Path, proc: &Path) -> GpuProbe {
    GpuProbe::new(sys, proc, false)
}

#[test]
fn an_amd_only_box() {
    let sys = tempfile::tempdir().expect("tmp");
    let proc = tempfile::tempdir().expect("tmp");
    amd_card(sys.path(), 0, Some("AMD Radeon RX 7900 XTX"));
    let mut p = probe(sys.path(), proc.path());
    let gpus = p.detect(64.0);
    assert_eq!(
        gpus,
        vec![Gpu {
            vendor: "amd".into(),
            model: "AMD Radeon RX 7900 XTX".into(),
            vram_gb: 16.0
        }]
    );
    let usage = p.usage();
    assert_eq!(usage.len(), 1);
    assert_eq!(usage[0].util_pct, Some(37.0));
    assert_eq!(usage[0].vram_used_gb, Some(4.0));
}

#[test]
fn a_multi_gpu_box_lists_nvidia_then_amd_in_order() {
    let sys = tempfile::tempdir().expect("tmp");
    let proc = tempfile::tempdir().expect("tmp");
    intel_card(sys.path(), 0);
    amd_card(sys.path(), 2, None);
    amd_card(sys.path(), 1, Some("AMD Instinct MI210"));
    nvidia_procfs(
        proc.path(),
        "0000:41:00.0",
        "NVIDIA RTX 4000 SFF Ada Generation",
    );
    nvidia_procfs(proc.path(), "0000:01:00.0", "NVIDIA GeForce RTX 4090");
    let mut p = probe(sys.path(), proc.path());
    let models: Vec<(String, String)> = p
        .detect(64.0)
        .into_iter()
        .map(|g| (g.vendor, g.model))
        .collect();
    assert_eq!(
        models,
        vec![
            ("nvidia".to_owned(), "NVIDIA GeForce RTX 4090".to_owned()),
            (
                "nvidia".to_owned(),
                "NVIDIA RTX 4000 SFF Ada Generation".to_owned()
            ),
            ("amd".to_owned(), "AMD Instinct MI210".to_owned()),
            ("amd".to_owned(), "AMD GPU 0x744c".to_owned()),
        ]
    );
    let usage = p.usage();
    assert_eq!(
        usage.iter().map(|u| u.index).collect::<Vec<_>>(),
        vec![0, 1, 2, 3]
    );
    assert_eq!(usage[0].util_pct, None, "no usage without NVML");
    assert_eq!(usage[2].util_pct, Some(37.0));
}

#[test]
fn a_box_without_gpus_or_with_unreadable_trees() {
    let sys = tempfile::tempdir().expect("tmp");
    let proc = tempfile::tempdir().expect("tmp");
    intel_card(sys.path(), 0);
    write(sys.path(), "class/drm/card1/device/vendor", "garbage");
    let mut p = probe(sys.path(), proc.path());
    assert!(p.detect(8.0).is_empty());
    assert!(p.usage().is_empty());
    let mut missing = probe(
        Path::new("/nonexistent/sys"),
        Path::new("/nonexistent/proc"),
    );
    assert!(missing.detect(8.0).is_empty());
}

#[test]
fn nvml_missing_is_not_an_error() {
    // This machine has no NVIDIA driver: NVML fails to load, quietly.
    let mut p = GpuProbe::new(Path::new("/nonexistent"), Path::new("/nonexistent"), true);
    let _ = p.detect(8.0);
    let _ = p.usage();
}
