//! NVIDIA GPUs through NVML (nvml-wrapper; the library is loaded at run
//! time, and a machine without the driver simply has none). Behind
//! [`NvidiaDriver`], so the probe and the health rules are tested with
//! recorded values on machines without a GPU.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use nvml_wrapper::bitmasks::device::ThrottleReasons;
use nvml_wrapper::bitmasks::event::EventTypes;
use nvml_wrapper::enum_wrappers::device::{
    EccCounter, MemoryError, TemperatureSensor, TemperatureThreshold,
};
use nvml_wrapper::enums::event::XidError;
use nvml_wrapper::Nvml;
use schemas::{Gpu, MigInstance};
use tracing::{debug, warn};

use super::health::Reading;
use super::{round1, GIB};

/// What the agent asks of NVIDIA's driver.
pub trait NvidiaDriver: Send + std::fmt::Debug {
    /// The GPUs, in NVML index order, with the facts the driver gives.
    fn gpus(&mut self) -> Vec<Gpu>;
    /// What GPU `index` (NVML's) reports now.
    fn read(&mut self, index: u32) -> Reading;
    /// The XID errors seen since the last call: (NVML index, XID).
    fn xids(&mut self) -> Vec<(u32, u64)>;
}

/// NVML, loaded once per process (its event set borrows it for as long as
/// the XID watcher runs).
fn nvml() -> Option<&'static Nvml> {
    static NVML: OnceLock<Option<Nvml>> = OnceLock::new();
    NVML.get_or_init(|| match Nvml::init() {
        Ok(nvml) => Some(nvml),
        Err(e) => {
            debug!(error = %e, "NVML not available: no NVIDIA driver, or not this machine");
            None
        }
    })
    .as_ref()
}

/// The real driver: NVML, and a thread that waits for XID events.
#[derive(Debug)]
pub struct NvmlDriver {
    nvml: &'static Nvml,
    xids: Arc<Mutex<Vec<(u32, u64)>>>,
    stop: Arc<AtomicBool>,
}

/// The NVML driver, if the machine has one.
pub fn load() -> Option<Box<dyn NvidiaDriver>> {
    let nvml = nvml()?;
    let xids = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(AtomicBool::new(false));
    watch_xids(nvml, xids.clone(), stop.clone());
    Some(Box::new(NvmlDriver { nvml, xids, stop }))
}

impl Drop for NvmlDriver {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Most XIDs kept between two samples (a storm is still a few).
const MAX_PENDING_XIDS: usize = 1024;

/// Waits for critical XID events on every GPU in a thread of its own (the
/// event set is not `Send`), until `stop`.
fn watch_xids(nvml: &'static Nvml, xids: Arc<Mutex<Vec<(u32, u64)>>>, stop: Arc<AtomicBool>) {
    let spawned = std::thread::Builder::new()
        .name("nvml-xid".to_owned())
        .spawn(move || {
            let Ok(mut set) = nvml.create_event_set() else {
                debug!("NVML event sets are not supported here: no XID events");
                return;
            };
            let count = nvml.device_count().unwrap_or(0);
            let mut by_uuid = HashMap::new();
            for index in 0..count {
                let Ok(device) = nvml.device_by_index(index) else {
                    continue;
                };
                if let Ok(uuid) = device.uuid() {
                    by_uuid.insert(uuid, index);
                }
                set = match device.register_events(EventTypes::CRITICAL_XID_ERROR, set) {
                    Ok(set) => set,
                    Err(e) => {
                        debug!(index, error = %e, "XID events not available for this GPU");
                        match nvml.create_event_set() {
                            Ok(set) => set,
                            Err(_) => return,
                        }
                    }
                };
            }
            while !stop.load(Ordering::Relaxed) {
                match set.wait(1000) {
                    Ok(event) => {
                        let index = event
                            .device
                            .uuid()
                            .ok()
                            .and_then(|uuid| by_uuid.get(&uuid).copied());
                        let xid = match event.event_data {
                            Some(XidError::Value(xid)) => xid,
                            _ => continue,
                        };
                        warn!(gpu = ?index, xid, "NVIDIA XID error");
                        if let Some(index) = index {
                            let mut pending = xids.lock().unwrap_or_else(|p| p.into_inner());
                            if pending.len() < MAX_PENDING_XIDS {
                                pending.push((index, xid));
                            }
                        }
                    }
                    Err(nvml_wrapper::error::NvmlError::Timeout) => {}
                    Err(e) => {
                        debug!(error = %e, "waiting for XID events");
                        std::thread::sleep(Duration::from_secs(5));
                    }
                }
            }
        });
    if let Err(e) = spawned {
        warn!(error = %e, "cannot start the XID watcher");
    }
}

impl NvidiaDriver for NvmlDriver {
    fn gpus(&mut self) -> Vec<Gpu> {
        let nvml = self.nvml;
        let driver_version = nvml.sys_driver_version().ok();
        let cuda_version = nvml.sys_cuda_driver_version().ok().map(|v| {
            format!(
                "{}.{}",
                nvml_wrapper::cuda_driver_version_major(v),
                nvml_wrapper::cuda_driver_version_minor(v)
            )
        });
        let count = nvml.device_count().unwrap_or(0);
        (0..count)
            .filter_map(|index| {
                let device = nvml.device_by_index(index).ok()?;
                let vram = device.memory_info().map(|m| m.total).unwrap_or(0);
                let mig = device.mig_mode().ok();
                let mig_enabled = mig.as_ref().is_some_and(|m| m.current == 1);
                let mig_instances = if mig_enabled {
                    let n = device.mig_device_count().unwrap_or(0);
                    (0..n)
                        .filter_map(|i| {
                            let instance = device.mig_device_by_index(i).ok()?;
                            let name = instance.name().unwrap_or_default();
                            Some(MigInstance {
                                uuid: instance.uuid().unwrap_or_default(),
                                // "NVIDIA A100-SXM4-40GB MIG 1g.5gb": the profile is last.
                                profile: name.rsplit(' ').next().unwrap_or_default().to_owned(),
                                memory_gb: round1(
                                    instance.memory_info().map(|m| m.total).unwrap_or(0) as f64
                                        / GIB,
                                ),
                            })
                        })
                        .collect()
                } else {
                    Vec::new()
                };
                Some(Gpu {
                    vendor: "nvidia".into(),
                    model: device.name().unwrap_or_else(|_| "NVIDIA GPU".to_owned()),
                    vram_gb: round1(vram as f64 / GIB),
                    index: Some(index),
                    uuid: device.uuid().ok(),
                    pci_bus_id: device.pci_info().ok().map(|p| p.bus_id),
                    driver_version: driver_version.clone(),
                    cuda_version: cuda_version.clone(),
                    compute_capability: device
                        .cuda_compute_capability()
                        .ok()
                        .map(|c| format!("{}.{}", c.major, c.minor)),
                    architecture: device
                        .architecture()
                        .ok()
                        .map(|a| format!("{a:?}").to_lowercase()),
                    mig_mode: mig.map(|m| {
                        if m.current == 1 {
                            "enabled"
                        } else {
                            "disabled"
                        }
                        .to_owned()
                    }),
                    mig_instances,
                    ..Gpu::default()
                })
            })
            .collect()
    }

