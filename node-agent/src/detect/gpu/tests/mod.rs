//! Unit tests of the parent module (kept apart so the module reads short).

use super::fixture::*;
use super::health::Reading;
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
            vram_gb: 16.0,
            index: Some(0),
            uuid: Some("a1b2c3d4e5f60000".into()),
            pci_bus_id: Some("0000:00:00.0".into()),
            ..Gpu::default()
        }]
    );
    let usage = p.usage();
    assert_eq!(usage.len(), 1);
    assert_eq!(usage[0].util_pct, Some(37.0));
    assert_eq!(usage[0].vram_used_gb, Some(4.0));
    assert_eq!(usage[0].temperature_c, Some(45.0));
    assert_eq!(usage[0].power_w, Some(120.0));
    assert_eq!(usage[0].power_limit_w, Some(300.0));
    assert_eq!(
        (usage[0].ecc_uncorrected, usage[0].ecc_corrected),
        (Some(0), Some(0))
    );
    assert_eq!(health(&usage[0]), ("healthy", vec![]));
}

fn health(usage: &GpuUsage) -> (&str, Vec<&str>) {
    let h = usage.health.as_ref().expect("judged");
    (
        h.state.as_str(),
        h.reasons.iter().map(String::as_str).collect(),
    )
}

#[test]
fn amd_health_rules_and_recovery_from_fixture_trees() {
    let sys = tempfile::tempdir().expect("tmp");
    let proc = tempfile::tempdir().expect("tmp");
    amd_card(sys.path(), 0, Some("AMD Instinct MI210"));
    amd_card(sys.path(), 1, Some("AMD Instinct MI210"));
    let mut p = probe(sys.path(), proc.path());
    p.detect(64.0);
    // Card 1 runs hot (past the critical temperature, short of emergency).
    amd_hwmon(sys.path(), 1, "temp1_input", 101_000);
    let usage = p.usage();
    assert_eq!(
        health(&usage[0]).0,
        "healthy",
        "one GPU's trouble is its own"
    );
    assert_eq!(health(&usage[1]), ("warning", vec!["temperature_high"]));
    // At the emergency temperature it has failed.
    amd_hwmon(sys.path(), 1, "temp1_input", 105_000);
    assert_eq!(
        health(&p.usage()[1]),
        ("failed", vec!["temperature_shutdown"])
    );
    // Cooled down: healthy again (the registry holds it out for its
    // recovery time).
    amd_hwmon(sys.path(), 1, "temp1_input", 60_000);
    assert_eq!(health(&p.usage()[1]).0, "healthy");
    // An uncorrectable memory error, summed over the RAS blocks.
    amd_ras(sys.path(), 0, "umc", 1, 4);
    amd_ras(sys.path(), 0, "gfx", 0, 2);
    let usage = p.usage();
    assert_eq!(
        (usage[0].ecc_uncorrected, usage[0].ecc_corrected),
        (Some(1), Some(6))
    );
    assert_eq!(health(&usage[0]), ("failed", vec!["ecc_uncorrected"]));
    // A driver reload resets the counters: healthy.
    amd_ras(sys.path(), 0, "umc", 0, 0);
    amd_ras(sys.path(), 0, "gfx", 0, 0);
    assert_eq!(health(&p.usage()[0]).0, "healthy");
    // A burst of corrected errors warns.
    amd_ras(sys.path(), 0, "umc", 0, 25);
    assert_eq!(
        health(&p.usage()[0]),
        ("warning", vec!["ecc_corrected_burst"])
    );
    // Unreadable hwmon and RAS: no figures, no verdict against it.
    std::fs::remove_dir_all(sys.path().join("class/drm/card1/device/hwmon")).expect("rm");
    std::fs::remove_dir_all(sys.path().join("class/drm/card1/device/ras")).expect("rm");
    let usage = p.usage();
    assert_eq!(usage[1].temperature_c, None);
    assert_eq!(usage[1].ecc_uncorrected, None);
    assert_eq!(health(&usage[1]).0, "healthy");
}

fn h100(index: u32) -> Gpu {
    Gpu {
        vendor: "nvidia".into(),
        model: "NVIDIA H100 80GB HBM3".into(),
        vram_gb: 79.6,
        index: Some(index),
        uuid: Some(format!("GPU-0000000{index}-aaaa-bbbb-cccc-dddddddddddd")),
        pci_bus_id: Some(format!("00000000:{:02X}:00.0", 0x17 + index)),
        driver_version: Some("550.54.15".into()),
        cuda_version: Some("12.4".into()),
        compute_capability: Some("9.0".into()),
        architecture: Some("hopper".into()),
        mig_mode: Some("disabled".into()),
        ..Gpu::default()
    }
}

/// Readings as an H100 reports them through NVML, recorded.
fn h100_reading() -> Reading {
    Reading {
        util_pct: Some(87.0),
        vram_used_gb: Some(61.2),
        temperature_c: Some(64.0),
        slowdown_c: Some(87.0),
        shutdown_c: Some(92.0),
        power_w: Some(512.3),
        power_limit_w: Some(700.0),
        ecc_corrected: Some(0),
        ecc_uncorrected: Some(0),
        throttle: vec!["sw_power_cap".into()],
    }
}

#[test]
fn nvml_facts_figures_and_xids_through_a_recorded_driver() {
    let sys = tempfile::tempdir().expect("tmp");
    let proc = tempfile::tempdir().expect("tmp");
    let driver = nvidia::Recorded {
        gpus: vec![h100(0), h100(1)],
        ..nvidia::Recorded::default()
    };
    for i in 0..2 {
        driver
            .readings
            .lock()
            .expect("lock")
            .insert(i, h100_reading());
    }
    let mut p = GpuProbe::with_nvidia(sys.path(), proc.path(), Some(Box::new(driver.clone())));
    let gpus = p.detect(512.0);
    assert_eq!(gpus, vec![h100(0), h100(1)], "the driver's facts, as given");
    let usage = p.usage();
    assert_eq!(usage[1].power_w, Some(512.3));
    assert_eq!(usage[1].throttle, vec!["sw_power_cap"]);
    assert_eq!(health(&usage[1]).0, "healthy");
    assert_eq!((usage[1].xid_last, usage[1].xid_count), (None, None));
    // GPU 1 falls off the bus; an application fault (XID 13) on GPU 0.
    driver.xids.lock().expect("lock").extend([(1, 79), (0, 13)]);
    let usage = p.usage();
    assert_eq!(health(&usage[0]).0, "healthy");
    assert_eq!((usage[0].xid_last, usage[0].xid_count), (Some(13), Some(1)));
    assert_eq!(health(&usage[1]), ("failed", vec!["xid_79"]));
    assert_eq!((usage[1].xid_last, usage[1].xid_count), (Some(79), Some(1)));
    // The verdict holds while the agent runs, and is kept across a new
    // detection (the history is by uuid).
    p.detect(512.0);
    assert_eq!(health(&p.usage()[1]).0, "failed");
    // Thermal throttling warns.
    driver.readings.lock().expect("lock").insert(
        0,
        Reading {
            throttle: vec!["sw_thermal".into()],
            ..h100_reading()
        },
    );
    assert_eq!(health(&p.usage()[0]), ("warning", vec!["throttle_thermal"]));
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
