//! The daemon's Prometheus metrics: one registry, served as OpenMetrics text on `/metrics`.

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};

use crate::apply::Report;

/// The `Content-Type` of [`Metrics::encode`]'s output; Prometheus picks its parser by it.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Upper bounds of the reconcile duration buckets, in seconds: from a no-op reconcile of a
/// small repository (milliseconds) to a first sync of a large app at 100 calls/s (minutes).
const DURATION_BUCKETS: [f64; 14] = [
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CallLabels {
    endpoint: String,
    outcome: String,
}

/// Every metric the daemon exports, registered once.
pub struct Metrics {
    registry: Registry,
    reconciles: Family<ResultLabels, Counter>,
    reconcile_duration: Histogram,
    users_applied: Counter,
    users_failed: Counter,
    api_calls: Family<CallLabels, Counter>,
    api_retries: Counter,
    api_throttled: Counter,
    last_success: Gauge<f64, AtomicU64>,
    pending_changes: Gauge,
    desired_users: Gauge,
    watch_polling: Gauge,
    leader: Gauge,
    drift_users: Counter,
    drift_scan_progress: Gauge,
    drift_last_pass: Gauge<f64, AtomicU64>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Registers every metric; both reconcile results start at 0 so that rates and alerts
    /// work before the first failure.
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let reconciles = Family::<ResultLabels, Counter>::default();
        registry.register(
            "attrsync_reconciles",
            "Reconciles finished, by result (success or failure)",
            reconciles.clone(),
        );
        for result in ["success", "failure"] {
            let _ = reconciles.get_or_create(&ResultLabels { result });
        }
        let reconcile_duration = Histogram::new(DURATION_BUCKETS);
        registry.register_with_unit(
            "attrsync_reconcile_duration",
            "How long a reconcile took: load, plan and apply",
            Unit::Seconds,
            reconcile_duration.clone(),
        );
        let users_applied = Counter::default();
        registry.register(
            "attrsync_users_applied",
            "Users created, updated or deleted on the server and recorded in the snapshot",
            users_applied.clone(),
        );
        let users_failed = Counter::default();
        registry.register(
            "attrsync_users_failed",
            "Users the server refused or that could not be sent",
            users_failed.clone(),
        );
        let api_calls = Family::<CallLabels, Counter>::default();
        registry.register(
            "attrsync_api_calls",
            "API call attempts, by endpoint and outcome (ok, throttled, transient, usersig_expired, fatal)",
            api_calls.clone(),
        );
        let api_retries = Counter::default();
        registry.register(
            "attrsync_api_retries",
            "API calls repeated after a transient failure, a rate-limit answer or an expired UserSig",
            api_retries.clone(),
        );
        let api_throttled = Counter::default();
        registry.register(
            "attrsync_api_throttled",
            "Rate-limit answers from the server",
            api_throttled.clone(),
        );
        let last_success = Gauge::<f64, AtomicU64>::default();
        registry.register_with_unit(
            "attrsync_last_success_timestamp",
            "When the last successful reconcile finished, as Unix time",
            Unit::Seconds,
            last_success.clone(),
        );
        let pending_changes = Gauge::default();
        registry.register(
            "attrsync_pending_changes",
            "Users the last plan would write that are not applied yet",
            pending_changes.clone(),
        );
        let desired_users = Gauge::default();
        registry.register(
            "attrsync_desired_users",
            "Users declared by the last valid config",
            desired_users.clone(),
        );
        let watch_polling = Gauge::default();
        registry.register(
            "attrsync_watch_polling",
            "1 when file events are unavailable (inotify limit) and the config directory is polled instead",
            watch_polling.clone(),
        );
        let leader = Gauge::default();
        registry.register(
            "attrsync_leader",
            "1 while this daemon is the active one (it holds the snapshot's write lock), 0 on a standby",
            leader.clone(),
        );
        let drift_users = Counter::default();
        registry.register(
            "attrsync_drift_users",
            "Users whose live attributes differed from the snapshot when the drift scan read them",
            drift_users.clone(),
        );
        let drift_scan_progress = Gauge::default();
        registry.register(
            "attrsync_drift_scan_progress",
            "Users read by the drift scan in its current pass",
            drift_scan_progress.clone(),
        );
        let drift_last_pass = Gauge::<f64, AtomicU64>::default();
        registry.register_with_unit(
            "attrsync_drift_last_pass_timestamp",
            "When the drift scan last finished a pass over every managed user, as Unix time",
            Unit::Seconds,
            drift_last_pass.clone(),
        );
        Self {
            registry,
            reconciles,
            reconcile_duration,
            users_applied,
            users_failed,
            api_calls,
            api_retries,
            api_throttled,
            last_success,
            pending_changes,
            desired_users,
            watch_polling,
            leader,
            drift_users,
            drift_scan_progress,
            drift_last_pass,
        }
    }

    /// The metrics in the OpenMetrics text format (served with [`CONTENT_TYPE`]).
    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }

    /// Counts one finished reconcile.
    pub(crate) fn reconciled(&self, success: bool, seconds: f64) {
        let result = if success { "success" } else { "failure" };
        self.reconciles
            .get_or_create(&ResultLabels { result })
            .inc();
        self.reconcile_duration.observe(seconds);
        if success {
            self.last_success.set(crate::clock::unix_seconds_f64());
        }
    }

    /// Adds what an apply did.
    pub(crate) fn applied(&self, report: &Report) {
        self.users_applied.inc_by(report.applied() as u64);
        // Users a shutdown left unsent did not fail: they are sent at the next start.
        let unsendable = if report.interrupted {
            0
        } else {
            report.skipped
        };
        self.users_failed
            .inc_by((report.failed.len() + unsendable) as u64);
        self.api_retries.inc_by(report.retries as u64);
        self.api_throttled.inc_by(report.throttled as u64);
        for (endpoint, outcomes) in &report.calls_by_endpoint {
            for (outcome, calls) in outcomes {
                let labels = CallLabels {
                    endpoint: endpoint.name().to_owned(),
                    outcome: outcome.name().to_owned(),
                };
                self.api_calls.get_or_create(&labels).inc_by(*calls as u64);
            }
        }
    }

    /// Sets the size of the desired state and of the work left.
    pub(crate) fn planned(&self, desired_users: usize, pending_changes: usize) {
        self.desired_users.set(desired_users as i64);
        self.pending_changes.set(pending_changes as i64);
    }

    /// Counts users found drifted, and the drift scan's calls.
    pub(crate) fn drifted(&self, users: usize) {
        self.drift_users.inc_by(users as u64);
    }

    /// Counts one drift-scan call's outcome.
    pub(crate) fn drift_call(&self, outcome: &str) {
        self.api_calls
            .get_or_create(&CallLabels {
                endpoint: "get_attr".to_owned(),
                outcome: outcome.to_owned(),
            })
            .inc();
    }

    /// Sets how many users the current drift pass has read.
    pub(crate) fn drift_progress(&self, users: usize) {
        self.drift_scan_progress.set(users as i64);
    }

    /// Records the end of a full drift pass.
    pub(crate) fn drift_pass_done(&self) {
        self.drift_last_pass.set(crate::clock::unix_seconds_f64());
        self.drift_scan_progress.set(0);
    }

    /// Records whether the config directory is polled instead of watched.
    pub(crate) fn polling(&self, polling: bool) {
        self.watch_polling.set(i64::from(polling));
    }

    /// Whether this daemon is the active one.
    pub fn leader(&self, active: bool) {
        self.leader.set(i64::from(active));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_contract() {
        let metrics = Metrics::new();
        let mut report = Report {
            created: 2,
            retries: 1,
            throttled: 1,
            ..Report::default()
        };
        report
            .calls_by_endpoint
            .entry(crate::api::Endpoint::SetAttr)
            .or_default()
            .insert(crate::apply::CallOutcome::Ok, 3);
        metrics.applied(&report);
        metrics.reconciled(true, 0.2);
        metrics.planned(10, 0);
        let text = metrics.encode();
        for sample in [
            "attrsync_reconciles_total{result=\"success\"} 1",
            "attrsync_reconciles_total{result=\"failure\"} 0",
            "attrsync_reconcile_duration_seconds_count 1",
            "attrsync_users_applied_total 2",
            "attrsync_users_failed_total 0",
            "attrsync_api_calls_total{endpoint=\"set_attr\",outcome=\"ok\"} 3",
            "attrsync_api_retries_total 1",
            "attrsync_api_throttled_total 1",
            "attrsync_pending_changes 0",
            "attrsync_desired_users 10",
            "attrsync_watch_polling 0",
        ] {
            assert!(text.contains(sample), "missing {sample:?} in\n{text}");
        }
        assert!(
            text.contains("attrsync_last_success_timestamp_seconds 1"),
            "{text}"
        );
        assert!(text.ends_with("# EOF\n"));
    }
}
