//! Dependency-resolving requests on one node (SCENARIOS.md 2–6 and 26).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use serde_json::json;
use support::{cmd, error_code, error_details, rpc, TestNode};

#[tokio::test]
async fn chained_steps_consume_whole_results() {
    // Scenario 2, both steps on one node.
    let node = TestNode::start(&["scenarios"], &[]).await;
    let client = node.client().await;
    let response = client
        .request(rpc(json!([
            {"name": "step1_result", "fun": "first_step", "args": ["test_input"], "locs": ["step1"]},
            {"name": "step2_result", "fun": "second_step", "args": ["step1_result", 5], "locs": ["step2"]},
        ])))
        .await
        .unwrap();
    assert_eq!(
        response["r"],
        json!({"step2_result": {"final": "final_processed_test_input", "computed": 210}})
    );
}

#[tokio::test]
async fn field_references_pass_a_field_of_a_result() {
    // Scenario 3.
    let node = TestNode::start(&["scenarios"], &[]).await;
    let client = node.client().await;
    let response = client
        .request(rpc(json!([
            cmd("edge_data", "process_sensors", json!(["temp", [20.1, 20.5, 21.0]])),
            cmd("alert", "check_alert", json!([20.8, "edge_data.average"])),
        ])))
        .await
        .unwrap();
    let received = response["r"]["alert"]["value"].as_f64().unwrap();
    assert!((received - 20.533333333).abs() < 1e-6, "{response}");
    assert_eq!(response["r"]["alert"]["alert"], json!(false));
}

#[tokio::test]
async fn three_steps_with_two_field_references() {
    // Scenario 4.
    let node = TestNode::start(&["scenarios"], &[]).await;
    let client = node.client().await;
    let response = client
        .request(rpc(json!([
            cmd("step1_result", "first_step", json!(["test_input"])),
            cmd("step2_result", "second_step", json!(["step1_result", 5])),
            cmd(
                "final",
                "third_step",
                json!(["step2_result.final", "step2_result.computed"])
            ),
        ])))
        .await
        .unwrap();
    assert_eq!(response["r"]["final"]["ultimate_number"], json!(226));
    assert_eq!(
        response["r"]["final"]["ultimate"],
        json!("ultimate_final_processed_test_input")
    );
}

#[tokio::test]
async fn every_unconsumed_result_is_returned() {
    // Scenario 5: an independent leaf next to a chain. MPREG drops the leaf; weft returns it.
    let node = TestNode::start(&["scenarios", "math"], &[]).await;
    let client = node.client().await;
    let response = client
        .request(rpc(json!([
            cmd("leaf", "math.add", json!([1, 2])),
            cmd("start", "first_step", json!(["x"])),
            cmd("end", "second_step", json!(["start", 2])),
        ])))
        .await
        .unwrap();
    assert_eq!(
        response["r"],
        json!({"leaf": 3, "end": {"final": "final_processed_x", "computed": 84}})
    );
}

#[tokio::test]
async fn a_list_of_references_receives_every_branch() {
    // Scenario 6 on one node: three parallel branches joined by one command.
    let node = TestNode::start(&["scenarios"], &[]).await;
    let client = node.client().await;
    let response = client
        .request(rpc(json!([
            cmd("gpu_branch", "branch", json!(["gpu", 1])),
            cmd("cpu_branch", "branch", json!(["cpu", 2])),
            cmd("db_branch", "branch", json!(["db", 3])),
            cmd(
                "x",
                "analytics",
                json!(["report", ["gpu_branch", "cpu_branch", "db_branch"]])
            ),
        ])))
        .await
        .unwrap();
    assert_eq!(
        response["r"]["x"],
        json!({"name": "report", "count": 3, "inputs": [
            {"branch": "gpu", "value": 2}, {"branch": "cpu", "value": 4}, {"branch": "db", "value": 6}
        ]})
    );
}

#[tokio::test]
async fn references_in_kwargs_and_nested_values_are_resolved() {
    let node = TestNode::start(&["scenarios", "math"], &[]).await;
    let client = node.client().await;
    let response = client
        .request(rpc(json!([
            cmd("n", "math.add", json!([40, 2])),
            cmd("s", "first_step", json!(["y"])),
            {"name": "g", "fun": "testing.greet", "args": [], "kwargs": {"name": "s.result", "greeting": "Hi"}},
            {"name": "e", "fun": "echo", "args": [{"deep": ["n", {"again": "s.number"}], "plain": "not-a-ref"}]},
        ])))
        .await
        .unwrap();
    assert_eq!(response["r"]["g"], json!("Hi, processed_y!"));
    assert_eq!(
        response["r"]["e"],
        json!({"deep": [42, {"again": 42}], "plain": "not-a-ref"})
    );
}

