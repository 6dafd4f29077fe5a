//! The node's counters, exported in the Prometheus text format at `/metrics`.
//!
//! Calls are counted where a plugin runs them ([`crate::rpc::Executor`]): per command and tenant,
//! by outcome, with a latency histogram. The rest (plugins, warm instances, peers, catalog) is read
//! from the node's state when `/metrics` is asked for.

use std::collections::HashMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

/// Upper bounds of the latency histogram's buckets, in seconds.
const BUCKETS: [f64; 12] = [
    0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 1.0, 10.0,
];

/// How one call ended, as counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    /// The command failed, its arguments did not fit, or its plugin trapped.
    Error,
    /// It ran out of time.
    Timeout,
}

impl Outcome {
    fn label(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Error => "error",
            Outcome::Timeout => "timeout",
        }
    }
}

#[derive(Default)]
struct CallStats {
    ok: AtomicU64,
    error: AtomicU64,
    timeout: AtomicU64,
    /// Calls at or below each bucket's bound (not cumulative; summed when rendered).
    buckets: [AtomicU64; BUCKETS.len()],
    /// Total time, in microseconds.
    micros: AtomicU64,
}

/// Requests refused by a tenant's limits, by kind.
#[derive(Default)]
struct Refusals {
    rate: AtomicU64,
    busy: AtomicU64,
}

/// Every counter of a node.
#[derive(Default)]
pub struct Metrics {
    /// By command, then by tenant: looked up with borrowed names, so counting allocates only
    /// the first time a pair is seen.
    calls: RwLock<HashMap<String, HashMap<String, Arc<CallStats>>>>,
    refusals: Refusals,
}

