//! `near`: ranking by estimated round trip from the requester, in the way of
//! Consul's `?near=`, over where nodes are attached to NATS.
//!
//! A node's agent reports the server it is connected to (name, cluster,
//! JetStream domain) and its round trip to it. The requester is placed the
//! same way (its own connection, for `near: "me"`), or named (a server, a
//! cluster, a domain or a `region` label). Nodes are ranked by tier — on the
//! requester's server, in its cluster, in its domain or region, elsewhere —
//! and within a tier by their measured round trip to their server. The
//! estimate each reply carries is the two round trips to the servers plus
//! a hop per tier ([`HOP_MS`]): a topology guess, not a measurement of the
//! path between the servers.

use roaring::RoaringBitmap;
use schemas::{NatsLink, NodeRecord};

use super::{field, FitNeed, QueryError};
use crate::catalog::Catalog;

/// The label that names a node's region.
const REGION_LABEL: &str = "region";

/// Added to the estimate per tier: same server, same cluster (a route
/// between servers), same domain or region (a leaf connection), elsewhere.
pub const HOP_MS: [f64; 4] = [0.0, 1.0, 10.0, 50.0];

/// A node's round trip to its server when it did not report one.
const UNKNOWN_RTT_MS: f64 = 1.0;

/// Where a `near` query ranks from, as asked.
#[derive(Debug, Clone, PartialEq)]
pub enum Near {
    /// The requester's own server (`near: "me"` with `requester`).
    Me(NatsLink),
    /// A NATS server, cluster or domain, or a `region` label, by name.
    Named(String),
}

/// The requester's place, resolved against what nodes report.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Origin {
    server: Option<String>,
    cluster: Option<String>,
    domain: Option<String>,
    region: Option<String>,
    /// The requester's own round trip to its server.
    rtt_ms: f64,
}

impl Near {
    /// Places the requester: a name is a server when a node is attached to
    /// it, else a cluster, else a domain, else a region label.
    pub fn origin(&self, catalog: &Catalog) -> Origin {
        match self {
            Near::Me(link) => Origin::of_link(link),
            Near::Named(name) => Origin::named(
                name,
                catalog.nats_server_place(name),
                !catalog.in_nats_cluster(name).is_empty(),
            ),
        }
    }

    /// [`Near::origin`] over plain records (the reference scan).
    pub fn origin_among<'a>(&self, records: impl IntoIterator<Item = &'a NodeRecord>) -> Origin {
        match self {
            Near::Me(link) => Origin::of_link(link),
            Near::Named(name) => {
                let links: Vec<&NatsLink> = records
                    .into_iter()
                    .filter_map(|r| r.nats.as_ref())
                    .collect();
                let place = links
                    .iter()
                    .filter(|l| &l.server == name)
                    .min_by(|a, b| a.cluster.cmp(&b.cluster).then(a.domain.cmp(&b.domain)))
                    .map(|l| (l.cluster.clone(), l.domain.clone()));
                let cluster = links.iter().any(|l| l.cluster.as_ref() == Some(name));
                Origin::named(name, place, cluster)
            }
        }
    }
}

impl Origin {
    /// A requester placed by `name`: on that server when a node is attached
    /// to it (`server_place`: that server's cluster and domain), else in that
    /// cluster when one is named so, else in that domain or region.
    fn named(
        name: &str,
        server_place: Option<(Option<String>, Option<String>)>,
        is_cluster: bool,
    ) -> Self {
        match server_place {
            Some((cluster, domain)) => Self {
                server: Some(name.to_owned()),
                cluster,
                domain,
                ..Self::default()
            },
            None if is_cluster => Self {
                cluster: Some(name.to_owned()),
                ..Self::default()
            },
            None => Self {
                domain: Some(name.to_owned()),
                region: Some(name.to_owned()),
                ..Self::default()
            },
        }
    }

    fn of_link(link: &NatsLink) -> Self {
        Self {
            server: Some(link.server.clone()),
            cluster: link.cluster.clone(),
            domain: link.domain.clone(),
            region: None,
            rtt_ms: link.rtt_ms.filter(|v| v.is_finite()).unwrap_or(0.0),
        }
    }

