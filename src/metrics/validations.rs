//! `introspectd_validations`: every series (configured tenant, or none, by result) is
//! created at start-up and held as a handle indexed by the tenant's position, so that
//! counting a validation is one atomic add, with no label built, hashed or allocated.

use std::sync::Arc;

use prometheus_client::{
    metrics::{counter::Counter, family::Family},
    registry::Registry as PromRegistry,
};

use super::{FastMap, NO_TENANT_LABEL, UNKNOWN_LABEL, ValidationLabels, registered};
use crate::{jwt::ErrorCode, registry::Registry};

/// Results, in the order of a tenant's handles: `valid`, then every error code.
const RESULTS: usize = 1 + ErrorCode::ALL.len();

fn result_index(error: Option<ErrorCode>) -> usize {
    error.map_or(0, |e| {
        1 + ErrorCode::ALL
            .iter()
            .position(|c| *c == e)
            .unwrap_or_default()
    })
}

fn result_label(index: usize) -> &'static str {
    match index.checked_sub(1).and_then(|i| ErrorCode::ALL.get(i)) {
        Some(code) => code.as_str(),
        None => "valid",
    }
}

/// The counters of `introspectd_validations`.
#[derive(Debug)]
pub(super) struct ValidationCounters {
    family: Family<ValidationLabels, Counter>,
    /// By tenant position, then result.
    by_tenant: Vec<[Counter; RESULTS]>,
    /// Tokens not routed to any tenant.
    no_tenant: [Counter; RESULTS],
    /// Tenant id -> position.
    positions: FastMap<String, usize>,
}

impl ValidationCounters {
    /// Registers the family with every configured tenant's series (and `none`'s) at zero.
    pub(super) fn register(prom: &mut PromRegistry, registry: &Registry) -> Self {
        let family = registered(
            prom,
            "introspectd_validations",
            "Token validations by tenant and result (\"valid\" or the error code)",
            Family::<ValidationLabels, Counter>::default(),
        );
        let series = |tenant: Arc<str>| {
            std::array::from_fn(|i| {
                family.get_or_create_owned(&ValidationLabels {
                    tenant: tenant.clone(),
                    result: result_label(i),
                })
            })
        };
        let tenants = registry.tenants();
        Self {
            by_tenant: tenants.iter().map(|t| series(Arc::from(t.id()))).collect(),
            no_tenant: series(Arc::from(NO_TENANT_LABEL)),
            positions: tenants
                .iter()
                .map(|t| (t.id().to_string(), t.index))
                .collect(),
            family,
        }
    }

    /// Counts a validation of the tenant at `position` in the configuration.
    pub(super) fn record_at(&self, position: usize, error: Option<ErrorCode>) {
        match self.by_tenant.get(position) {
            Some(series) => {
                if let Some(c) = series.get(result_index(error)) {
                    c.inc();
                }
            }
            None => self.record_unknown(error),
        }
    }

    /// Counts a validation of the tenant named `tenant` (`None`: not routed).
    pub(super) fn record(&self, tenant: Option<&str>, error: Option<ErrorCode>) {
        match tenant {
            None => {
                if let Some(c) = self.no_tenant.get(result_index(error)) {
                    c.inc();
                }
            }
            Some(t) => match self.positions.get(t) {
                Some(p) => self.record_at(*p, error),
                None => self.record_unknown(error),
            },
        }
    }

    /// A name that is not configured is counted as `unknown` (labels stay bounded).
    fn record_unknown(&self, error: Option<ErrorCode>) {
        self.family
            .get_or_create(&ValidationLabels {
                tenant: Arc::from(UNKNOWN_LABEL),
                result: result_label(result_index(error)),
            })
            .inc();
    }
}
