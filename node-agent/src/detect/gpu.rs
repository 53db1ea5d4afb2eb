//! GPUs: NVIDIA through NVML (loaded at run time), AMD from sysfs, Apple
//! Silicon on macOS. Each source is optional; none is fatal.
//!
//! sysfs and procfs are read below configurable roots, so tests feed fixture
//! trees (an AMD-only box, a multi-GPU box, a box with no GPU).

use std::path::{Path, PathBuf};

use nvml_wrapper::Nvml;
use schemas::{Gpu, GpuUsage};
use tracing::debug;

/// PCI vendor id of AMD.
const AMD_VENDOR: &str = "0x1002";
/// Bytes in a GiB.
const GIB: f64 = 1024.0 * 1024.0 * 1024.0;

fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

/// Where a detected GPU's usage is read from.
#[derive(Debug, Clone, PartialEq)]
enum Source {
    /// NVML device index.
    Nvml(u32),
    /// NVIDIA seen through procfs only (no NVML): no usage figures.
    NvidiaProcfs,
    /// An AMD card's sysfs `device` directory.
    AmdSysfs(PathBuf),
    /// Apple Silicon: usage is not exposed without private APIs.
    Apple,
}

/// Finds GPUs and reads their usage.
pub struct GpuProbe {
    sysfs_root: PathBuf,
    procfs_root: PathBuf,
    nvml: Option<Nvml>,
    found: Vec<Source>,
}

impl std::fmt::Debug for GpuProbe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GpuProbe")
            .field("sysfs_root", &self.sysfs_root)
            .field("procfs_root", &self.procfs_root)
            .field("nvml", &self.nvml.is_some())
            .field("found", &self.found)
            .finish()
    }
}

impl GpuProbe {
    /// A probe reading sysfs and procfs below the given roots; `use_nvml`
    /// loads the NVIDIA library if the machine has it.
    pub fn new(sysfs_root: &Path, procfs_root: &Path, use_nvml: bool) -> Self {
        let nvml = if use_nvml {
            match Nvml::init() {
                Ok(nvml) => Some(nvml),
                Err(e) => {
                    debug!(error = %e, "NVML not available: no NVIDIA driver, or not this machine");
                    None
                }
            }
        } else {
            None
        };
        Self {
            sysfs_root: sysfs_root.to_owned(),
            procfs_root: procfs_root.to_owned(),
            nvml,
            found: Vec::new(),
        }
    }

    /// Detects the GPUs (NVIDIA, then AMD, then Apple), remembering where
    /// to read their usage. `total_ram_gb` is Apple Silicon's unified memory.
    pub fn detect(&mut self, total_ram_gb: f64) -> Vec<Gpu> {
        let mut gpus = Vec::new();
        self.found.clear();
        let from_nvml = self.nvml_gpus();
        if from_nvml.is_empty() {
            for model in nvidia_procfs_models(&self.procfs_root) {
                gpus.push(Gpu {
                    vendor: "nvidia".into(),
                    model,
                    // NOTE: procfs does not say how much memory a card has;
                    // 0 means unknown (a VRAM bound never matches it).
                    vram_gb: 0.0,
                });
                self.found.push(Source::NvidiaProcfs);
            }
        } else {
            for (index, gpu) in from_nvml {
                gpus.push(gpu);
                self.found.push(Source::Nvml(index));
            }
        }
        for (dir, gpu) in amd_sysfs_gpus(&self.sysfs_root) {
            gpus.push(gpu);
            self.found.push(Source::AmdSysfs(dir));
        }
        if let Some(gpu) = apple_gpu(total_ram_gb) {
            gpus.push(gpu);
            self.found.push(Source::Apple);
        }
        gpus
    }

    fn nvml_gpus(&self) -> Vec<(u32, Gpu)> {
        let Some(nvml) = &self.nvml else {
            return Vec::new();
        };
        let count = nvml.device_count().unwrap_or(0);
        (0..count)
            .filter_map(|index| {
                let device = nvml.device_by_index(index).ok()?;
                let model = device.name().unwrap_or_else(|_| "NVIDIA GPU".to_owned());
                let vram = device.memory_info().map(|m| m.total).unwrap_or(0);
                Some((
                    index,
                    Gpu {
                        vendor: "nvidia".into(),
                        model,
                        vram_gb: round1(vram as f64 / GIB),
                    },
                ))
            })
            .collect()
    }

    /// Usage of the GPUs found by the last [`GpuProbe::detect`], in its order.
    pub fn usage(&self) -> Vec<GpuUsage> {
        self.found
            .iter()
            .enumerate()
            .map(|(i, source)| {
                let index = u32::try_from(i).unwrap_or(u32::MAX);
                let (util_pct, vram_used_gb) = match source {
                    Source::Nvml(n) => self.nvml_usage(*n),
                    Source::AmdSysfs(dir) => amd_usage(dir),
                    Source::NvidiaProcfs | Source::Apple => (None, None),
                };
                GpuUsage {
                    index,
                    util_pct,
                    vram_used_gb,
                }
            })
            .collect()
    }