    fn read(&mut self, index: u32) -> Reading {
        let Ok(device) = self.nvml.device_by_index(index) else {
            return Reading::default();
        };
        let celsius = |t: u32| f64::from(t);
        let watts = |mw: u32| round1(f64::from(mw) / 1000.0);
        Reading {
            util_pct: device
                .utilization_rates()
                .ok()
                .map(|u| f64::from(u.gpu).clamp(0.0, 100.0)),
            vram_used_gb: device
                .memory_info()
                .ok()
                .map(|m| round1(m.used as f64 / GIB)),
            temperature_c: device.temperature(TemperatureSensor::Gpu).ok().map(celsius),
            slowdown_c: device
                .temperature_threshold(TemperatureThreshold::Slowdown)
                .ok()
                .map(celsius),
            shutdown_c: device
                .temperature_threshold(TemperatureThreshold::Shutdown)
                .ok()
                .map(celsius),
            power_w: device.power_usage().ok().map(watts),
            power_limit_w: device.enforced_power_limit().ok().map(watts),
            ecc_corrected: device
                .total_ecc_errors(MemoryError::Corrected, EccCounter::Volatile)
                .ok(),
            ecc_uncorrected: device
                .total_ecc_errors(MemoryError::Uncorrected, EccCounter::Volatile)
                .ok(),
            throttle: device
                .current_throttle_reasons()
                .map(throttle_names)
                .unwrap_or_default(),
        }
    }

    fn xids(&mut self) -> Vec<(u32, u64)> {
        std::mem::take(&mut *self.xids.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

/// NVML's throttle reasons as the names heartbeats carry.
fn throttle_names(reasons: ThrottleReasons) -> Vec<String> {
    [
        (ThrottleReasons::GPU_IDLE, "gpu_idle"),
        (
            ThrottleReasons::APPLICATIONS_CLOCKS_SETTING,
            "applications_clocks",
        ),
        (ThrottleReasons::SW_POWER_CAP, "sw_power_cap"),
        (ThrottleReasons::HW_SLOWDOWN, "hw_slowdown"),
        (ThrottleReasons::SYNC_BOOST, "sync_boost"),
        (ThrottleReasons::SW_THERMAL_SLOWDOWN, "sw_thermal"),
        (ThrottleReasons::HW_THERMAL_SLOWDOWN, "hw_thermal"),
        (ThrottleReasons::HW_POWER_BRAKE_SLOWDOWN, "hw_power_brake"),
        (ThrottleReasons::DISPLAY_CLOCK_SETTING, "display_clocks"),
    ]
    .into_iter()
    .filter(|(flag, _)| reasons.contains(*flag))
    .map(|(_, name)| name.to_owned())
    .collect()
}

/// A recorded driver for tests: fixed GPUs, readings set by the test.
#[cfg(test)]
#[derive(Debug, Default, Clone)]
pub struct Recorded {
    /// The GPUs it lists.
    pub gpus: Vec<Gpu>,
    /// The reading of each, by index.
    pub readings: Arc<Mutex<HashMap<u32, Reading>>>,
    /// XIDs to hand out at the next call.
    pub xids: Arc<Mutex<Vec<(u32, u64)>>>,
}

#[cfg(test)]
impl NvidiaDriver for Recorded {
    fn gpus(&mut self) -> Vec<Gpu> {
        self.gpus.clone()
    }

    fn read(&mut self, index: u32) -> Reading {
        self.readings
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&index)
            .cloned()
            .unwrap_or_default()
    }

    fn xids(&mut self) -> Vec<(u32, u64)> {
        std::mem::take(&mut *self.xids.lock().unwrap_or_else(|p| p.into_inner()))
    }
}
