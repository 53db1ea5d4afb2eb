//! GPU labels in the conventions operators already select on: NVIDIA's GPU
//! feature discovery (`nvidia.com/gpu.product`, `nvidia.com/gpu.count`,
//! `nvidia.com/gpu.memory` in MiB, `nvidia.com/cuda.driver.major`, ...)
//! and AMD's node labeller (`amd.com/gpu.product`, ...). Like those tools,
//! they describe the node's first GPU of each vendor and count that
//! vendor's GPUs. Values are made selectable: at most 63 characters of
//! letters, digits, `-`, `_` and `.`.

use std::collections::BTreeMap;

use schemas::Gpu;

/// The labels for these GPUs.
pub fn labels(gpus: &[Gpu]) -> BTreeMap<String, String> {
    let mut labels = BTreeMap::new();
    let mut put = |key: &str, value: String| {
        let value = selectable(&value);
        if !value.is_empty() {
            labels.insert(key.to_owned(), value);
        }
    };
    let nvidia: Vec<&Gpu> = gpus.iter().filter(|g| g.vendor == "nvidia").collect();
    if let Some(first) = nvidia.first() {
        put("nvidia.com/gpu.present", "true".into());
        put("nvidia.com/gpu.product", first.model.clone());
        put("nvidia.com/gpu.count", nvidia.len().to_string());
        if first.vram_gb > 0.0 {
            put("nvidia.com/gpu.memory", mib(first.vram_gb).to_string());
        }
        if let Some(family) = &first.architecture {
            put("nvidia.com/gpu.family", family.clone());
        }
        if let Some((major, minor)) = first
            .compute_capability
            .as_deref()
            .and_then(|c| c.split_once('.'))
        {
            put("nvidia.com/gpu.compute.major", major.into());
            put("nvidia.com/gpu.compute.minor", minor.into());
        }
        if let Some(driver) = &first.driver_version {
            let mut parts = driver.split('.');
            for name in ["major", "minor", "rev"] {
                if let Some(part) = parts.next() {
                    put(&format!("nvidia.com/cuda.driver.{name}"), part.into());
                }
            }
        }
        if let Some((major, minor)) = first
            .cuda_version
            .as_deref()
            .and_then(|c| c.split_once('.'))
        {
            put("nvidia.com/cuda.runtime.major", major.into());
            put("nvidia.com/cuda.runtime.minor", minor.into());
        }
        if let Some(mode) = &first.mig_mode {
            put("nvidia.com/mig.capable", "true".into());
            put("nvidia.com/mig.enabled", (mode == "enabled").to_string());
        }
    }
    let amd: Vec<&Gpu> = gpus.iter().filter(|g| g.vendor == "amd").collect();
    if let Some(first) = amd.first() {
        put("amd.com/gpu.present", "true".into());
        put("amd.com/gpu.product", first.model.clone());
        put("amd.com/gpu.count", amd.len().to_string());
        if first.vram_gb > 0.0 {
            put("amd.com/gpu.memory", mib(first.vram_gb).to_string());
            put("amd.com/gpu.vram", format!("{}G", first.vram_gb.round()));
        }
        if let Some(driver) = &first.driver_version {
            put("amd.com/gpu.driver-version", driver.clone());
        }
    }
    labels
}

/// Adds these GPUs' labels to `labels`: those already there win, and the
/// fleet's label limit is kept.
pub fn merge_into(labels: &mut BTreeMap<String, String>, gpus: &[Gpu]) {
    for (key, value) in self::labels(gpus) {
        if labels.len() >= schemas::validate::MAX_LABELS {
            break;
        }
        labels.entry(key).or_insert(value);
    }
}

/// GiB (one decimal) to whole MiB.
fn mib(gib: f64) -> u64 {
    (gib * 1024.0).round() as u64
}

/// A value a selector can name: other characters become `-`, runs of `-`
/// fold, no `-` at either end, at most 63 characters.
fn selectable(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.trim().chars() {
        let c = if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
            c
        } else {
            '-'
        };
        if c == '-' && out.ends_with('-') {
            continue;
        }
        out.push(c);
    }
    let out: String = out.trim_matches('-').chars().take(63).collect();
    out.trim_end_matches('-').to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gpu(vendor: &str, model: &str, vram_gb: f64) -> Gpu {
        Gpu {
            vendor: vendor.into(),
            model: model.into(),
            vram_gb,
            ..Gpu::default()
        }
    }

    #[test]
    fn nvidia_labels_follow_gpu_feature_discovery() {
        let h100 = Gpu {
            architecture: Some("hopper".into()),
            compute_capability: Some("9.0".into()),
            driver_version: Some("550.54.15".into()),
            cuda_version: Some("12.4".into()),
            mig_mode: Some("disabled".into()),
            ..gpu("nvidia", "NVIDIA H100 80GB HBM3", 79.6)
        };
        let labels = labels(&[h100.clone(), h100.clone(), h100.clone(), h100]);
        let get = |k: &str| labels.get(k).map(String::as_str);
        assert_eq!(get("nvidia.com/gpu.product"), Some("NVIDIA-H100-80GB-HBM3"));
        assert_eq!(get("nvidia.com/gpu.count"), Some("4"));
        assert_eq!(get("nvidia.com/gpu.memory"), Some("81510"));
        assert_eq!(get("nvidia.com/gpu.family"), Some("hopper"));
        assert_eq!(get("nvidia.com/gpu.compute.major"), Some("9"));
        assert_eq!(get("nvidia.com/gpu.compute.minor"), Some("0"));
        assert_eq!(get("nvidia.com/cuda.driver.major"), Some("550"));
        assert_eq!(get("nvidia.com/cuda.driver.rev"), Some("15"));
        assert_eq!(get("nvidia.com/cuda.runtime.major"), Some("12"));
        assert_eq!(get("nvidia.com/mig.enabled"), Some("false"));
        assert!(labels.keys().all(|k| !k.starts_with("amd.com/")));
        // Every key and value passes the fleet's label rules and selectors.
        for (k, v) in &labels {
            schemas::validate::check_label_key(k).expect("key");
            let selector = format!("{k}={v}");
            schemas::selector::Selector::parse(&selector).expect("selectable");
        }
    }

    #[test]
    fn amd_labels_and_a_mixed_box() {
        let found = labels(&[
            gpu("amd", "AMD Instinct MI210", 64.0),
            gpu("amd", "AMD Instinct MI210", 64.0),
            gpu("nvidia", "NVIDIA GeForce RTX 4090", 24.0),
        ]);
        assert_eq!(found["amd.com/gpu.product"], "AMD-Instinct-MI210");
        assert_eq!(found["amd.com/gpu.count"], "2");
        assert_eq!(found["amd.com/gpu.vram"], "64G");
        assert_eq!(found["nvidia.com/gpu.count"], "1");
        assert!(labels(&[]).is_empty());
    }

    #[test]
    fn values_are_made_selectable() {
        assert_eq!(
            selectable("  NVIDIA  A100 (SXM4) 80GB "),
            "NVIDIA-A100-SXM4-80GB"
        );
        assert_eq!(selectable("---"), "");
        assert_eq!(selectable(&"x".repeat(80)).len(), 63);
        assert_eq!(selectable(&format!("{}-y", "x".repeat(62))), "x".repeat(62));
    }
}
