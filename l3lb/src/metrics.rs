//! Prometheus metrics. One [`Metrics`] is created at start-up and handed (cloned: every metric
//! is a shared handle) to the parts that update it; `/metrics` encodes the registry.
use std::sync::Arc;

use prometheus_client::{
    collector::Collector,
    encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder},
    metrics::{
        counter::Counter,
        family::Family,
        gauge::Gauge,
        histogram::{Histogram, exponential_buckets},
    },
    registry::{Metric, Registry},
};

/// The part of l3lb whose operation failed: the `component` label of `l3lb_errors_total`.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum Component {
    /// Address operations on the interface.
    Netlink,
    /// Updates of the XDP fast path's maps.
    Fastpath,
    /// Writing `status.loadBalancer.ingress`.
    Ingress,
    /// Acquiring or renewing the status-writer Lease.
    Leader,
    /// The leader's IP allocator writing Services and pools.
    Allocator,
}

impl Component {
    pub fn as_str(self) -> &'static str {
        match self {
            Component::Netlink => "netlink",
            Component::Fastpath => "fastpath",
            Component::Ingress => "ingress",
            Component::Leader => "leader",
            Component::Allocator => "allocator",
        }
    }
}

impl EncodeLabelValue for Component {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        EncodeLabelValue::encode(&self.as_str(), encoder)
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    pub component: Component,
    /// What failed, from the error's `metric_label()`.
    pub kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AddressLabels {
    pub address: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WatchLabels {
    pub resource: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PoolLabels {
    pub pool: String,
    /// `IPv4` or `IPv6`.
    pub family: &'static str,
}

#[derive(Clone)]
pub struct Metrics {
    registry: Arc<Registry>,
    pub announced_addresses: Gauge,
    pub services_seen: Gauge,
    pub reconcile_duration: Histogram,
    errors: Family<ErrorLabels, Counter>,
    pub watch_errors: Family<WatchLabels, Counter>,
    pub watch_relists: Family<WatchLabels, Counter>,
    pub leader: Gauge,
    /// Host addresses inside the managed prefixes, without l3lb's mark, that no Service needed,
    /// removed (by address: a bounded set, the prefixes').
    pub unowned_removed: Family<AddressLabels, Counter>,
    /// Set by the leader's allocator only.
    pub pool_in_use: Family<PoolLabels, Gauge>,
    pub pool_available: Family<PoolLabels, Gauge>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new(None)
    }
}

impl Metrics {
    /// `extra` reports samples computed at scrape time (the fast path's counters).
    pub fn new(extra: Option<Box<dyn Collector>>) -> Self {
        let mut registry = Registry::with_prefix("l3lb");
        if let Some(extra) = extra {
            registry.register_collector(extra);
        }
        Metrics {
            announced_addresses: register(
                &mut registry,
                "announced_addresses",
                "Service addresses this node currently announces",
                Gauge::default(),
            ),
            services_seen: register(
                &mut registry,
                "services",
                "Services known to this node (all of them, managed or not)",
                Gauge::default(),
            ),
            // 50 µs to ~1.6 s: a converged reconcile is one netlink dump.
            reconcile_duration: register(
                &mut registry,
                "reconcile_duration_seconds",
                "Time to bring the interface in line with the desired addresses",
                Histogram::new(exponential_buckets(0.000_05, 2.0, 16)),
            ),
            errors: register(
                &mut registry,
                "errors",
                "Failed operations, by component (netlink, fastpath, ingress, leader, allocator) and kind",
                Family::default(),
            ),
            watch_errors: register(
                &mut registry,
                "watch_errors",
                "API watch failures (each followed by a retry with backoff)",
                Family::default(),
            ),
            watch_relists: register(
                &mut registry,
                "watch_restarts",
                "Completed (re)lists of a watched resource, the initial one included",
                Family::default(),
            ),
            leader: register(
                &mut registry,
                "leader",
                "1 while this instance holds the status-writer Lease",
                Gauge::default(),
            ),
            unowned_removed: register(
                &mut registry,
                "unowned_addresses_removed",
                "Unmarked host addresses inside the managed prefixes that no Service needed, removed",
                Family::default(),
            ),
            pool_in_use: register(
                &mut registry,
                "pool_addresses_in_use",
                "Addresses of an L3lbIPPool handed out or reserved (exported by the leader)",
                Family::default(),
            ),
            pool_available: register(
                &mut registry,
                "pool_addresses_available",
                "Addresses of an L3lbIPPool still free (exported by the leader)",
                Family::default(),
            ),
            registry: Arc::new(registry),
        }
    }

    /// Counts one failed operation of `component`; `kind` is the error's `metric_label()`.
    pub fn count_error(&self, component: Component, kind: &'static str) {
        self.errors
            .get_or_create(&ErrorLabels { component, kind })
            .inc();
    }

    /// The text exposition format, as `/metrics` serves it.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// Registers `metric` and returns the handle that updates it.
fn register<M: Metric + Clone>(registry: &mut Registry, name: &str, help: &str, metric: M) -> M {
    registry.register(name, help, metric.clone());
    metric
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_are_counted_by_component_and_kind() {
        let metrics = Metrics::default();
        metrics.count_error(Component::Netlink, "permission_denied");
        metrics.count_error(Component::Netlink, "permission_denied");
        metrics.count_error(Component::Leader, "replace");
        let text = metrics.encode();
        assert!(
            text.contains(
                "l3lb_errors_total{component=\"netlink\",kind=\"permission_denied\"} 2\n"
            ),
            "{text}"
        );
        assert!(
            text.contains("l3lb_errors_total{component=\"leader\",kind=\"replace\"} 1\n"),
            "{text}"
        );
    }
}
