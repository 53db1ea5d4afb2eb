//! Creates or reuses the streams, buckets and consumer of the registry.

use std::time::Duration;

use async_nats::jetstream::{self, consumer, kv, object_store, stream};
use subjects::Names;
use tracing::{info, instrument, warn};

/// Retention and replication of what the registry provisions.
#[derive(Debug, Clone, PartialEq)]
pub struct StreamSettings {
    /// Replicas of every stream and bucket (1 on a single server, 3 in a cluster).
    pub replicas: usize,
    /// Max age of `NODE_EVENTS` (the audit horizon).
    pub events_max_age: Duration,
    /// Max bytes of `NODE_EVENTS`; -1 for no limit.
    pub events_max_bytes: i64,
    /// Max age of `ALERTS`.
    pub alerts_max_age: Duration,
    /// Max age of `NODE_LIFECYCLE` (registrations and deregistrations).
    pub lifecycle_max_age: Duration,
    /// Duplicate window of both streams (drops replayed `Nats-Msg-Id`s).
    pub duplicate_window: Duration,
    /// History kept per key in `nodes`.
    pub nodes_history: i64,
    /// How long the registry has to ack an event before it is redelivered.
    pub ack_wait: Duration,
    /// Most unacked events in flight to the registry.
    pub max_ack_pending: i64,
    /// Shares the event stream is split into by node id, each with its own
    /// consumer and lease (1: no split, the contract's one consumer).
    pub partitions: u32,
}

impl Default for StreamSettings {
    fn default() -> Self {
        Self {
            replicas: 1,
            events_max_age: Duration::from_secs(7 * 24 * 3600),
            events_max_bytes: 1024 * 1024 * 1024,
            alerts_max_age: Duration::from_secs(30 * 24 * 3600),
            lifecycle_max_age: Duration::from_secs(30 * 24 * 3600),
            duplicate_window: Duration::from_secs(120),
            nodes_history: 16,
            ack_wait: Duration::from_secs(30),
            max_ack_pending: 10_000,
            partitions: 1,
        }
    }
}

/// Handles to everything provisioned.
#[derive(Debug, Clone)]
pub struct Provisioned {
    /// The stream of node events.
    pub events: stream::Stream,
    /// The stream of alerts.
    pub alerts: stream::Stream,
    /// The stream of the registry's copies of registrations and
    /// deregistrations.
    pub lifecycle: stream::Stream,
    /// The bucket of node records.
    pub nodes: kv::Store,
    /// The bucket of registry-wide state.
    pub meta: kv::Store,
    /// The bucket of role profiles (written by operators, read by agents).
    pub profiles: kv::Store,
    /// The object store of read index snapshots; `None` where it could
    /// not be created or read (then every cold start reads `nodes` whole).
    pub snapshots: Option<crate::snapshots::SnapshotStore>,
    /// The registry's durable pull consumers on the events stream, one per
    /// partition, in partition order.
    pub consumers: Vec<consumer::PullConsumer>,
}

/// Why provisioning failed.
#[derive(Debug, thiserror::Error)]
pub enum ProvisionError {
    /// A stream of that name exists but does not fit the contract.
    #[error("stream {name} exists but is incompatible: {reason}")]
    Incompatible {
        /// The stream's name.
        name: String,
        /// What does not fit.
        reason: String,
    },
    /// A stream could not be created or read.
    #[error("stream {name}: {source}")]
    Stream {
        /// The stream's name.
        name: String,
        /// The JetStream error.
        source: async_nats::Error,
    },
    /// A bucket could not be created or read.
    #[error("bucket {name}: {source}")]
    Bucket {
        /// The bucket's name.
        name: String,
        /// The JetStream error.
        source: async_nats::Error,
    },
    /// The consumer could not be created or read.
    #[error("consumer {name} on {stream}: {source}")]
    Consumer {
        /// The consumer's name.
        name: String,
        /// Its stream.
        stream: String,
        /// The JetStream error.
        source: async_nats::Error,
    },
}

