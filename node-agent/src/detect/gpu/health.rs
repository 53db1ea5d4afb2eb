//! The health rules: what the driver's figures say about a GPU, as
//! `healthy`, `warning` or `failed` with reasons. Pure: fed readings and the
//! time, so every rule is tested with recorded values.
//!
//! | verdict | reason | when |
//! |---|---|---|
//! | failed | `ecc_uncorrected` | any uncorrectable ECC (or RAS) error since the driver loaded |
//! | failed | `xid_<n>` | an XID of the "reset or replace" kinds ([`FATAL_XIDS`]) since the agent started |
//! | failed | `temperature_shutdown` | at or above the GPU's shutdown temperature |
//! | warning | `ecc_corrected_burst` | [`ECC_BURST`] or more corrected errors within [`ECC_BURST_WINDOW`] |
//! | warning | `throttle_thermal` | clocks held back for heat (software or hardware) |
//! | warning | `throttle_power` | the hardware power brake is on (not the normal power cap) |
//! | warning | `temperature_high` | at or above its slowdown temperature (or [`HOT_C`] when it does not say) |
//!
//! A fatal XID stays until the agent restarts: those errors need a GPU reset
//! or a replacement, which comes with a driver reload and an agent restart.
//! Every other verdict follows the figures; the registry keeps a failed GPU
//! out of service until it has been healthy for its recovery time.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use schemas::GpuHealth;

/// XIDs after which NVIDIA's guidance is to reset the GPU or replace it:
/// 48 (double-bit ECC), 63/64 (row remapping pending or failed), 74 (NVLink),
/// 79 (fallen off the bus), 94/95 (contained/uncontained ECC).
pub const FATAL_XIDS: &[u64] = &[48, 63, 64, 74, 79, 94, 95];
/// Corrected ECC errors within [`ECC_BURST_WINDOW`] that make a burst.
pub const ECC_BURST: u64 = 10;
/// The window of an ECC burst.
pub const ECC_BURST_WINDOW: Duration = Duration::from_secs(60);
/// A temperature that is high when the GPU names no slowdown temperature.
pub const HOT_C: f64 = 90.0;

/// What one GPU reports now, whatever its vendor.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Reading {
    /// Utilisation, percent.
    pub util_pct: Option<f64>,
    /// VRAM in use, GiB.
    pub vram_used_gb: Option<f64>,
    /// Core temperature, °C.
    pub temperature_c: Option<f64>,
    /// Where the GPU slows itself down for heat, °C.
    pub slowdown_c: Option<f64>,
    /// Where the GPU shuts down for heat, °C.
    pub shutdown_c: Option<f64>,
    /// Power draw, W.
    pub power_w: Option<f64>,
    /// Enforced power limit, W.
    pub power_limit_w: Option<f64>,
    /// Corrected ECC errors since the driver loaded.
    pub ecc_corrected: Option<u64>,
    /// Uncorrectable ECC errors since the driver loaded.
    pub ecc_uncorrected: Option<u64>,
    /// Active throttle reasons (`sw_power_cap`, `hw_slowdown`, ...).
    pub throttle: Vec<String>,
}

/// Throttle reasons that mean heat.
const THERMAL: &[&str] = &["sw_thermal", "hw_thermal", "hw_slowdown"];
/// Throttle reasons that mean the power supply is in trouble.
const POWER: &[&str] = &["hw_power_brake"];

/// The memory the rules need between readings, per GPU (by uuid or index).
#[derive(Debug, Default)]
pub struct Judge {
    corrected: HashMap<String, VecDeque<(Instant, u64)>>,
    fatal_xids: HashMap<String, u64>,
}

impl Judge {
    /// Takes an XID seen on GPU `key`.
    pub fn xid(&mut self, key: &str, xid: u64) {
        if FATAL_XIDS.contains(&xid) {
            self.fatal_xids.insert(key.to_owned(), xid);
        }
    }

