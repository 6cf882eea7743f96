//! Metrics computed at scrape time rather than counted: key-set gauges from the
//! registry, replay caches, introspection cache sizes, and open `WatchKeys` streams.

use std::{
    fmt,
    sync::{Arc, OnceLock},
    time::SystemTime,
};

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric},
    metrics::{
        MetricType,
        counter::ConstCounter,
        gauge::{ConstGauge, Gauge},
    },
};

use super::{KeySetLabels, key_set_labels};
use crate::{
    introspect::Introspection,
    registry::{Registry, ReplayCache},
};

/// Key-set gauges computed from the registry at scrape time.
#[derive(Debug)]
pub(super) struct KeySetCollector {
    pub(super) registry: Registry,
}

impl Collector for KeySetCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), fmt::Error> {
        let mut sets = self.registry.key_sets();
        sets.sort_by(|a, b| a.id.cmp(&b.id));
        let now = SystemTime::now();
        {
            let mut keys = encoder.encode_descriptor(
                "introspectd_keys",
                "Verification keys currently held, by key set",
                None,
                MetricType::Gauge,
            )?;
            for s in &sets {
                let (tenant, policy) = key_set_labels(&s.id);
                let n = i64::try_from(s.keys().len()).unwrap_or(i64::MAX);
                ConstGauge::new(n).encode(keys.encode_family(&KeySetLabels { tenant, policy })?)?;
            }
        }
        {
            let rules = encoder.encode_descriptor(
                "introspectd_revocation_rules",
                "Revocation rules in force on this replica",
                None,
                MetricType::Gauge,
            )?;
            let n = i64::try_from(self.registry.revocations().len()).unwrap_or(i64::MAX);
            ConstGauge::new(n).encode(rules)?;
        }
        let mut age = encoder.encode_descriptor(
            "introspectd_key_set_last_success_age_seconds",
            "Seconds since the last successful fetch of a fetched key set; absent until the first success",
            None,
            MetricType::Gauge,
        )?;
        for s in sets.iter().filter(|s| s.refresh.is_refreshable()) {
            let Some(last) = s.status().last_success else {
                continue;
            };
            let secs = now
                .duration_since(last)
                .map(|d| d.as_secs_f64())
                .unwrap_or(0.0);
            let (tenant, policy) = key_set_labels(&s.id);
            ConstGauge::new(secs).encode(age.encode_family(&KeySetLabels { tenant, policy })?)?;
        }
        Ok(())
    }
}

/// How a replay-cache gauge reads its cache.
type ReplayGauge = fn(&ReplayCache) -> usize;

/// Replay caches read at scrape time: entries, capacity and refusals per tenant with
/// `replay_detection`.
#[derive(Debug)]
pub(super) struct ReplayCollector {
    pub(super) registry: Registry,
}

impl Collector for ReplayCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), fmt::Error> {
        let caches: Vec<_> = self
            .registry
            .tenants()
            .iter()
            .filter_map(|t| t.replay_cache().map(|c| (t.id(), c)))
            .collect();
        let gauges: [(&str, &str, ReplayGauge); 2] = [
            (
                "introspectd_replay_cache_entries",
                "Entries (iss, jti) the replay cache holds",
                ReplayCache::len,
            ),
            (
                "introspectd_replay_cache_capacity",
                "Most entries the replay cache holds (replay_cache_entries)",
                ReplayCache::capacity,
            ),
        ];
        for (name, help, value) in gauges {
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
            for (tenant, cache) in &caches {
                let n = i64::try_from(value(cache)).unwrap_or(i64::MAX);
                ConstGauge::new(n).encode(family.encode_family(&[("tenant", *tenant)])?)?;
            }
        }
        let mut refusals = encoder.encode_descriptor(
            "introspectd_replay_cache_refusals",
            "Tokens refused as REPLAYED because the replay cache was full of live entries",
            None,
            MetricType::Counter,
        )?;
        for (tenant, cache) in &caches {
            ConstCounter::new(cache.refusals())
                .encode(refusals.encode_family(&[("tenant", *tenant)])?)?;
        }
        Ok(())
    }
}

/// Introspection cache counters read from the caches at scrape time, so that the
/// cache's own counters stay the one source of truth.
#[derive(Debug)]
pub(super) struct CacheCollector {
    pub(super) introspection: Arc<OnceLock<Introspection>>,
}