/// Creates what is absent and reuses what exists and fits.
#[instrument(skip_all, fields(events = %names.events_stream, nodes = %names.nodes_bucket))]
pub async fn provision(
    js: &jetstream::Context,
    names: &Names,
    settings: &StreamSettings,
) -> Result<Provisioned, ProvisionError> {
    let events = ensure_stream(
        js,
        stream::Config {
            name: names.events_stream.clone(),
            description: Some("Every node event as sent (audit replay)".into()),
            subjects: vec![subjects::NODE_EVENTS_FILTER.to_owned()],
            retention: stream::RetentionPolicy::Limits,
            max_age: settings.events_max_age,
            max_bytes: settings.events_max_bytes,
            duplicate_window: settings.duplicate_window,
            num_replicas: settings.replicas,
            storage: stream::StorageType::File,
            discard: stream::DiscardPolicy::Old,
            subject_transform: events_transform(settings.partitions),
            ..Default::default()
        },
    )
    .await?;
    check_partitions(&events, settings.partitions)?;
    let alerts = ensure_stream(
        js,
        alerts_config(names, settings, "Every alert published on system.broadcast"),
    )
    .await?;
    let lifecycle = ensure_stream(
        js,
        stream::Config {
            name: names.lifecycle_stream.clone(),
            description: Some(
                "Every registration and deregistration applied, kept as long as alerts".into(),
            ),
            subjects: vec![subjects::NODE_LIFECYCLE_FILTER.to_owned()],
            retention: stream::RetentionPolicy::Limits,
            max_age: settings.lifecycle_max_age,
            duplicate_window: settings.duplicate_window,
            num_replicas: settings.replicas,
            storage: stream::StorageType::File,
            ..Default::default()
        },
    )
    .await?;
    let nodes = ensure_bucket(
        js,
        kv::Config {
            bucket: names.nodes_bucket.clone(),
            description: "One record per node (the truth)".into(),
            history: settings.nodes_history,
            num_replicas: settings.replicas,
            storage: stream::StorageType::File,
            ..Default::default()
        },
    )
    .await?;
    let meta = ensure_bucket(
        js,
        kv::Config {
            bucket: names.meta_bucket.clone(),
            description: "Leader lease and registry-wide state".into(),
            history: 1,
            num_replicas: settings.replicas,
            storage: stream::StorageType::File,
            ..Default::default()
        },
    )
    .await?;
    let profiles = ensure_bucket(js, profiles_config(settings)).await?;
    let snapshots = ensure_object_store(
        js,
        object_store::Config {
            bucket: names.snapshots_bucket.clone(),
            description: Some("Snapshots of the registry's read index (faster cold starts)".into()),
            num_replicas: settings.replicas,
            storage: stream::StorageType::File,
            ..Default::default()
        },
    )
    .await
    .map(|store| crate::snapshots::SnapshotStore::new(store, names.snapshots_bucket.clone()))
    .map_err(|e| warn!(error = %e, "no index snapshots: cold starts read the nodes bucket whole"))
    .ok();
    let mut consumers = Vec::new();
    for p in 0..settings.partitions.max(1) {
        consumers.push(ensure_consumer(&events, names, settings, p).await?);
    }
    info!("streams, buckets and consumer ready");
    Ok(Provisioned {
        events,
        alerts,
        lifecycle,
        nodes,
        meta,
        profiles,
        snapshots,
        consumers,
    })
}

/// The event stream's subject transform for `partitions` shares (none for
/// one).
fn events_transform(partitions: u32) -> Option<stream::SubjectTransform> {
    (partitions > 1).then(|| stream::SubjectTransform {
        source: subjects::NODE_EVENTS_FILTER.to_owned(),
        destination: subjects::events_transform_destination(partitions),
    })
}

/// Refuses a registry whose partition count differs from the one the
/// event stream was provisioned with: the stored subjects, consumers and
/// leases all follow the count, so it cannot change in place.
fn check_partitions(events: &stream::Stream, partitions: u32) -> Result<(), ProvisionError> {
    let config = &events.cached_info().config;
    let found = config
        .subject_transform
        .as_ref()
        .map(|t| t.destination.clone());
    let wanted = events_transform(partitions).map(|t| t.destination);
    if found == wanted {
        return Ok(());
    }
    let has = |t: &Option<String>| match t {
        None => "1 partition (no subject transform)".to_owned(),
        Some(d) => format!("the subject transform {d:?}"),
    };
    Err(ProvisionError::Incompatible {
        name: config.name.clone(),
        reason: format!(
            "it was provisioned with {}, and this registry asks for {partitions} partition(s): \
             the partition count is fixed when the stream is created. Start the registry \
             with the stream's count, or provision a new event stream (docs/SCALING.md, \
             \"Changing the partition count\")",
            has(&found)
        ),
    })
}

