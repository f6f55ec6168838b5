//! Results of the benchmark: metrics, scenario results, and the percentiles of latencies.
//!
//! Plain data and arithmetic; printing and charts are in `report`.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// One measured number.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Metric {
    pub name: String,
    pub value: f64,
    pub unit: String,
    /// True when a larger value is better (throughput), false when smaller is (latency, memory).
    pub higher_is_better: bool,
}

impl Metric {
    pub fn higher(name: &str, value: f64, unit: &str) -> Metric {
        Metric { name: name.to_owned(), value, unit: unit.to_owned(), higher_is_better: true }
    }

    pub fn lower(name: &str, value: f64, unit: &str) -> Metric {
        Metric { higher_is_better: false, ..Metric::higher(name, value, unit) }
    }
}

/// The metrics of one scenario run against one server (`label`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ScenarioResult {
    pub label: String,
    pub scenario: String,
    pub metrics: Vec<Metric>,
    /// Failures and remarks (the first few error messages, a skipped measurement).
    #[serde(default)]
    pub notes: Vec<String>,
}

/// The `p`-th percentile (0 to 100) by the nearest-rank method; `None` for no samples.
pub fn percentile(sorted: &[f64], p: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (p / 100.0 * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

/// Latencies in milliseconds, sorted.
pub fn sorted_ms(latencies: impl IntoIterator<Item = Duration>) -> Vec<f64> {
    let mut ms: Vec<f64> = latencies.into_iter().map(|d| d.as_secs_f64() * 1000.0).collect();
    ms.sort_by(f64::total_cmp);
    ms
}

/// `count / elapsed`, zero when no time passed.
pub fn rate(count: f64, elapsed: Duration) -> f64 {
    let secs = elapsed.as_secs_f64();
    if secs > 0.0 {
        count / secs
    } else {
        0.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let data: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&data, 50.0), Some(50.0));
        assert_eq!(percentile(&data, 99.0), Some(99.0));
        assert_eq!(percentile(&data, 100.0), Some(100.0));
        assert_eq!(percentile(&data, 0.0), Some(1.0));
        assert_eq!(percentile(&[7.0], 99.0), Some(7.0));
        assert_eq!(percentile(&[], 50.0), None);
    }

    #[test]
    fn small_sample_p99_is_the_max() {
        assert_eq!(percentile(&[1.0, 2.0, 3.0], 99.0), Some(3.0));
        assert_eq!(percentile(&[1.0, 2.0, 3.0, 4.0], 50.0), Some(2.0));
    }

    #[test]
    fn sorting_and_rates() {
        let ms = sorted_ms([Duration::from_millis(3), Duration::from_millis(1)]);
        assert_eq!(ms, [1.0, 3.0]);
        assert_eq!(rate(10.0, Duration::from_secs(2)), 5.0);
        assert_eq!(rate(10.0, Duration::ZERO), 0.0);
    }
}
