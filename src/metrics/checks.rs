//! `introspectd_ext_authz_checks`: Envoy ext_authz checks by tenant and decision. The
//! decision labels are the adapter's closed set, created (at zero) for every configured
//! tenant before the first check.

use std::sync::Arc;

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family},
    registry::Registry as PromRegistry,
};

use super::{Metrics, NO_TENANT_LABEL};

/// The labels of one series.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct CheckLabels {
    tenant: Arc<str>,
    decision: &'static str,
}

/// Registers the family.
pub(super) fn register(prom: &mut PromRegistry) -> Family<CheckLabels, Counter> {
    let family = Family::<CheckLabels, Counter>::default();
    prom.register(
        "introspectd_ext_authz_checks",
        "Envoy ext_authz checks by tenant (the route's, else the token's; \"none\" when unknown) and decision (allowed, anonymous, unauthenticated, forbidden, bad_request, unavailable, misconfigured)",
        family.clone(),
    );
    family
}

impl Metrics {
    /// Creates the series of every configured tenant (and `none`) for `decisions`.
    pub fn prepare_checks(&self, decisions: &[&'static str]) {
        let tenants = self
            .tenants
            .values()
            .cloned()
            .chain([Arc::from(NO_TENANT_LABEL)]);
        for tenant in tenants {
            for decision in decisions {
                self.checks.get_or_create_owned(&CheckLabels {
                    tenant: tenant.clone(),
                    decision,
                });
            }
        }
    }

    /// Counts one ext_authz check: `tenant` as decided (`None`: unknown), `decision` one
    /// of the adapter's closed set.
    pub fn record_check(&self, tenant: Option<&str>, decision: &'static str) {
        let tenant = match tenant {
            Some(t) => self.tenant_label(t),
            None => Arc::from(NO_TENANT_LABEL),
        };
        self.checks
            .get_or_create(&CheckLabels { tenant, decision })
            .inc();
    }
}
