//! Arithmetic and statistics over numbers.

use serde::Serialize;

#[derive(Serialize)]
struct Stats {
    count: usize,
    sum: f64,
    mean: f64,
    min: f64,
    max: f64,
    median: f64,
    stddev: f64,
}

weft_plugin::plugin! {
    /// Add two numbers.
    #[command(name = "math.add", resources = ["math"], version = "1.0.0")]
    fn add(a: serde_json::Number, b: serde_json::Number) -> Result<serde_json::Value, String> {
        Ok(number_op(&a, &b, i64::checked_add, |x, y| x + y))
    }

    /// Multiply two numbers.
    #[command(name = "math.mul", resources = ["math"], version = "1.0.0")]
    fn mul(a: serde_json::Number, b: serde_json::Number) -> Result<serde_json::Value, String> {
        Ok(number_op(&a, &b, i64::checked_mul, |x, y| x * y))
    }

    /// Sum a list of numbers.
    #[command(name = "math.sum", resources = ["math"], version = "1.0.0")]
    fn sum(values: Vec<f64>) -> Result<f64, String> {
        Ok(values.iter().sum())
    }

    /// Count, sum, mean, min, max, median and population standard deviation of a list.
    #[command(name = "math.stats", resources = ["math"], version = "1.0.0")]
    fn stats(values: Vec<f64>) -> Result<Stats, String> {
        if values.is_empty() {
            return Err("math.stats: needs at least one value".to_string());
        }
        let count = values.len();
        let sum: f64 = values.iter().sum();
        let mean = sum / count as f64;
        let mut sorted = values.clone();
        sorted.sort_by(f64::total_cmp);
        let median = if count % 2 == 1 {
            sorted[count / 2]
        } else {
            (sorted[count / 2 - 1] + sorted[count / 2]) / 2.0
        };
        let variance = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / count as f64;
        Ok(Stats { count, sum, mean, min: sorted[0], max: sorted[count - 1], median, stddev: variance.sqrt() })
    }
}

/// Integers stay integers (as a JSON client expects `2 + 3` to give `5`, not `5.0`) unless they
/// overflow; anything else is computed in floating point.
fn number_op(
    a: &serde_json::Number,
    b: &serde_json::Number,
    int_op: fn(i64, i64) -> Option<i64>,
    float_op: fn(f64, f64) -> f64,
) -> serde_json::Value {
    if let (Some(x), Some(y)) = (a.as_i64(), b.as_i64()) {
        if let Some(r) = int_op(x, y) {
            return r.into();
        }
    }
    let x = a.as_f64().unwrap_or(f64::NAN);
    let y = b.as_f64().unwrap_or(f64::NAN);
    serde_json::Number::from_f64(float_op(x, y)).map_or(serde_json::Value::Null, serde_json::Value::Number)
}