#[tokio::test]
async fn levels_run_concurrently() {
    let node = TestNode::start(&["scenarios"], &[]).await;
    let client = node.client().await;
    let started = std::time::Instant::now();
    let response = client
        .request(rpc(json!([
            cmd("a", "testing.sleep", json!([700, "first"])),
            cmd("b", "testing.sleep", json!([700, "second"])),
            cmd("c", "testing.sleep", json!([700, "third"])),
        ])))
        .await
        .unwrap();
    assert_eq!(
        response["r"],
        json!({"a": "first", "b": "second", "c": "third"}),
        "{response}"
    );
    // Run one after another they would take 2.1 s.
    assert!(
        started.elapsed() < std::time::Duration::from_millis(1900),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn intermediate_results_and_execution_summary() {
    // Scenario 26.
    let node = TestNode::start(&["scenarios"], &[]).await;
    let client = node.client().await;
    let mut request = rpc(json!([
        cmd("s1", "first_step", json!(["v"])),
        cmd("s2", "second_step", json!(["s1", 2])),
        cmd("s3", "third_step", json!(["s2.final", "s2.computed"])),
    ]));
    request["return_intermediate_results"] = json!(true);
    let response = client.request(request).await.unwrap();
    let steps = response["intermediate_results"].as_array().unwrap();
    assert_eq!(steps.len(), 3);
    for (i, step) in steps.iter().enumerate() {
        assert_eq!(step["level_index"], json!(i));
        assert_eq!(step["completed_levels"], json!(i + 1));
        assert_eq!(step["total_levels"], json!(3));
        assert_eq!(step["accumulated_results"].as_object().unwrap().len(), i + 1);
        assert_eq!(step["level_results"].as_object().unwrap().len(), 1);
    }
    assert_eq!(steps[0]["accumulated_results"]["s1"]["number"], json!(42));
    assert_eq!(response["r"]["s3"]["ultimate_number"], json!(100));

    let mut request = rpc(json!([
        cmd("a", "first_step", json!(["1"])),
        cmd("b", "first_step", json!(["2"])),
        cmd("c", "second_step", json!(["a", 1])),
    ]));
    request["include_execution_summary"] = json!(true);
    let response = client.request(request).await.unwrap();
    let summary = &response["execution_summary"];
    assert_eq!(summary["total_levels"], json!(2));
    assert_eq!(summary["parallel_commands_executed"], json!(3));
    assert_eq!(summary["level_execution_times"].as_array().unwrap().len(), 2);
    assert!(summary["total_execution_time_ms"].as_f64().unwrap() > 0.0);
    assert!(response.get("intermediate_results").is_none());
}

#[tokio::test]
async fn cycles_duplicates_and_bad_references_are_clear_errors() {
    let node = TestNode::start(&["scenarios"], &[]).await;
    let client = node.client().await;
    let response = client
        .request(rpc(json!([
            cmd("a", "echo", json!(["b"])),
            cmd("b", "echo", json!(["c"])),
            cmd("c", "echo", json!(["a"]))
        ])))
        .await
        .unwrap();
    assert_eq!(error_code(&response), Some(1002));
    assert!(error_details(&response).contains("cycle"), "{response}");
    // A command naming itself in its arguments is a cycle too.
    let response = client
        .request(rpc(json!([cmd("me", "echo", json!(["me"]))])))
        .await
        .unwrap();
    assert_eq!(error_code(&response), Some(1002));
    assert!(
        error_details(&response).contains("cycle among commands [\"me\"]"),
        "{response}"
    );

    let response = client
        .request(rpc(json!([cmd("a", "echo", json!([1])), cmd("a", "echo", json!([2]))])))
        .await
        .unwrap();
    assert_eq!(error_code(&response), Some(1002));
    assert!(
        error_details(&response).contains("duplicate command name `a`"),
        "{response}"
    );

    let response = client
        .request(rpc(json!([
            cmd("s", "first_step", json!(["v"])),
            cmd("t", "echo", json!(["s.missing"]))
        ])))
        .await
        .unwrap();
    assert_eq!(error_code(&response), Some(1003));
    assert!(error_details(&response).contains("no field `missing`"), "{response}");
}

#[tokio::test]
async fn references_cannot_multiply_a_request() {
    // Each level doubles the previous one; resolved naively, 40 levels would need 2^40 values.
    let node = TestNode::start(&[], &["--max-frame-bytes=1048576"]).await;
    let client = node.client().await;
    let mut cmds = vec![cmd("l0", "echos", json!(["x", "x"]))];
    for i in 1..40 {
        let previous = format!("l{}", i - 1);
        cmds.push(cmd(&format!("l{i}"), "echos", json!([previous, previous])));
    }
    let response = client.request(rpc(json!(cmds))).await.unwrap();
    assert_eq!(error_code(&response), Some(1003), "{response}");
    assert!(error_details(&response).contains("request size limit"), "{response}");
    let echoed = client
        .call("echo", vec![json!("alive")], support::no_kwargs(), &[])
        .await
        .unwrap();
    assert_eq!(echoed, json!("alive"));
}

#[tokio::test]
async fn requests_over_the_command_limit_are_refused() {
    let node = TestNode::start(&[], &[]).await;
    let client = node.client().await;
    let cmds: Vec<_> = (0..1001).map(|i| cmd(&format!("c{i}"), "echo", json!([i]))).collect();
    let response = client.request(rpc(json!(cmds))).await.unwrap();
    assert_eq!(error_code(&response), Some(1002), "{response}");
    assert!(error_details(&response).contains("at most 1000 commands"), "{response}");
}
