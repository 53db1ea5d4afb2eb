//! AMD GPUs from sysfs (amdgpu): `<sysfs>/class/drm/card<N>/device` with
//! vendor 0x1002. Facts from the device directory and the driver module;
//! readings from `gpu_busy_percent`, `mem_info_vram_used`, the hwmon
//! directory (`temp1_input`, `temp1_crit`, `temp1_emergency`,
//! `power1_average`, `power1_cap`; milli-°C and µW) and the RAS error
//! counts under `ras/` (`<block>_err_count`: `ue: N` and `ce: N`).

use std::path::{Path, PathBuf};

use schemas::Gpu;

use super::health::Reading;
use super::{read_trimmed, read_u64, round1, GIB};

/// PCI vendor id of AMD.
const AMD_VENDOR: &str = "0x1002";

/// AMD GPUs in card order, with their device directories.
pub fn gpus(sysfs_root: &Path) -> Vec<(PathBuf, Gpu)> {
    let drm = sysfs_root.join("class/drm");
    let Ok(entries) = std::fs::read_dir(&drm) else {
        return Vec::new();
    };
    let mut cards: Vec<(u32, PathBuf)> = entries
        .filter_map(|e| {
            let e = e.ok()?;
            let name = e.file_name().to_string_lossy().into_owned();
            // card0, card1, ...; not the connectors (card0-DP-1).
            let n: u32 = name.strip_prefix("card")?.parse().ok()?;
            Some((n, e.path().join("device")))
        })
        .collect();
    cards.sort();
    let driver_version = read_trimmed(&sysfs_root.join("module/amdgpu/version"));
    cards
        .into_iter()
        .filter(|(_, dir)| read_trimmed(&dir.join("vendor")).as_deref() == Some(AMD_VENDOR))
        .map(|(_, dir)| {
            let vram = read_u64(&dir.join("mem_info_vram_total")).unwrap_or(0);
            let model = read_trimmed(&dir.join("product_name")).unwrap_or_else(|| {
                let device = read_trimmed(&dir.join("device")).unwrap_or_else(|| "unknown".into());
                format!("AMD GPU {device}")
            });
            let gpu = Gpu {
                vendor: "amd".into(),
                model,
                vram_gb: round1(vram as f64 / GIB),
                uuid: read_trimmed(&dir.join("unique_id")),
                pci_bus_id: pci_slot(&dir),
                driver_version: driver_version.clone(),
                ..Gpu::default()
            };
            (dir, gpu)
        })
        .collect()
}

/// The PCI address, from the device's `uevent` (`PCI_SLOT_NAME=…`).
fn pci_slot(dir: &Path) -> Option<String> {
    let uevent = std::fs::read_to_string(dir.join("uevent")).ok()?;
    uevent
        .lines()
        .find_map(|line| line.strip_prefix("PCI_SLOT_NAME="))
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty() && s.len() <= 64)
}

/// What the card at `dir` reports now.
pub fn read(dir: &Path) -> Reading {
    let hwmon = first_hwmon(dir);
    let milli = |name: &str| {
        hwmon
            .as_ref()
            .and_then(|h| read_u64(&h.join(name)))
            .map(|v| round1(v as f64 / 1000.0))
    };
    let micro = |name: &str| {
        hwmon
            .as_ref()
            .and_then(|h| read_u64(&h.join(name)))
            .map(|v| round1(v as f64 / 1_000_000.0))
    };
    let (ecc_uncorrected, ecc_corrected) = ras_counts(&dir.join("ras"));
    Reading {
        util_pct: read_u64(&dir.join("gpu_busy_percent")).map(|p| (p as f64).clamp(0.0, 100.0)),
        vram_used_gb: read_u64(&dir.join("mem_info_vram_used")).map(|b| round1(b as f64 / GIB)),
        temperature_c: milli("temp1_input"),
        slowdown_c: milli("temp1_crit"),
        shutdown_c: milli("temp1_emergency"),
        power_w: micro("power1_average"),
        power_limit_w: micro("power1_cap"),
        ecc_corrected,
        ecc_uncorrected,
        throttle: Vec::new(),
    }
}

/// The card's first `hwmon/hwmon<N>` directory.
fn first_hwmon(dir: &Path) -> Option<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir.join("hwmon"))
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("hwmon"))
        })
        .collect();
    found.sort();
    found.into_iter().next()
}

/// Uncorrectable and corrected error counts summed over the RAS blocks
/// (`umc_err_count`, `gfx_err_count`, ...); `None` without RAS.
fn ras_counts(ras: &Path) -> (Option<u64>, Option<u64>) {
    let Ok(entries) = std::fs::read_dir(ras) else {
        return (None, None);
    };
    let (mut ue, mut ce, mut any) = (0u64, 0u64, false);
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.ends_with("_err_count") {
            continue;
        }
        let Ok(text) = std::fs::read_to_string(entry.path()) else {
            continue;
        };
        for line in text.lines() {
            let Some((key, value)) = line.split_once(':') else {
                continue;
            };
            let Ok(n) = value.trim().parse::<u64>() else {
                continue;
            };
            any = true;
            match key.trim() {
                "ue" => ue = ue.saturating_add(n),
                "ce" => ce = ce.saturating_add(n),
                _ => {}
            }
        }
    }
    if any {
        (Some(ue), Some(ce))
    } else {
        (None, None)
    }
}
