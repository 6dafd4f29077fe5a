//! How well each node has served this node's calls: errors, calls it never answered and
//! commands it advertised but did not serve raise a penalty that fades with time, and routing
//! prefers nodes with lower penalties. A node that misbehaves (by fault or by intent) is
//! demoted; calls go to healthy replicas; after a while it gets calls again and earns its place
//! back.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// Penalties count up to this in the factor (4^20: any route wins over such a node).
const MAX_PENALTY: f64 = 20.0;

/// A penalty halves over this.
const HALF_LIFE: Duration = Duration::from_secs(10);

/// How a call to a node ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Answered,
    /// It answered with an error of its own making (not the caller's: wrong arguments or a
    /// denied call are not held against it).
    Failed,
    /// It advertised the command and did not serve it.
    Lied,
    /// It never answered (timed out, or went away with the call).
    Dropped,
}

#[derive(Debug, Default)]
pub struct Scores {
    penalties: BTreeMap<String, (f64, Instant)>,
}

impl Scores {
    fn current(&self, node: &str, now: Instant) -> f64 {
        self.penalties.get(node).map_or(0.0, |(penalty, at)| {
            let halves = now.duration_since(*at).as_secs_f64() / HALF_LIFE.as_secs_f64();
            penalty * 0.5f64.powf(halves)
        })
    }

    pub fn record(&mut self, node: &str, outcome: Outcome, now: Instant) {
        let penalty = self.current(node, now);
        let penalty = match outcome {
            Outcome::Answered => penalty / 2.0,
            Outcome::Failed => penalty + 1.0,
            Outcome::Lied => penalty + 2.0,
            Outcome::Dropped => penalty + 4.0,
        };
        if penalty < 0.01 {
            self.penalties.remove(node);
        } else {
            self.penalties.insert(node.to_string(), (penalty.min(1000.0), now));
        }
    }

    /// What a node's estimated cost is multiplied by: 1 for a node that served well, 4 to the
    /// power of its penalty for one that did not (×4 after one error, ×256 after a dropped
    /// call, ×1024 after five errors in a row). Exponential, so that a few bad answers outweigh
    /// any difference of round-trip times (one slow ping can make a healthy link look 1000
    /// times slower than another).
    pub fn factor(&self, node: &str, now: Instant) -> u64 {
        4f64.powf(self.current(node, now).min(MAX_PENALTY)).round() as u64
    }

    /// The penalty of each node that has one, for `weft peers`.
    pub fn penalty(&self, node: &str, now: Instant) -> f64 {
        self.current(node, now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_demote_and_answers_restore() {
        let mut scores = Scores::default();
        let now = Instant::now();
        assert_eq!(scores.factor("a", now), 1);
        scores.record("a", Outcome::Failed, now);
        assert_eq!(scores.factor("a", now), 4);
        scores.record("a", Outcome::Dropped, now);
        assert_eq!(scores.factor("a", now), 1024);
        for _ in 0..100 {
            scores.record("b", Outcome::Failed, now);
        }
        assert_eq!(scores.factor("b", now), 4u64.pow(20), "bounded");
        for _ in 0..10 {
            scores.record("a", Outcome::Answered, now);
        }
        assert_eq!(scores.factor("a", now), 1);
        assert_eq!(scores.factor("c", now), 1, "a node never called is not penalised");
    }
}