    fn nvml_usage(&self, index: u32) -> (Option<f64>, Option<f64>) {
        let Some(device) = self
            .nvml
            .as_ref()
            .and_then(|n| n.device_by_index(index).ok())
        else {
            return (None, None);
        };
        let util = device
            .utilization_rates()
            .ok()
            .map(|u| f64::from(u.gpu).clamp(0.0, 100.0));
        let used = device
            .memory_info()
            .ok()
            .map(|m| round1(m.used as f64 / GIB));
        (util, used)
    }
}

fn read_trimmed(path: &Path) -> Option<String> {
    std::fs::read_to_string(path)
        .ok()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
}

fn read_u64(path: &Path) -> Option<u64> {
    read_trimmed(path)?.parse().ok()
}

/// NVIDIA models listed by the proprietary driver under
/// `<procfs>/driver/nvidia/gpus/<bus>/information`, in bus order.
fn nvidia_procfs_models(procfs_root: &Path) -> Vec<String> {
    let dir = procfs_root.join("driver/nvidia/gpus");
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Vec::new();
    };
    let mut buses: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
    buses.sort();
    buses
        .iter()
        .filter_map(|bus| {
            let info = std::fs::read_to_string(bus.join("information")).ok()?;
            info.lines().find_map(|line| {
                let (key, value) = line.split_once(':')?;
                (key.trim() == "Model").then(|| value.trim().to_owned())
            })
        })
        .filter(|m| !m.is_empty())
        .collect()
}

/// AMD GPUs under `<sysfs>/class/drm/card<N>/device` (vendor 0x1002), in
/// card order, with their device directories.
fn amd_sysfs_gpus(sysfs_root: &Path) -> Vec<(PathBuf, Gpu)> {
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
            };
            (dir, gpu)
        })
        .collect()
}

fn amd_usage(dir: &Path) -> (Option<f64>, Option<f64>) {
    let util = read_u64(&dir.join("gpu_busy_percent")).map(|p| (p as f64).clamp(0.0, 100.0));
    let used = read_u64(&dir.join("mem_info_vram_used")).map(|b| round1(b as f64 / GIB));
    (util, used)
}

/// Apple Silicon: the chip is the GPU, and its memory is the machine's.
#[cfg(target_os = "macos")]
fn apple_gpu(total_ram_gb: f64) -> Option<Gpu> {
    let out = std::process::Command::new("sysctl")
        .args(["-n", "machdep.cpu.brand_string"])
        .output()
        .ok()?;
    let chip = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    chip.starts_with("Apple").then(|| Gpu {
        vendor: "apple".into(),
        model: chip,
        vram_gb: total_ram_gb,
    })
}

/// Apple Silicon exists only on macOS.
#[cfg(not(target_os = "macos"))]
fn apple_gpu(_total_ram_gb: f64) -> Option<Gpu> {
    None
}

/// Fixture trees for tests: writes files below a root.
#[cfg(test)]
pub(crate) mod fixture {
    use std::path::Path;

    pub fn write(root: &Path, rel: &str, content: &str) {
        let path = root.join(rel);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).expect("fixture dir");
        }
        std::fs::write(path, content).expect("fixture file");
    }

    /// An AMD card N with 16 GiB, 37 % busy, 4 GiB used.
    pub fn amd_card(sys: &Path, n: u32, product: Option<&str>) {
        let dev = format!("class/drm/card{n}/device");
        write(sys, &format!("{dev}/vendor"), "0x1002\n");
        write(sys, &format!("{dev}/device"), "0x744c\n");
        write(sys, &format!("{dev}/mem_info_vram_total"), "17179869184\n");
        write(sys, &format!("{dev}/mem_info_vram_used"), "4294967296\n");
        write(sys, &format!("{dev}/gpu_busy_percent"), "37\n");
        if let Some(p) = product {
            write(sys, &format!("{dev}/product_name"), &format!("{p}\n"));
        }
        write(
            sys,
            &format!("class/drm/card{n}-DP-1/status"),
            "connected\n",
        );
    }

    /// An Intel iGPU as card N (not a compute GPU we report).
    pub fn intel_card(sys: &Path, n: u32) {
        write(sys, &format!("class/drm/card{n}/device/vendor"), "0x8086\n");
    }

    /// An NVIDIA card as the proprietary driver lists it in procfs.
    pub fn nvidia_procfs(proc: &Path, bus: &str, model: &str) {
        write(
            proc,
            &format!("driver/nvidia/gpus/{bus}/information"),
            &format!("Model: \t\t {model}\nIRQ:   \t\t 130\nGPU UUID: \t GPU-1234\n"),
        );
    }
}

#[cfg(test)]
mod tests;
