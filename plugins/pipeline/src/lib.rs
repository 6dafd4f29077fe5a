//! Commands composed of other fabric commands, called through the host.

use weft_plugin::{call, log};

weft_plugin::plugin! {
    /// Statistics of a list together with a shouting summary line, computed by `math.stats`
    /// and `text.upper` wherever in the fabric they run.
    #[command(name = "pipeline.report", resources = ["pipeline"], version = "1.0.0")]
    fn report(title: String, values: Vec<f64>) -> Result<serde_json::Value, weft_plugin::Error> {
        log::info(format!("report `{title}` over {} values", values.len()));
        let stats = call("math.stats", (values,), &[])?;
        let heading = call("text.upper", (title,), &[])?;
        Ok(serde_json::json!({ "title": heading, "stats": stats }))
    }

    /// Sum of squares, each square computed by a `math.mul` call.
    #[command(name = "pipeline.sum_squares", resources = ["pipeline"], version = "1.0.0")]
    fn sum_squares(values: Vec<f64>) -> Result<f64, weft_plugin::Error> {
        let mut total = 0.0;
        for v in values {
            let square = call("math.mul", (v, v), &[])?;
            total += square.as_f64().ok_or("math.mul returned a non-number")?;
        }
        Ok(total)
    }
}