impl Collector for CacheCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), fmt::Error> {
        let introspectors = self
            .introspection
            .get()
            .map(|i| i.introspectors())
            .unwrap_or_default();
        {
            let mut requests = encoder.encode_descriptor(
                "introspectd_introspection_cache_requests",
                "Introspection answer cache lookups by tenant and result (hit or miss)",
                None,
                MetricType::Counter,
            )?;
            for i in introspectors {
                for (result, n) in [("hit", i.cache().hits()), ("miss", i.cache().misses())] {
                    let labels = [("tenant", i.tenant()), ("result", result)];
                    ConstCounter::new(n).encode(requests.encode_family(&labels)?)?;
                }
            }
        }
        {
            let mut evictions = encoder.encode_descriptor(
                "introspectd_introspection_cache_evictions",
                "Introspection answers dropped from a full cache before their time",
                None,
                MetricType::Counter,
            )?;
            for i in introspectors {
                let labels = [("tenant", i.tenant())];
                ConstCounter::new(i.cache().evictions())
                    .encode(evictions.encode_family(&labels)?)?;
            }
        }
        let mut entries = encoder.encode_descriptor(
            "introspectd_introspection_cache_entries",
            "Introspection answers currently cached",
            None,
            MetricType::Gauge,
        )?;
        for i in introspectors {
            let n = i64::try_from(i.cache().len()).unwrap_or(i64::MAX);
            ConstGauge::new(n).encode(entries.encode_family(&[("tenant", i.tenant())])?)?;
        }
        Ok(())
    }
}

/// The verified-token cache's counters and sizes, read from it at scrape time (nothing
/// when `token_cache.enabled` is off).
#[derive(Debug)]
pub(super) struct TokenCacheCollector {
    pub(super) registry: Registry,
}

impl Collector for TokenCacheCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), fmt::Error> {
        let Some(cache) = self.registry.token_cache() else {
            return Ok(());
        };
        let stats = cache.stats();
        {
            let mut requests = encoder.encode_descriptor(
                "introspectd_token_cache_requests",
                "Verified-token cache lookups by result: hit (a verified token), forged_hit (a signature that failed before), miss",
                None,
                MetricType::Counter,
            )?;
            for (result, n) in [
                ("hit", stats.hits),
                ("forged_hit", stats.forged_hits),
                ("miss", stats.misses),
            ] {
                ConstCounter::new(n).encode(requests.encode_family(&[("result", result)])?)?;
            }
        }
        let counters = [(
            "introspectd_token_cache_evictions",
            "Verified-token cache entries dropped to stay within token_cache.max_bytes or max_entries",
            stats.evictions,
        )];
        for (name, help, n) in counters {
            ConstCounter::new(n).encode(encoder.encode_descriptor(
                name,
                help,
                None,
                MetricType::Counter,
            )?)?;
        }
        let gauges = [
            (
                "introspectd_token_cache_entries",
                "Verified tokens in the cache",
                stats.entries,
            ),
            (
                "introspectd_token_cache_bytes",
                "Bytes the verified tokens in the cache weigh (bounded by token_cache.max_bytes)",
                stats.bytes,
            ),
            (
                "introspectd_token_cache_forged_entries",
                "Tokens whose signature failed, remembered for token_cache.negative_ttl",
                stats.forged_entries,
            ),
        ];
        for (name, help, n) in gauges {
            let n = i64::try_from(n).unwrap_or(i64::MAX);
            ConstGauge::new(n).encode(encoder.encode_descriptor(
                name,
                help,
                None,
                MetricType::Gauge,
            )?)?;
        }
        Ok(())
    }
}

pub(super) type WatcherCount = Box<dyn Fn() -> usize + Send + Sync>;

/// `introspectd_watchers`: streams counted here plus those an observed handler reports.
pub(super) struct WatchersCollector {
    pub(super) counted: Gauge,
    pub(super) observed: Arc<OnceLock<WatcherCount>>,
}

impl fmt::Debug for WatchersCollector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WatchersCollector")
            .field("counted", &self.counted.get())
            .field("observed", &self.observed.get().is_some())
            .finish()
    }
}

impl Collector for WatchersCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), fmt::Error> {
        let observed = self.observed.get().map_or(0, |f| f());
        let n = self
            .counted
            .get()
            .saturating_add(i64::try_from(observed).unwrap_or(i64::MAX));
        let gauge = encoder.encode_descriptor(
            "introspectd_watchers",
            "Open WatchKeys streams",
            None,
            MetricType::Gauge,
        )?;
        ConstGauge::new(n).encode(gauge)
    }
}