/// The durable pull consumer of partition `p`, created if absent.
async fn ensure_consumer(
    events: &stream::Stream,
    names: &Names,
    settings: &StreamSettings,
    p: u32,
) -> Result<consumer::PullConsumer, ProvisionError> {
    let name = subjects::partition_consumer(&names.consumer, p, settings.partitions);
    let (description, filter_subject) = if settings.partitions > 1 {
        (
            format!(
                "The position of partition {p} of {}'s leader in the event stream",
                settings.partitions
            ),
            subjects::partition_filter(p),
        )
    } else {
        (
            "The registry leader's position in the event stream".to_owned(),
            String::new(),
        )
    };
    let consumer: consumer::PullConsumer = events
        .get_or_create_consumer(
            &name,
            consumer::pull::Config {
                durable_name: Some(name.clone()),
                description: Some(description),
                ack_policy: consumer::AckPolicy::All,
                ack_wait: settings.ack_wait,
                max_ack_pending: settings.max_ack_pending,
                deliver_policy: consumer::DeliverPolicy::All,
                filter_subject: filter_subject.clone(),
                ..Default::default()
            },
        )
        .await
        .map_err(|e| ProvisionError::Consumer {
            name: name.clone(),
            stream: names.events_stream.clone(),
            source: e.into(),
        })?;
    // One made before, by hand or by another count, must read the same share.
    let found = &consumer.cached_info().config.filter_subject;
    if *found != filter_subject {
        return Err(ProvisionError::Incompatible {
            name: format!("{} (its consumer {name})", names.events_stream),
            reason: format!(
                "the consumer filters {found:?} where this registry reads {filter_subject:?}: \
                 delete it (nats consumer rm) or start with the partition count it was made for"
            ),
        });
    }
    Ok(consumer)
}

/// Provisions a global view at the hub: the `nodes` bucket of this domain
/// as the union of every region's (`domains`: their JetStream domains),
/// by stream sourcing across domains, and `ALERTS`, which stores the
/// regions' alerts as they cross to the hub. A bucket made for fewer
/// regions gets the new ones added to its sources.
#[instrument(skip_all, fields(nodes = %names.nodes_bucket, regions = ?domains))]
pub async fn provision_view(
    js: &jetstream::Context,
    names: &Names,
    settings: &StreamSettings,
    domains: &[String],
) -> Result<kv::Store, ProvisionError> {
    let sources: Vec<stream::Source> = domains
        .iter()
        .map(|domain| stream::Source {
            name: subjects::kv_stream(&names.nodes_bucket),
            external: Some(stream::External {
                api_prefix: format!("$JS.{domain}.API"),
                delivery_prefix: None,
            }),
            ..Default::default()
        })
        .collect();
    ensure_stream(
        js,
        alerts_config(
            names,
            settings,
            "Every region's alerts, as they reach the hub",
        ),
    )
    .await?;
    let bucket_error = |e: async_nats::Error| ProvisionError::Bucket {
        name: names.nodes_bucket.clone(),
        source: e,
    };
    let stream_name = subjects::kv_stream(&names.nodes_bucket);
    if let Ok(mut stream) = js.get_stream(&stream_name).await {
        let info = stream.info().await.map_err(|e| bucket_error(e.into()))?;
        let mut config = info.config.clone();
        if !config.subjects.is_empty() {
            return Err(ProvisionError::Incompatible {
                name: stream_name,
                reason: "it is a regional bucket with its own subjects, not a view: run the \
                         global view in the hub's own JetStream domain"
                    .into(),
            });
        }
        let mut have = config.sources.clone().unwrap_or_default();
        let missing: Vec<stream::Source> = sources
            .into_iter()
            .filter(|s| {
                !have
                    .iter()
                    .any(|h| h.external == s.external && h.name == s.name)
            })
            .collect();
        if !missing.is_empty() {
            info!(
                added = missing.len(),
                "adding regions to the view's sources"
            );
            have.extend(missing);
            config.sources = Some(have);
            js.update_stream(config)
                .await
                .map_err(|e| bucket_error(e.into()))?;
        }
        return js
            .get_key_value(&names.nodes_bucket)
            .await
            .map_err(|e| bucket_error(e.into()));
    }
    js.create_key_value(kv::Config {
        bucket: names.nodes_bucket.clone(),
        description: "Every region's node records, sourced (the global view)".into(),
        history: settings.nodes_history,
        num_replicas: settings.replicas,
        storage: stream::StorageType::File,
        sources: Some(sources),
        ..Default::default()
    })
    .await
    .map_err(|e| bucket_error(e.into()))
}

