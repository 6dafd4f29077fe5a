//! Commands of MPREG's behavioural scenarios (see SCENARIOS.md), used by the test suite.

use serde::Deserialize;
use serde_json::{json, Value};

#[derive(Deserialize)]
struct Step1 {
    result: String,
    number: i64,
}

weft_plugin::plugin! {
    /// Scenario 2, step 1.
    #[command(name = "first_step", resources = ["step1"], version = "1.0.0")]
    fn first_step(value: String) -> Result<Value, String> {
        Ok(json!({ "result": format!("processed_{value}"), "number": 42 }))
    }

    /// Scenario 2, step 2: consumes step 1's whole result.
    #[command(name = "second_step", resources = ["step2"], version = "1.0.0")]
    fn second_step(data: Step1, multiplier: i64) -> Result<Value, String> {
        Ok(json!({ "final": format!("final_{}", data.result), "computed": data.number * multiplier }))
    }

    /// Scenario 4, step 3: consumes two fields of step 2.
    #[command(name = "third_step", resources = ["step3"], version = "1.0.0")]
    fn third_step(final_text: String, computed: i64) -> Result<Value, String> {
        Ok(json!({ "ultimate": format!("ultimate_{final_text}"), "ultimate_number": computed + 16 }))
    }

    /// Scenario 3: summarises sensor readings.
    #[command(name = "process_sensors", resources = ["sensors"], version = "1.0.0")]
    fn process_sensors(kind: String, readings: Vec<f64>) -> Result<Value, String> {
        if readings.is_empty() {
            return Err("process_sensors: no readings".into());
        }
        let average = readings.iter().sum::<f64>() / readings.len() as f64;
        Ok(json!({ "sensor": kind, "average": average, "count": readings.len() }))
    }

    /// Scenario 3: compares a value with a threshold; returns what it received.
    #[command(name = "check_alert", resources = ["sensors"], version = "1.0.0")]
    fn check_alert(threshold: f64, value: f64) -> Result<Value, String> {
        Ok(json!({ "alert": value > threshold, "value": value, "threshold": threshold }))
    }

    /// Scenario 6: one branch of a parallel fan-out.
    #[command(name = "branch", resources = ["branches"], version = "1.0.0")]
    fn branch(label: String, value: i64) -> Result<Value, String> {
        Ok(json!({ "branch": label, "value": value * 2 }))
    }

    /// Scenario 6: joins the results of several branches.
    #[command(name = "analytics", resources = ["branches"], version = "1.0.0")]
    fn analytics(name: String, inputs: Vec<Value>) -> Result<Value, String> {
        Ok(json!({ "name": name, "count": inputs.len(), "inputs": inputs }))
    }

    /// Sleeps, then returns its tag; for concurrency tests.
    #[command(name = "testing.sleep", resources = ["testing"], version = "1.0.0")]
    fn sleep(millis: u64, tag: Option<Value>) -> Result<Value, String> {
        std::thread::sleep(std::time::Duration::from_millis(millis));
        Ok(tag.unwrap_or(Value::Null))
    }

    /// Keyword arguments with defaults: `greeting` is optional.
    #[command(name = "testing.greet", resources = ["testing"], version = "1.0.0")]
    fn greet(name: String, greeting: Option<String>) -> Result<String, String> {
        Ok(format!("{}, {name}!", greeting.as_deref().unwrap_or("Hello")))
    }
}
