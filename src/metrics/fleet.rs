//! The fleet's families (`introspectd_shared_state_*`): availability, fallbacks and
//! refusals by facet, every Redis operation by kind and outcome with its latency, waits
//! for another replica's fetch, fetches avoided per key set, announcements. Read from
//! the fleet's own counters at scrape time; nothing when `shared_state` is off.

use std::{
    fmt,
    sync::{Arc, OnceLock},
};

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric},
    metrics::{MetricType, counter::ConstCounter, gauge::ConstGauge},
};

use crate::{
    fleet::{Fleet, stats::Op},
    shared::{Facet, SharedHealth},
};

/// The fleet's shared state, read at scrape time (nothing when `shared_state` is off).
#[derive(Debug)]
pub(super) struct FleetCollector {
    fleet: Arc<OnceLock<Fleet>>,
}

impl FleetCollector {
    /// Reads the fleet set in `fleet`, once it is.
    pub(super) fn new(fleet: Arc<OnceLock<Fleet>>) -> Self {
        Self { fleet }
    }

    fn encode_health(fleet: &Fleet, encoder: &mut DescriptorEncoder) -> Result<(), fmt::Error> {
        let health = fleet.health();
        let up = encoder.encode_descriptor(
            "introspectd_shared_state_up",
            "1 while the fleet's shared state (Redis) is available to this replica, else 0",
            None,
            MetricType::Gauge,
        )?;
        ConstGauge::new(i64::from(health.is_up())).encode(up)?;
        for (name, help, read) in [
            (
                "introspectd_shared_state_fallbacks",
                "Answers given from this replica's own state because the shared state was unavailable (on_unavailable: local), by facet",
                SharedHealth::fallbacks as fn(&SharedHealth, Facet) -> u64,
            ),
            (
                "introspectd_shared_state_refusals",
                "Tokens refused (STATE_UNAVAILABLE) because the shared state was unavailable (on_unavailable: fail_closed), by facet",
                SharedHealth::refusals,
            ),
        ] {
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            for facet in Facet::ALL {
                ConstCounter::new(read(health, facet))
                    .encode(family.encode_family(&[("facet", facet.as_str())])?)?;
            }
        }
        Ok(())
    }

    fn encode_operations(fleet: &Fleet, encoder: &mut DescriptorEncoder) -> Result<(), fmt::Error> {
        let stats = fleet.stats();
        {
            let mut ops = encoder.encode_descriptor(
                "introspectd_shared_state_operations",
                "Redis operations by kind and outcome (ok, error, timeout: past op_timeout)",
                None,
                MetricType::Counter,
            )?;
            for op in Op::ALL {
                for outcome in Op::OUTCOMES {
                    let labels = [("operation", op.as_str()), ("outcome", outcome)];
                    ConstCounter::new(stats.ops(op, outcome))
                        .encode(ops.encode_family(&labels)?)?;
                }
            }
        }
        let mut seconds = encoder.encode_descriptor(
            "introspectd_shared_state_operation_seconds",
            "Latency of Redis operations by kind, in seconds",
            None,
            MetricType::Histogram,
        )?;
        for op in Op::ALL {
            if let Some(h) = stats.latency(op) {
                h.encode(seconds.encode_family(&[("operation", op.as_str())])?)?;
            }
        }
        Ok(())
    }

    fn encode_fetches(fleet: &Fleet, encoder: &mut DescriptorEncoder) -> Result<(), fmt::Error> {
        let stats = fleet.stats();
        let waits = encoder.encode_descriptor(
            "introspectd_shared_state_lock_waits",
            "Waits for another replica's fetch of a key set (the fleet's fetch turn)",
            None,
            MetricType::Counter,
        )?;
        ConstCounter::new(stats.lock_waits()).encode(waits)?;
        let wait_seconds = encoder.encode_descriptor(
            "introspectd_shared_state_lock_wait_seconds",
            "Time spent waiting for another replica's fetch, in seconds",
            None,
            MetricType::Histogram,
        )?;
        stats.lock_wait_seconds().encode(wait_seconds)?;
        {
            let mut avoided = encoder.encode_descriptor(
                "introspectd_shared_state_fetches_avoided",
                "Key fetches this replica did not make because the fleet had one (a publication taken, or the fleet's cooldown), by key set",
                None,
                MetricType::Counter,
            )?;
            for (key_set, n) in stats.avoided() {
                let (tenant, policy) = key_set.split_once('/').unwrap_or((key_set, ""));
                let labels = [("tenant", tenant), ("policy", policy)];
                ConstCounter::new(n).encode(avoided.encode_family(&labels)?)?;
            }
        }
        let refused = encoder.encode_descriptor(
            "introspectd_shared_state_integrity_refusals",
            "Published key sets and introspection answers read from Redis and refused for a missing or wrong integrity tag (integrity_key_env)",
            None,
            MetricType::Counter,
        )?;
        ConstCounter::new(fleet.integrity_refusals()).encode(refused)?;
        let announcements = encoder.encode_descriptor(
            "introspectd_shared_state_announcements",
            "Announcements received from the fleet (publications, failures, revocation rules)",
            None,
            MetricType::Counter,
        )?;
        ConstCounter::new(stats.announcements()).encode(announcements)
    }
}

impl Collector for FleetCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), fmt::Error> {
        let Some(fleet) = self.fleet.get() else {
            return Ok(());
        };
        Self::encode_health(fleet, &mut encoder)?;
        Self::encode_operations(fleet, &mut encoder)?;
        Self::encode_fetches(fleet, &mut encoder)
    }
}