/// The `ALERTS` stream: every alert on `system.broadcast`, kept
/// `alerts_max_age`.
fn alerts_config(names: &Names, settings: &StreamSettings, description: &str) -> stream::Config {
    stream::Config {
        name: names.alerts_stream.clone(),
        description: Some(description.to_owned()),
        subjects: vec![subjects::SYSTEM_BROADCAST.to_owned()],
        retention: stream::RetentionPolicy::Limits,
        max_age: settings.alerts_max_age,
        duplicate_window: settings.duplicate_window,
        num_replicas: settings.replicas,
        storage: stream::StorageType::File,
        ..Default::default()
    }
}

/// The `profiles` bucket as the contract has it: one key per role, 16
/// revisions each (so `nodectl profile history` can show what changed).
pub fn profiles_config(settings: &StreamSettings) -> kv::Config {
    kv::Config {
        bucket: subjects::BUCKET_PROFILES.to_owned(),
        description: "One configuration profile per role".into(),
        history: 16,
        max_value_size: i32::try_from(schemas::profile::MAX_PROFILE_BYTES).unwrap_or(i32::MAX),
        num_replicas: settings.replicas,
        storage: stream::StorageType::File,
        ..Default::default()
    }
}

async fn ensure_stream(
    js: &jetstream::Context,
    config: stream::Config,
) -> Result<stream::Stream, ProvisionError> {
    let name = config.name.clone();
    let wanted = config.subjects.clone();
    let mut stream = js
        .get_or_create_stream(config)
        .await
        .map_err(|e| ProvisionError::Stream {
            name: name.clone(),
            source: e.into(),
        })?;
    let info = stream.info().await.map_err(|e| ProvisionError::Stream {
        name: name.clone(),
        source: e.into(),
    })?;
    for subject in &wanted {
        if !info.config.subjects.iter().any(|s| s == subject) {
            return Err(ProvisionError::Incompatible {
                name,
                reason: format!(
                    "its subjects {:?} do not include {subject:?}",
                    info.config.subjects
                ),
            });
        }
    }
    Ok(stream)
}

/// The bucket `get` finds, else the one `create` makes; when making it
/// fails, the one `get` finds then (another instance may have created it
/// in between).
async fn get_or_create<T, GetError, CreateError, Get, Got, Create, Made>(
    name: &str,
    get: Get,
    create: Create,
) -> Result<T, ProvisionError>
where
    Get: Fn() -> Got,
    Got: std::future::Future<Output = Result<T, GetError>>,
    Create: FnOnce() -> Made,
    Made: std::future::Future<Output = Result<T, CreateError>>,
    CreateError: Into<async_nats::Error>,
{
    if let Ok(found) = get().await {
        return Ok(found);
    }
    match create().await {
        Ok(made) => Ok(made),
        Err(create_err) => get().await.map_err(|_| ProvisionError::Bucket {
            name: name.to_owned(),
            source: create_err.into(),
        }),
    }
}

async fn ensure_object_store(
    js: &jetstream::Context,
    config: object_store::Config,
) -> Result<object_store::ObjectStore, ProvisionError> {
    let name = config.bucket.clone();
    get_or_create(
        &name,
        || js.get_object_store(&name),
        || js.create_object_store(config),
    )
    .await
}

async fn ensure_bucket(
    js: &jetstream::Context,
    config: kv::Config,
) -> Result<kv::Store, ProvisionError> {
    let name = config.bucket.clone();
    get_or_create(
        &name,
        || js.get_key_value(&name),
        || js.create_key_value(config),
    )
    .await
}