    /// The slots of each of the first three tiers.
    pub fn tiers(&self, catalog: &Catalog) -> Tiers {
        let server = self
            .server
            .as_deref()
            .map(|s| catalog.on_nats_server(s))
            .unwrap_or_default();
        let cluster = self
            .cluster
            .as_deref()
            .map(|c| catalog.in_nats_cluster(c))
            .unwrap_or_default();
        let mut region = self
            .domain
            .as_deref()
            .map(|d| catalog.in_nats_domain(d))
            .unwrap_or_default();
        if let Some(name) = &self.region {
            region |= catalog.with_label_value(REGION_LABEL, name);
        }
        Tiers {
            server,
            cluster,
            region,
        }
    }

    /// The tier of a record (the reference scan's form of [`Tiers::of`]).
    pub fn tier_of(&self, record: &NodeRecord) -> u8 {
        let link = record.nats.as_ref();
        let same = |ours: &Option<String>, theirs: Option<&String>| {
            ours.as_ref().is_some_and(|o| theirs == Some(o))
        };
        if same(&self.server, link.map(|l| &l.server)) {
            0
        } else if same(&self.cluster, link.and_then(|l| l.cluster.as_ref())) {
            1
        } else if same(&self.domain, link.and_then(|l| l.domain.as_ref()))
            || same(&self.region, record.labels.get(REGION_LABEL))
        {
            2
        } else {
            3
        }
    }

    /// The estimated round trip to a node of `tier` whose own round trip to
    /// its server is `node_rtt_ms` (+∞: unknown), in milliseconds.
    pub fn latency_ms(&self, tier: u8, node_rtt_ms: f64) -> f64 {
        let node = if node_rtt_ms.is_finite() {
            node_rtt_ms
        } else {
            UNKNOWN_RTT_MS
        };
        let hop = HOP_MS.get(usize::from(tier)).copied().unwrap_or(HOP_MS[3]);
        // Hundredths of a millisecond: what the inputs can tell.
        ((self.rtt_ms + node + hop) * 100.0).round() / 100.0
    }
}

/// The slots on the requester's server, in its cluster, and in its domain
/// or region.
#[derive(Debug, Clone, Default)]
pub struct Tiers {
    server: RoaringBitmap,
    cluster: RoaringBitmap,
    region: RoaringBitmap,
}

impl Tiers {
    /// A slot's tier: 0 (same server) to 3 (elsewhere).
    pub fn of(&self, slot: u32) -> u8 {
        if self.server.contains(slot) {
            0
        } else if self.cluster.contains(slot) {
            1
        } else if self.region.contains(slot) {
            2
        } else {
            3
        }
    }
}

/// The `near` of a request, checked: `"me"` needs `requester`; a name is
/// short text; neither goes with a fit (ranked by its strategy) or a cursor
/// (pages are in node id order).
pub(super) fn near_of(
    near: Option<String>,
    requester: Option<schemas::NatsLink>,
    fit: &Option<FitNeed>,
    cursor: bool,
) -> Result<Option<Near>, QueryError> {
    let Some(near) = near else {
        if requester.is_some() {
            return Err(field("requester", "is read only with near \"me\""));
        }
        return Ok(None);
    };
    if fit.is_some() {
        return Err(field("near", "cannot be combined with fit (yet)"));
    }
    if cursor {
        return Err(field(
            "near",
            "ranks by distance: pages with a cursor need sort \"node_id\" without near",
        ));
    }
    if near == "me" {
        let Some(requester) = requester.filter(|r| !r.server.is_empty()) else {
            return Err(field(
                "near",
                "\"me\" needs `requester`, the requester's own NATS server (fleet-client and nodectl fill it in from their connection)",
            ));
        };
        schemas::validate::validate_nats_link("requester", &requester)
            .map_err(|e| field("requester", e.to_string()))?;
        return Ok(Some(Near::Me(requester)));
    }
    if near.trim().is_empty() || near.len() > 256 || near.chars().any(char::is_control) {
        return Err(field(
            "near",
            "expected \"me\" or the name of a NATS server, cluster, domain or region",
        ));
    }
    Ok(Some(Near::Named(near)))
}
