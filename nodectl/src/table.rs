//! Plain-text tables for people.

use chrono::{DateTime, Utc};
use schemas::NodeRecord;

/// Renders rows as left-aligned columns separated by two spaces.
pub fn render(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(cell.chars().count());
            }
        }
    }
    let mut out = String::new();
    let line = |cells: Vec<&str>, out: &mut String| {
        let mut text = String::new();
        for (i, cell) in cells.iter().enumerate() {
            if i > 0 {
                text.push_str("  ");
            }
            let pad = widths
                .get(i)
                .copied()
                .unwrap_or(0)
                .saturating_sub(cell.chars().count());
            text.push_str(cell);
            text.push_str(&" ".repeat(pad));
        }
        out.push_str(text.trim_end());
        out.push('\n');
    };
    line(header.to_vec(), &mut out);
    for row in rows {
        line(row.iter().map(String::as_str).collect(), &mut out);
    }
    out
}

/// Age of an RFC 3339 time, as `12s`, `5m`, `3h`, `2d`; `-` when unknown.
pub fn age(time: &str, now: DateTime<Utc>) -> String {
    let Some(t) = schemas::time::parse(time) else {
        return "-".to_owned();
    };
    let s = now.signed_duration_since(t).num_seconds().max(0);
    match s {
        0..=119 => format!("{s}s"),
        120..=7199 => format!("{}m", s / 60),
        7200..=172_799 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86_400),
    }
}

/// The `nodes` table: id, name, role, status, last heartbeat age, cpu %,
/// ram, gpus, models.
pub fn nodes(records: &[NodeRecord], now: DateTime<Utc>) -> String {
    let header = [
        "ID",
        "NAME",
        "ROLE",
        "STATUS",
        "LAST SEEN",
        "CPU%",
        "RAM",
        "GPUS",
        "MODELS",
    ];
    let rows: Vec<Vec<String>> = records
        .iter()
        .map(|r| {
            let caps = r.capabilities.as_ref();
            let cpu = r
                .metrics
                .as_ref()
                .and_then(|m| m.cpu_pct)
                .map_or("-".to_owned(), |c| format!("{c:.1}"));
            let ram = caps.map_or("-".to_owned(), |c| format!("{:.0}G", c.ram_gb));
            let gpus = caps.map_or(String::new(), |c| {
                c.gpus
                    .iter()
                    .map(|g| format!("{} {:.0}G", g.model, g.vram_gb))
                    .collect::<Vec<_>>()
                    .join(", ")
            });
            let models = caps.map_or(String::new(), |c| c.models.join(","));
            vec![
                r.node_id.clone(),
                r.node_name.clone().unwrap_or_default(),
                r.role.clone().unwrap_or_default(),
                r.status.clone(),
                age(&r.last_heartbeat, now),
                cpu,
                ram,
                if gpus.is_empty() { "-".into() } else { gpus },
                if models.is_empty() {
                    "-".into()
                } else {
                    models
                },
            ]
        })
        .collect();
    render(&header, &rows)
}

/// What an instance does: `leader`, `standby`, the partitions it leads
/// (`leader of 0,2/4`), or `view` with the regions out of its reach.
fn role(r: &schemas::health::HealthReply) -> String {
    if let Some(regions) = &r.regions {
        let cut: Vec<&str> = regions
            .iter()
            .filter(|(_, how)| *how != "reachable")
            .map(|(region, _)| region.as_str())
            .collect();
        return if cut.is_empty() {
            "view".to_owned()
        } else {
            format!("view (cut off: {})", cut.join(","))
        };
    }
    match (&r.partitions, r.partition_count) {
        (Some(led), Some(count)) if !led.is_empty() => {
            let led: Vec<String> = led.iter().map(u32::to_string).collect();
            format!("leader of {}/{count}", led.join(","))
        }
        _ if r.leader => "leader".to_owned(),
        _ => "standby".to_owned(),
    }
}

/// The instances' health as a table.
pub fn health(replies: &[schemas::health::HealthReply]) -> String {
    let dep = |r: &schemas::health::HealthReply, k: &str| {
        r.dependencies
            .get(k)
            .cloned()
            .unwrap_or_else(|| "-".to_owned())
    };
    let rows: Vec<Vec<String>> = replies
        .iter()
        .map(|r| {
            vec![
                r.instance.clone(),
                r.status.to_string(),
                role(r),
                r.backlog.map_or_else(|| "-".to_owned(), |b| b.to_string()),
                format!("{}s", r.uptime_s),
                dep(r, "nats"),
                dep(r, "jetstream"),
                dep(r, "kv"),
                dep(r, "event_stream"),
                r.self_preservation
                    .as_ref()
                    .map_or_else(|| "-".to_owned(), |v| v.to_string()),
                r.version.clone(),
            ]
        })
        .collect();
    render(
        &[
            "INSTANCE",
            "STATUS",
            "ROLE",
            "BACKLOG",
            "UPTIME",
            "NATS",
            "JETSTREAM",
            "KV",
            "EVENTS",
            "HELD",
            "VERSION",
        ],
        &rows,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_align() {
        let text = render(&["A", "BB"], &[vec!["xxx".into(), "y".into()]]);
        assert_eq!(text, "A    BB\nxxx  y\n");
    }

    #[test]
    fn ages_read_naturally() {
        let now = schemas::time::parse("2026-11-22T10:00:00Z").expect("time");
        assert_eq!(age("2026-11-22T09:59:30Z", now), "30s");
        assert_eq!(age("2026-11-22T09:00:00Z", now), "60m");
        assert_eq!(age("2026-11-20T10:00:00Z", now), "2d");
        assert_eq!(age("", now), "-");
    }
}
