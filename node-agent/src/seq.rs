//! The agent's event sequence across runs: strictly rising, so the
//! registry can refuse a replayed event.

use tracing::warn;

/// The file holding the floor of the next run's event sequence.
const SEQ_FLOOR_FILE: &str = "seq_floor";
/// Sequence numbers one run may use before the next run's floor.
const SEQ_PER_RUN: u64 = 1_000_000_000;

/// Where this run's event sequence starts: above every earlier run's
/// (strictly rising across restarts, which the registry checks to refuse
/// replayed events), from the clock in microseconds or the floor the last
/// run left, whichever is higher; the next floor is stored now.
pub(crate) fn first_seq(state_dir: &std::path::Path) -> u64 {
    let path = state_dir.join(SEQ_FLOOR_FILE);
    let floor = std::fs::read_to_string(&path)
        .ok()
        .and_then(|t| t.trim().parse::<u64>().ok())
        .unwrap_or(0);
    let clock = u64::try_from(chrono::Utc::now().timestamp_micros()).unwrap_or(0);
    let first = floor.max(clock);
    if let Err(e) = std::fs::create_dir_all(state_dir)
        .and_then(|()| std::fs::write(&path, first.saturating_add(SEQ_PER_RUN).to_string()))
    {
        warn!(path = %path.display(), error = %e, "cannot store the sequence floor");
    }
    first
}