    /// The verdict on GPU `key` reading `reading` at `now`.
    pub fn judge(&mut self, key: &str, reading: &Reading, now: Instant) -> GpuHealth {
        let mut failed = Vec::new();
        let mut warning = Vec::new();
        if reading.ecc_uncorrected.is_some_and(|n| n > 0) {
            failed.push("ecc_uncorrected".to_owned());
        }
        if let Some(xid) = self.fatal_xids.get(key) {
            failed.push(format!("xid_{xid}"));
        }
        if let Some(t) = reading.temperature_c {
            if reading.shutdown_c.is_some_and(|limit| t >= limit) {
                failed.push("temperature_shutdown".to_owned());
            } else if t >= reading.slowdown_c.unwrap_or(HOT_C) {
                warning.push("temperature_high".to_owned());
            }
        }
        if let Some(count) = reading.ecc_corrected {
            if self.corrected_burst(key, count, now) {
                warning.push("ecc_corrected_burst".to_owned());
            }
        }
        let has = |set: &[&str]| reading.throttle.iter().any(|r| set.contains(&r.as_str()));
        if has(THERMAL) {
            warning.push("throttle_thermal".to_owned());
        }
        if has(POWER) {
            warning.push("throttle_power".to_owned());
        }
        let state = if !failed.is_empty() {
            "failed"
        } else if !warning.is_empty() {
            "warning"
        } else {
            "healthy"
        };
        failed.extend(warning);
        GpuHealth {
            state: state.to_owned(),
            reasons: failed,
        }
    }

