//! GPUs: NVIDIA through NVML (loaded at run time; [`nvidia`]), AMD from
//! sysfs ([`amd`]), Apple Silicon on macOS. Each source is optional; none
//! is fatal. Every GPU gets its facts at detection and, with each sample,
//! its figures and a health verdict ([`health`]); [`labels`] turns the
//! facts into the labels GPU feature discovery would set.
//!
//! sysfs and procfs are read below configurable roots, so tests feed fixture
//! trees (an AMD-only box, a multi-GPU box, a box with no GPU), and NVML is
//! behind a trait that tests replace with recorded values.

pub mod health;
pub mod labels;
pub mod nvidia;

mod amd;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use schemas::{Gpu, GpuUsage};

use health::Judge;
use nvidia::NvidiaDriver;

/// Bytes in a GiB.
const GIB: f64 = 1024.0 * 1024.0 * 1024.0;

fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

/// Where a detected GPU's figures are read from.
#[derive(Debug, Clone, PartialEq)]
enum Source {
    /// NVML device index.
    Nvml(u32),
    /// NVIDIA seen through procfs only (no NVML): no figures.
    NvidiaProcfs,
    /// An AMD card's sysfs `device` directory.
    AmdSysfs(PathBuf),
    /// Apple Silicon: figures are not exposed without private APIs.
    Apple,
}

/// One GPU found: where to read it, and the key its health history is
/// kept under (its uuid, else its position).
#[derive(Debug, Clone, PartialEq)]
struct Found {
    source: Source,
    key: String,
}

/// XIDs seen on one GPU since the agent started.
#[derive(Debug, Clone, Copy, Default)]
struct Xids {
    last: u32,
    count: u64,
}

/// Finds GPUs, reads their figures and judges their health.
#[derive(Debug)]
pub struct GpuProbe {
    sysfs_root: PathBuf,
    procfs_root: PathBuf,
    nvidia: Option<Box<dyn NvidiaDriver>>,
    found: Vec<Found>,
    judge: Judge,
    xids: HashMap<String, Xids>,
}

impl GpuProbe {
    /// A probe reading sysfs and procfs below the given roots; `use_nvml`
    /// loads the NVIDIA library if the machine has it.
    pub fn new(sysfs_root: &Path, procfs_root: &Path, use_nvml: bool) -> Self {
        let nvidia = if use_nvml { nvidia::load() } else { None };
        Self::with_nvidia(sysfs_root, procfs_root, nvidia)
    }

    /// A probe with this NVIDIA driver (tests give a recorded one).
    pub fn with_nvidia(
        sysfs_root: &Path,
        procfs_root: &Path,
        nvidia: Option<Box<dyn NvidiaDriver>>,
    ) -> Self {
        Self {
            sysfs_root: sysfs_root.to_owned(),
            procfs_root: procfs_root.to_owned(),
            nvidia,
            found: Vec::new(),
            judge: Judge::default(),
            xids: HashMap::new(),
        }
    }

    /// Detects the GPUs (NVIDIA, then AMD, then Apple), remembering where
    /// to read their figures. `total_ram_gb` is Apple Silicon's unified
    /// memory. Each GPU's `index` is its position in the list.
    pub fn detect(&mut self, total_ram_gb: f64) -> Vec<Gpu> {
        let mut gpus = Vec::new();
        let mut sources = Vec::new();
        let from_nvml = self.nvidia.as_mut().map(|n| n.gpus()).unwrap_or_default();
        if from_nvml.is_empty() {
            for model in nvidia_procfs_models(&self.procfs_root) {
                gpus.push(Gpu {
                    vendor: "nvidia".into(),
                    model,
                    // NOTE: procfs does not say how much memory a card has;
                    // 0 means unknown (a VRAM bound never matches it).
                    vram_gb: 0.0,
                    ..Gpu::default()
                });
                sources.push(Source::NvidiaProcfs);
            }
        } else {
            for (position, gpu) in from_nvml.into_iter().enumerate() {
                let index = gpu
                    .index
                    .unwrap_or_else(|| u32::try_from(position).unwrap_or(u32::MAX));
                gpus.push(gpu);
                sources.push(Source::Nvml(index));
            }
        }
        for (dir, gpu) in amd::gpus(&self.sysfs_root) {
            gpus.push(gpu);
            sources.push(Source::AmdSysfs(dir));
        }
        if let Some(gpu) = apple_gpu(total_ram_gb) {
            gpus.push(gpu);
            sources.push(Source::Apple);
        }
        self.found = gpus
            .iter_mut()
            .zip(sources)
            .enumerate()
            .map(|(position, (gpu, source))| {
                let position = u32::try_from(position).unwrap_or(u32::MAX);
                gpu.index = Some(position);
                let key = gpu
                    .uuid
                    .clone()
                    .filter(|u| !u.is_empty())
                    .unwrap_or_else(|| format!("#{position}"));
                Found { source, key }
            })
            .collect();
        gpus
    }