impl Metrics {
    /// Counts one call of `command` for `tenant` (`""` on an open node) that took `elapsed`.
    pub fn call(&self, command: &str, tenant: &str, outcome: Outcome, elapsed: Duration) {
        let stats = self.stats(command, tenant);
        let counter = match outcome {
            Outcome::Ok => &stats.ok,
            Outcome::Error => &stats.error,
            Outcome::Timeout => &stats.timeout,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        let seconds = elapsed.as_secs_f64();
        if let Some(bucket) = BUCKETS.iter().position(|bound| seconds <= *bound) {
            stats.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        }
        let micros = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        stats.micros.fetch_add(micros, Ordering::Relaxed);
    }

    /// Counts a request refused for its tenant's rate (`busy`: its running requests).
    pub fn refused(&self, busy: bool) {
        let counter = if busy { &self.refusals.busy } else { &self.refusals.rate };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    fn stats(&self, command: &str, tenant: &str) -> Arc<CallStats> {
        let found = self
            .calls
            .read()
            .ok()
            .and_then(|calls| calls.get(command)?.get(tenant).cloned());
        if let Some(stats) = found {
            return stats;
        }
        match self.calls.write() {
            Ok(mut calls) => calls
                .entry(command.to_string())
                .or_default()
                .entry(tenant.to_string())
                .or_default()
                .clone(),
            Err(_) => Arc::default(),
        }
    }

    /// Calls run on this node so far, by command (every tenant and outcome).
    pub fn totals(&self) -> std::collections::BTreeMap<String, u64> {
        let Ok(calls) = self.calls.read() else {
            return Default::default();
        };
        calls
            .iter()
            .map(|(command, tenants)| {
                let total = tenants
                    .values()
                    .map(|s| {
                        s.ok.load(Ordering::Relaxed)
                            + s.error.load(Ordering::Relaxed)
                            + s.timeout.load(Ordering::Relaxed)
                    })
                    .sum();
                (command.clone(), total)
            })
            .collect()
    }

    /// The call counters and histograms in the Prometheus text format.
    pub fn render_calls(&self, out: &mut String) {
        let Ok(calls) = self.calls.read() else { return };
        let mut rows: Vec<(&str, &str, &CallStats)> = calls
            .iter()
            .flat_map(|(command, tenants)| {
                tenants
                    .iter()
                    .map(move |(tenant, s)| (command.as_str(), tenant.as_str(), &**s))
            })
            .collect();
        rows.sort_by_key(|(command, tenant, _)| (*command, *tenant));
        let _ = writeln!(
            out,
            "# HELP weft_calls_total Plugin calls run on this node, by command, tenant and outcome."
        );
        let _ = writeln!(out, "# TYPE weft_calls_total counter");
        for (command, tenant, stats) in &rows {
            for (outcome, counter) in [
                (Outcome::Ok, &stats.ok),
                (Outcome::Error, &stats.error),
                (Outcome::Timeout, &stats.timeout),
            ] {
                let _ = writeln!(
                    out,
                    "weft_calls_total{{command=\"{}\",tenant=\"{}\",outcome=\"{}\"}} {}",
                    escape(command),
                    escape(tenant),
                    outcome.label(),
                    counter.load(Ordering::Relaxed)
                );
            }
        }
        let _ = writeln!(
            out,
            "# HELP weft_call_duration_seconds Time plugin calls took on this node."
        );
        let _ = writeln!(out, "# TYPE weft_call_duration_seconds histogram");
        for (command, tenant, stats) in &rows {
            let labels = format!("command=\"{}\",tenant=\"{}\"", escape(command), escape(tenant));
            let mut cumulative = 0;
            for (bound, bucket) in BUCKETS.iter().zip(&stats.buckets) {
                cumulative += bucket.load(Ordering::Relaxed);
                let _ = writeln!(
                    out,
                    "weft_call_duration_seconds_bucket{{{labels},le=\"{bound}\"}} {cumulative}"
                );
            }
            let count = stats.ok.load(Ordering::Relaxed)
                + stats.error.load(Ordering::Relaxed)
                + stats.timeout.load(Ordering::Relaxed);
            let _ = writeln!(out, "weft_call_duration_seconds_bucket{{{labels},le=\"+Inf\"}} {count}");
            let sum = stats.micros.load(Ordering::Relaxed) as f64 / 1e6;
            let _ = writeln!(out, "weft_call_duration_seconds_sum{{{labels}}} {sum}");
            let _ = writeln!(out, "weft_call_duration_seconds_count{{{labels}}} {count}");
        }
        let _ = writeln!(
            out,
            "# HELP weft_tenant_refusals_total Requests refused by their tenant's limits."
        );
        let _ = writeln!(out, "# TYPE weft_tenant_refusals_total counter");
        let _ = writeln!(
            out,
            "weft_tenant_refusals_total{{limit=\"calls_per_second\"}} {}",
            self.refusals.rate.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "weft_tenant_refusals_total{{limit=\"max_concurrent\"}} {}",
            self.refusals.busy.load(Ordering::Relaxed)
        );
    }
}

/// A label value with `\`, `"` and newlines escaped.
pub fn escape(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calls_are_counted_by_outcome_and_bucketed_cumulatively() {
        let metrics = Metrics::default();
        metrics.call("math.add", "", Outcome::Ok, Duration::from_micros(80));
        metrics.call("math.add", "", Outcome::Ok, Duration::from_millis(3));
        metrics.call("math.add", "", Outcome::Error, Duration::from_millis(30));
        let mut out = String::new();
        metrics.render_calls(&mut out);
        assert!(
            out.contains("weft_calls_total{command=\"math.add\",tenant=\"\",outcome=\"ok\"} 2"),
            "{out}"
        );
        assert!(out.contains("weft_calls_total{command=\"math.add\",tenant=\"\",outcome=\"error\"} 1"));
        assert!(out.contains("weft_call_duration_seconds_bucket{command=\"math.add\",tenant=\"\",le=\"0.0001\"} 1"));
        assert!(out.contains("weft_call_duration_seconds_bucket{command=\"math.add\",tenant=\"\",le=\"0.005\"} 2"));
        assert!(out.contains("weft_call_duration_seconds_bucket{command=\"math.add\",tenant=\"\",le=\"+Inf\"} 3"));
        assert!(out.contains("weft_call_duration_seconds_count{command=\"math.add\",tenant=\"\"} 3"));
    }
}