    /// Whether `count` is at least [`ECC_BURST`] above the count of the
    /// oldest reading within the window.
    fn corrected_burst(&mut self, key: &str, count: u64, now: Instant) -> bool {
        let history = self.corrected.entry(key.to_owned()).or_default();
        // A lower count: the driver reloaded and its counters restarted.
        if history.back().is_some_and(|(_, last)| count < *last) {
            history.clear();
        }
        history.push_back((now, count));
        while history
            .front()
            .is_some_and(|(at, _)| now.duration_since(*at) > ECC_BURST_WINDOW)
        {
            history.pop_front();
        }
        history
            .front()
            .is_some_and(|(_, first)| count.saturating_sub(*first) >= ECC_BURST)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn verdict(health: &GpuHealth) -> (&str, Vec<&str>) {
        (
            health.state.as_str(),
            health.reasons.iter().map(String::as_str).collect(),
        )
    }

    #[test]
    fn a_quiet_gpu_is_healthy() {
        let mut judge = Judge::default();
        let reading = Reading {
            temperature_c: Some(55.0),
            slowdown_c: Some(87.0),
            shutdown_c: Some(92.0),
            ecc_corrected: Some(3),
            ecc_uncorrected: Some(0),
            throttle: vec!["sw_power_cap".into(), "gpu_idle".into()],
            ..Reading::default()
        };
        let health = judge.judge("g0", &reading, Instant::now());
        assert_eq!(verdict(&health), ("healthy", vec![]));
    }

    #[test]
    fn uncorrectable_ecc_fails_and_clears_with_the_counter() {
        let mut judge = Judge::default();
        let now = Instant::now();
        let bad = Reading {
            ecc_uncorrected: Some(1),
            ..Reading::default()
        };
        assert_eq!(
            verdict(&judge.judge("g0", &bad, now)),
            ("failed", vec!["ecc_uncorrected"])
        );
        // After a reset the volatile counter is back at zero.
        let reset = Reading {
            ecc_uncorrected: Some(0),
            ..Reading::default()
        };
        assert_eq!(verdict(&judge.judge("g0", &reset, now)).0, "healthy");
    }

    #[test]
    fn fatal_xids_fail_the_gpu_they_hit_and_stay() {
        let mut judge = Judge::default();
        let now = Instant::now();
        judge.xid("g1", 13); // a graphics engine exception: the application's
        judge.xid("g0", 79);
        let quiet = Reading::default();
        assert_eq!(
            verdict(&judge.judge("g0", &quiet, now)),
            ("failed", vec!["xid_79"])
        );
        assert_eq!(verdict(&judge.judge("g1", &quiet, now)).0, "healthy");
        assert_eq!(
            verdict(&judge.judge("g0", &quiet, now + Duration::from_secs(3600))).0,
            "failed"
        );
        for xid in FATAL_XIDS {
            let mut judge = Judge::default();
            judge.xid("g", *xid);
            assert_eq!(judge.judge("g", &quiet, now).state, "failed", "xid {xid}");
        }
    }

    #[test]
    fn temperature_against_the_gpus_own_limits() {
        let mut judge = Judge::default();
        let now = Instant::now();
        let at = |t: f64, slowdown: Option<f64>, shutdown: Option<f64>| Reading {
            temperature_c: Some(t),
            slowdown_c: slowdown,
            shutdown_c: shutdown,
            ..Reading::default()
        };
        assert_eq!(
            verdict(&judge.judge("g", &at(95.0, Some(90.0), Some(95.0)), now)),
            ("failed", vec!["temperature_shutdown"])
        );
        assert_eq!(
            verdict(&judge.judge("g", &at(91.0, Some(90.0), Some(95.0)), now)),
            ("warning", vec!["temperature_high"])
        );
        assert_eq!(
            verdict(&judge.judge("g", &at(89.0, Some(90.0), None), now)).0,
            "healthy"
        );
        // No limits known: 90 °C is high, nothing is a shutdown.
        assert_eq!(
            verdict(&judge.judge("g", &at(90.0, None, None), now)).0,
            "warning"
        );
        assert_eq!(
            verdict(&judge.judge("g", &at(120.0, None, None), now)).0,
            "warning"
        );
        assert_eq!(
            verdict(&judge.judge("g", &at(80.0, None, None), now)).0,
            "healthy"
        );
    }

    #[test]
    fn a_burst_of_corrected_errors_warns_and_passes() {
        let mut judge = Judge::default();
        let t0 = Instant::now();
        let corrected = |n: u64| Reading {
            ecc_corrected: Some(n),
            ..Reading::default()
        };
        assert_eq!(judge.judge("g", &corrected(100), t0).state, "healthy");
        // A trickle: 5 a minute.
        assert_eq!(
            judge
                .judge("g", &corrected(105), t0 + Duration::from_secs(30))
                .state,
            "healthy"
        );
        // A burst: 12 more within the window.
        assert_eq!(
            verdict(&judge.judge("g", &corrected(117), t0 + Duration::from_secs(50))),
            ("warning", vec!["ecc_corrected_burst"])
        );
        // A quiet minute later the burst has left the window.
        assert_eq!(
            judge
                .judge("g", &corrected(117), t0 + Duration::from_secs(115))
                .state,
            "healthy"
        );
        // A driver reload restarts the counter: no false burst.
        assert_eq!(
            judge
                .judge("g", &corrected(0), t0 + Duration::from_secs(120))
                .state,
            "healthy"
        );
    }

    #[test]
    fn thermal_and_power_brake_throttling_warn_the_power_cap_does_not() {
        let mut judge = Judge::default();
        let now = Instant::now();
        let throttled = |reasons: &[&str]| Reading {
            throttle: reasons.iter().map(|r| (*r).to_owned()).collect(),
            ..Reading::default()
        };
        assert_eq!(
            verdict(&judge.judge("g", &throttled(&["hw_slowdown", "hw_power_brake"]), now)),
            ("warning", vec!["throttle_thermal", "throttle_power"])
        );
        assert_eq!(
            judge.judge("g", &throttled(&["sw_power_cap"]), now).state,
            "healthy"
        );
    }

    #[test]
    fn failures_come_first_then_warnings() {
        let mut judge = Judge::default();
        let reading = Reading {
            ecc_uncorrected: Some(2),
            temperature_c: Some(91.0),
            throttle: vec!["sw_thermal".into()],
            ..Reading::default()
        };
        assert_eq!(
            verdict(&judge.judge("g", &reading, Instant::now())),
            (
                "failed",
                vec!["ecc_uncorrected", "temperature_high", "throttle_thermal"]
            )
        );
    }
}
