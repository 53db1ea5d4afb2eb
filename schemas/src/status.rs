//! The lowercase strings of the contract as enums.

use std::fmt;
use std::str::FromStr;

use subjects::alert_types;

/// Declares a string-backed enum with `as_str`, `Display`, `FromStr` and the
/// list of its accepted values (for error messages).
macro_rules! string_enum {
    ($(#[$meta:meta])* $name:ident { $($(#[$vmeta:meta])* $variant:ident => $text:expr),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name {
            $($(#[$vmeta])* $variant),+
        }

        impl $name {
            /// Every accepted spelling, in declaration order.
            pub const ALL: &'static [&'static str] = &[$($text),+];

            /// The wire spelling.
            pub fn as_str(self) -> &'static str {
                match self {
                    $(Self::$variant => $text),+
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl FromStr for $name {
            type Err = UnknownValue;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                $(if s == $text {
                    return Ok(Self::$variant);
                })+
                Err(UnknownValue {
                    what: stringify!($name),
                    value: s.chars().take(64).collect(),
                    expected: Self::ALL,
                })
            }
        }
    };
}

/// A string that is not one of an enum's accepted spellings.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown {what} {value:?}, expected one of {}", expected.join(", "))]
pub struct UnknownValue {
    /// Which enum was parsed.
    pub what: &'static str,
    /// The offered value (cut to 64 characters).
    pub value: String,
    /// The accepted values.
    pub expected: &'static [&'static str],
}

string_enum! {
    /// The lifecycle status of a node.
    NodeStatus {
        /// Heartbeats arrive.
        Online => "online",
        /// No heartbeat for `degraded_after`.
        Degraded => "degraded",
        /// No heartbeat for `offline_after`.
        Offline => "offline",
        /// Taken out of service by an operator.
        Maintenance => "maintenance",
    }
}

string_enum! {
    /// How an instance of a service is, in the seed's health shape.
    #[derive(serde::Serialize, serde::Deserialize)]
    #[serde(rename_all = "lowercase")]
    HealthStatus {
        /// Everything it depends on answers; it does its job.
        Healthy => "healthy",
        /// It works, but holds back (self-preservation) or lags.
        Degraded => "degraded",
        /// A dependency is down: it cannot do its job.
        Unhealthy => "unhealthy",
    }
}

string_enum! {
    /// A control task on `node.<id>.tasks`.
    TaskType {
        /// Publish a fresh `register`.
        Reannounce => "reannounce",
        /// Say how the agent is.
        Ping => "ping",
        /// Detect the capabilities afresh and answer them.
        Detect => "detect",
        /// Answer the role profile in force (its opaque `config` included).
        Profile => "profile",
    }
}

string_enum! {
    /// What an operator asks of the leader on `registry.admin`.
    #[derive(serde::Serialize, serde::Deserialize)]
    #[serde(rename_all = "lowercase")]
    AdminOp {
        /// Into maintenance: neither judged nor discovered as online. With
        /// `gpu`, that one GPU out of service instead.
        Cordon => "cordon",
        /// Out of maintenance, judged again after a fresh window. With
        /// `gpu`, that GPU back in service.
        Uncordon => "uncordon",
        /// The record removed (a live agent registers again).
        Deregister => "deregister",
        /// Into maintenance with a reason, and a deadline to resume at.
        Drain => "drain",
        /// Out of maintenance (as uncordon).
        Resume => "resume",
    }
}

string_enum! {
    /// The type of a node event.
    EventType {
        /// The node announces itself and its capabilities.
        Register => "register",
        /// The node is alive; carries metrics.
        Heartbeat => "heartbeat",
        /// The node leaves on purpose.
        Deregister => "deregister",
    }
}

string_enum! {
    /// The type of an alert on `system.broadcast`.
    AlertType {
        /// A node the registry did not know registered.
        Registered => alert_types::NODE_REGISTERED,
        /// A degraded or offline node is back.
        Online => alert_types::NODE_ONLINE,
        /// A node missed heartbeats for `degraded_after`.
        Degraded => alert_types::NODE_DEGRADED,
        /// A node missed heartbeats for `offline_after`.
        Offline => alert_types::NODE_OFFLINE,
        /// A node deregistered.
        Deregistered => alert_types::NODE_DEREGISTERED,
        /// A node was put into maintenance.
        Maintenance => alert_types::NODE_MAINTENANCE,
        /// A node left maintenance.
        Resumed => alert_types::NODE_RESUMED,
        /// A node could not apply its role's profile.
        ProfileFailed => alert_types::NODE_PROFILE_FAILED,
        /// A node lacks models its role's profile expects.
        ProfileMismatch => alert_types::NODE_PROFILE_MISMATCH,
        /// The registry suspects itself and holds transitions (or stops doing so).
        SelfPreservation => alert_types::REGISTRY_SELF_PRESERVATION,
        /// The registry asks every node to register again.
        Reannounce => alert_types::REGISTRY_REANNOUNCE,
        /// The event stream discarded events the registry had not read.
        EventsLost => alert_types::REGISTRY_EVENTS_LOST,
        /// The event stream holds less history than the minimum (or again enough).
        HistoryShort => alert_types::REGISTRY_HISTORY_SHORT,
        /// A GPU failed: out of service.
        GpuUnhealthy => alert_types::GPU_UNHEALTHY,
        /// A quarantined GPU is back in service.
        GpuHealthy => alert_types::GPU_HEALTHY,
        /// An operator took a GPU out of service.
        GpuCordoned => alert_types::GPU_CORDONED,
        /// An operator put a GPU back in service.
        GpuUncordoned => alert_types::GPU_UNCORDONED,
    }
}

string_enum! {
    /// The status filter of a discovery query.
    StatusFilter {
        /// Online nodes only (discover's default).
        Online => "online",
        /// Degraded nodes only.
        Degraded => "degraded",
        /// Offline nodes only.
        Offline => "offline",
        /// Nodes in maintenance only.
        Maintenance => "maintenance",
        /// Every status (list's default).
        Any => "any",
    }
}

impl StatusFilter {
    /// Whether a node of `status` passes this filter.
    pub fn admits(self, status: NodeStatus) -> bool {
        match self {
            Self::Any => true,
            Self::Online => status == NodeStatus::Online,
            Self::Degraded => status == NodeStatus::Degraded,
            Self::Offline => status == NodeStatus::Offline,
            Self::Maintenance => status == NodeStatus::Maintenance,
        }
    }
}

string_enum! {
    /// The order of a discovery reply.
    SortOrder {
        /// Lowest cpu_pct first, then lowest gpu_pct, then node id.
        LeastLoaded => "least_loaded",
        /// Most free VRAM on one GPU first.
        MostFreeVram => "most_free_vram",
        /// A random order: spreads load across equal nodes.
        Random => "random",
        /// By node id.
        NodeId => "node_id",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spellings_round_trip() {
        for text in NodeStatus::ALL {
            assert_eq!(text.parse::<NodeStatus>().map(|s| s.as_str()), Ok(*text));
        }
        for text in AlertType::ALL {
            assert_eq!(text.parse::<AlertType>().map(|s| s.as_str()), Ok(*text));
        }
        let err = "STATUS_ONLINE"
            .parse::<NodeStatus>()
            .expect_err("not a status");
        assert!(err
            .to_string()
            .contains("online, degraded, offline, maintenance"));
    }
}
