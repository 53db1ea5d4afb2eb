//! `nodectl nodes | get | discover | watch | alerts | audit`: questions any
//! reader may ask.

use std::collections::{BTreeMap, HashSet};

use chrono::Utc;
use fleet_client::{parse_time_arg, AuditQuery, AuditSource, Client, SelectorChange};
use futures::StreamExt;
use nodectl::Error;
use schemas::DiscoverRequest;

use crate::args::{DiscoverArgs, FitArgs, Output};
use crate::print::{alert_line, json_line, json_pretty};

/// A time flag: a duration ago (`1h`) or an RFC 3339 time.
fn time_arg(text: &str) -> Result<chrono::DateTime<Utc>, Error> {
    parse_time_arg(text).map_err(Error::Invalid)
}

/// Every registry instance's health; an error (exit 1) when none is healthy.
pub async fn health(client: &Client, output: Output) -> Result<(), Error> {
    let replies = client.health().await?;
    match output {
        Output::Json => {
            for reply in &replies {
                println!("{}", json_line(reply)?);
            }
        }
        Output::Table => print!("{}", nodectl::table::health(&replies)),
    }
    let healthy = replies
        .iter()
        .filter(|r| r.status == schemas::status::HealthStatus::Healthy)
        .count();
    if healthy == 0 {
        return Err(Error::NotFound(format!(
            "no healthy registry instance ({} answered registry.health)",
            replies.len()
        )));
    }
    Ok(())
}

/// Every node the registry knows, of any status; or, with `reasons`,
/// what is out of service and why.
pub async fn nodes(client: &Client, output: Output, reasons: bool) -> Result<(), Error> {
    let request = DiscoverRequest {
        status: Some("any".into()),
        limit: Some(1000),
        ..DiscoverRequest::default()
    };
    let nodes = client.list_all(&request).await?;
    if reasons {
        let out = nodectl::reasons::reasons(&nodes);
        match output {
            Output::Json => {
                for reason in &out {
                    println!("{}", crate::print::json_line(reason)?);
                }
            }
            Output::Table => print!("{}", nodectl::reasons::table(&out, Utc::now())),
        }
        return Ok(());
    }
    match output {
        Output::Json => {
            let reply = schemas::DiscoverReply {
                total: nodes.len() as u64,
                nodes,
                ..schemas::DiscoverReply::default()
            };
            println!("{}", json_pretty(&reply)?)
        }
        Output::Table => print!("{}", nodectl::table::nodes(&nodes, Utc::now())),
    }
    Ok(())
}

/// One node's record.
pub async fn get(client: &Client, id: &str) -> Result<(), Error> {
    match client.get(id).await? {
        Some(record) => {
            println!("{}", json_pretty(&record)?);
            Ok(())
        }
        None => Err(Error::NotFound(format!("no node {id}"))),
    }
}

/// The nodes matching a query.
pub async fn discover(client: &Client, args: &DiscoverArgs) -> Result<(), Error> {
    let reply = client.discover(&args.request()?).await?;
    match args.output {
        Output::Json => println!("{}", json_pretty(&reply)?),
        Output::Table if !reply.latency_ms.is_empty() => {
            // Nearest first: where each node is attached, and how far.
            println!("{:<40} {:<20} {:>12}", "NODE", "NATS SERVER", "LATENCY");
            for (node, latency) in reply.nodes.iter().zip(&reply.latency_ms) {
                let server = node.nats.as_ref().map_or("-", |n| n.server.as_str());
                println!("{:<40} {:<20} {:>9.2} ms", node.node_id, server, latency);
            }
            println!("({} shown, {} matched)", reply.nodes.len(), reply.total);
        }
        Output::Table => {
            print!("{}", nodectl::table::nodes(&reply.nodes, Utc::now()));
            println!(
                "({} shown, {} matched, index revision {})",
                reply.nodes.len(),
                reply.total,
                reply.revision
            );
            if let Some(cursor) = &reply.next_cursor {
                println!("(more: --cursor {cursor})");
            }
        }
    }
    if !reply.unreachable.is_empty() && args.output != Output::Json {
        // A global view: these are the last records of a region cut off.
        println!(
            "(out of reach, last known: {})",
            reply.unreachable.join(", ")
        );
    }
    Ok(())
}