    /// Figures and health of the GPUs found by the last
    /// [`GpuProbe::detect`], in its order.
    pub fn usage(&mut self) -> Vec<GpuUsage> {
        self.take_xids();
        let now = Instant::now();
        let found = self.found.clone();
        found
            .iter()
            .enumerate()
            .map(|(i, found)| {
                let index = u32::try_from(i).unwrap_or(u32::MAX);
                let reading = match &found.source {
                    Source::Nvml(n) => self.nvidia.as_mut().map(|d| d.read(*n)),
                    Source::AmdSysfs(dir) => Some(amd::read(dir)),
                    Source::NvidiaProcfs | Source::Apple => None,
                };
                let Some(reading) = reading else {
                    return GpuUsage {
                        index,
                        ..GpuUsage::default()
                    };
                };
                let health = self.judge.judge(&found.key, &reading, now);
                let xids = self.xids.get(&found.key).copied();
                GpuUsage {
                    index,
                    util_pct: reading.util_pct,
                    vram_used_gb: reading.vram_used_gb,
                    temperature_c: reading.temperature_c,
                    power_w: reading.power_w,
                    power_limit_w: reading.power_limit_w,
                    ecc_corrected: reading.ecc_corrected,
                    ecc_uncorrected: reading.ecc_uncorrected,
                    xid_last: xids.map(|x| x.last),
                    xid_count: xids.map(|x| x.count),
                    throttle: reading.throttle,
                    health: Some(health),
                }
            })
            .collect()
    }

    /// Takes the XIDs the driver saw since the last sample.
    fn take_xids(&mut self) {
        let Some(driver) = self.nvidia.as_mut() else {
            return;
        };
        for (nvml_index, xid) in driver.xids() {
            let Some(found) = self
                .found
                .iter()
                .find(|f| f.source == Source::Nvml(nvml_index))
            else {
                continue;
            };
            self.judge.xid(&found.key, xid);
            let seen = self.xids.entry(found.key.clone()).or_default();
            seen.last = u32::try_from(xid).unwrap_or(u32::MAX);
            seen.count += 1;
        }
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
        unified_memory: Some(true),
        ..Gpu::default()
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

    /// An AMD card N with 16 GiB, 37 % busy, 4 GiB used, at 45 °C (slowdown
    /// 100, shutdown 105), drawing 120 W of 300, no RAS errors.
    pub fn amd_card(sys: &Path, n: u32, product: Option<&str>) {
        let dev = format!("class/drm/card{n}/device");
        write(sys, &format!("{dev}/vendor"), "0x1002\n");
        write(sys, &format!("{dev}/device"), "0x744c\n");
        write(sys, &format!("{dev}/mem_info_vram_total"), "17179869184\n");
        write(sys, &format!("{dev}/mem_info_vram_used"), "4294967296\n");
        write(sys, &format!("{dev}/gpu_busy_percent"), "37\n");
        write(
            sys,
            &format!("{dev}/unique_id"),
            &format!("a1b2c3d4e5f6000{n}\n"),
        );
        write(
            sys,
            &format!("{dev}/uevent"),
            &format!("DRIVER=amdgpu\nPCI_SLOT_NAME=0000:0{n}:00.0\n"),
        );
        let hwmon = format!("{dev}/hwmon/hwmon{}", n + 3);
        write(sys, &format!("{hwmon}/temp1_input"), "45000\n");
        write(sys, &format!("{hwmon}/temp1_crit"), "100000\n");
        write(sys, &format!("{hwmon}/temp1_emergency"), "105000\n");
        write(sys, &format!("{hwmon}/power1_average"), "120000000\n");
        write(sys, &format!("{hwmon}/power1_cap"), "300000000\n");
        write(sys, &format!("{dev}/ras/umc_err_count"), "ue: 0\nce: 0\n");
        write(sys, &format!("{dev}/ras/gfx_err_count"), "ue: 0\nce: 0\n");
        if let Some(p) = product {
            write(sys, &format!("{dev}/product_name"), &format!("{p}\n"));
        }
        write(
            sys,
            &format!("class/drm/card{n}-DP-1/status"),
            "connected\n",
        );
    }

    /// Sets card N's hwmon file `name` (milli-°C, µW) to `value`.
    pub fn amd_hwmon(sys: &Path, n: u32, name: &str, value: u64) {
        let hwmon = format!("class/drm/card{n}/device/hwmon/hwmon{}", n + 3);
        write(sys, &format!("{hwmon}/{name}"), &format!("{value}\n"));
    }

    /// Sets card N's RAS block `block` to `ue` uncorrectable and `ce`
    /// corrected errors.
    pub fn amd_ras(sys: &Path, n: u32, block: &str, ue: u64, ce: u64) {
        write(
            sys,
            &format!("class/drm/card{n}/device/ras/{block}_err_count"),
            &format!("ue: {ue}\nce: {ce}\n"),
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
