//! Latency distributions (HdrHistogram, microsecond resolution).

use std::time::Duration;

use hdrhistogram::Histogram;

/// Percentiles of one distribution, in milliseconds.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct Latency {
    pub count: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
}

pub struct Recorder(Histogram<u64>);

impl Default for Recorder {
    fn default() -> Self {
        // 1 µs .. 10 min, 3 significant digits.
        Recorder(Histogram::new_with_bounds(1, 600_000_000, 3).expect("valid histogram bounds"))
    }
}

impl Recorder {
    pub fn record(&mut self, d: Duration) {
        let micros = (d.as_micros() as u64).clamp(1, 600_000_000);
        // Within the bounds by the clamp above, so recording cannot fail.
        let _ = self.0.record(micros);
    }

    pub fn summary(&self) -> Latency {
        let ms = |q: f64| self.0.value_at_quantile(q) as f64 / 1000.0;
        Latency {
            count: self.0.len(),
            p50_ms: ms(0.5),
            p99_ms: ms(0.99),
            p999_ms: ms(0.999),
            max_ms: self.0.max() as f64 / 1000.0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_of_a_known_distribution() {
        let mut r = Recorder::default();
        for ms in 1..=1000u64 {
            r.record(Duration::from_millis(ms));
        }
        let s = r.summary();
        assert_eq!(s.count, 1000);
        assert!((s.p50_ms - 500.0).abs() < 1.0, "{s:?}");
        assert!((s.p99_ms - 990.0).abs() < 1.0, "{s:?}");
        assert!((s.max_ms - 1000.0).abs() < 1.0, "{s:?}");
    }
}