/// Where a model or an amount of VRAM fits now, best first.
pub async fn fit(client: &Client, args: &FitArgs) -> Result<(), Error> {
    let reply = client.discover(&args.request()).await?;
    match args.output {
        Output::Json => println!("{}", json_pretty(&reply)?),
        Output::Table => {
            println!(
                "{:<40} {:<10} {:>12} {:>14}",
                "NODE", "GPUS", "GiB/GPU", "FREE AFTER"
            );
            for placement in &reply.placements {
                let gpus: Vec<String> = placement.gpus.iter().map(u32::to_string).collect();
                println!(
                    "{:<40} {:<10} {:>12.1} {:>14.1}",
                    placement.node_id,
                    gpus.join(","),
                    placement.vram_per_gpu_gb,
                    placement.free_after_gb
                );
            }
            println!("({} shown, {} fit)", reply.placements.len(), reply.total);
        }
    }
    Ok(())
}

/// A live table of the nodes matching a selector; one line per change when
/// the output is not a terminal.
pub async fn watch(client: &Client, selector: String) -> Result<(), Error> {
    use std::io::IsTerminal;
    let mut changes = Box::pin(client.watch_selector(&selector).await?);
    let live_table = std::io::stdout().is_terminal();
    let mut shown: BTreeMap<String, schemas::NodeRecord> = BTreeMap::new();
    while let Some(change) = changes.next().await {
        let now = schemas::time::format(Utc::now());
        match change? {
            SelectorChange::Added(r) | SelectorChange::Changed(r) => {
                if !live_table {
                    println!("{now}  {:<8} {}  {}", "PUT", r.node_id, r.status);
                }
                shown.insert(r.node_id.clone(), *r);
            }
            SelectorChange::Removed(id) => {
                if !live_table {
                    println!("{now}  {:<8} {id}", "REMOVED");
                }
                shown.remove(&id);
            }
        }
        if live_table {
            let records: Vec<schemas::NodeRecord> = shown.values().cloned().collect();
            // Clear the screen and draw the table again.
            print!("\x1b[2J\x1b[H");
            println!(
                "nodectl watch {selector}    {now}    {} nodes\n",
                records.len()
            );
            print!("{}", nodectl::table::nodes(&records, Utc::now()));
        }
    }
    Ok(())
}

/// Alerts: live, or replayed since a time (then live with `follow`).
pub async fn alerts(
    client: &Client,
    since: Option<&str>,
    follow: bool,
    output: Output,
) -> Result<(), Error> {
    // Subscribe before replaying so nothing falls between the two, and
    // read the subscription all the time, the replay's included: one left
    // unread holds 64 Ki messages and drops the rest unsaid (a
    // registration wave of a large fleet is a million alerts).
    let live = if since.is_none() || follow {
        let live = client.follow_alerts().await?;
        let (arrived, received) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut live = Box::pin(live);
            while let Some(alert) = live.next().await {
                if arrived.send(alert).is_err() {
                    break;
                }
            }
        });
        Some(received)
    } else {
        None
    };
    let mut seen = HashSet::new();
    if let Some(since) = since {
        for alert in client.alerts(time_arg(since)?, None).await? {
            seen.insert(alert.id.clone());
            println!("{}", alert_line(&alert, output)?);
        }
    }
    if let Some(mut live) = live {
        while let Some(alert) = live.recv().await {
            if seen.remove(&alert.id) {
                continue;
            }
            println!("{}", alert_line(&alert, output)?);
        }
    }
    Ok(())
}

/// What happened to a node: its events merged with its alerts.
pub async fn audit(
    client: &Client,
    node: Option<String>,
    since: &str,
    until: Option<&str>,
    types: Vec<String>,
    output: Output,
) -> Result<(), Error> {
    let query = AuditQuery {
        node_id: node,
        since: Some(time_arg(since)?),
        until: until.map(time_arg).transpose()?,
        types,
    };
    let entries = client.audit(&query).await?;
    for entry in &entries {
        match output {
            Output::Json => println!("{}", json_line(entry)?),
            Output::Table => {
                let source = match entry.source {
                    AuditSource::Event => "event",
                    AuditSource::Alert => "ALERT",
                };
                let note = entry
                    .detail
                    .get("message")
                    .or_else(|| entry.detail.get("reason"))
                    .and_then(|v| v.as_str())
                    .map(str::to_owned)
                    .or_else(|| {
                        entry
                            .detail
                            .get("metrics")
                            .and_then(|m| m.get("cpu_pct"))
                            .and_then(|v| v.as_f64())
                            .map(|c| format!("cpu {c:.1}%"))
                    })
                    .unwrap_or_default();
                println!(
                    "{}  {source:<5}  {:<20}  {:<28}  {note}",
                    schemas::time::format(entry.at),
                    entry.kind,
                    entry.node_id
                );
            }
        }
    }
    if output == Output::Table {
        println!("({} entries)", entries.len());
    }
    Ok(())
}
