//! Plugins that misbehave are contained, and the node keeps serving.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::time::{Duration, Instant};

use serde_json::{json, Map, Value};
use support::{cmd, error_code, error_details, no_kwargs, rpc, TestNode};
use weft::net::Client;

async fn call(client: &Client, fun: &str, args: Value) -> Value {
    client.request(rpc(json!([cmd("x", fun, args)]))).await.unwrap()
}

async fn still_serving(client: &Client) {
    assert_eq!(call(client, "hostile.ok", json!([])).await["r"], json!({"x": "ok"}));
    assert_eq!(call(client, "math.add", json!([2, 3])).await["r"], json!({"x": 5}));
}

#[tokio::test]
async fn a_trapping_plugin_returns_1003_with_its_message() {
    let node = TestNode::start(&["hostile", "math"], &[]).await;
    let client = node.client().await;
    for _ in 0..3 {
        let response = call(&client, "hostile.trap", json!(["the disk is made of lava"])).await;
        assert_eq!(error_code(&response), Some(1003), "{response}");
        let details = error_details(&response);
        assert!(details.contains("the disk is made of lava"), "{details}");
        assert!(details.contains("trapped"), "{details}");
        still_serving(&client).await;
    }
}

#[tokio::test]
async fn an_infinite_loop_is_stopped_at_the_deadline() {
    let deadline = Duration::from_millis(1000);
    let node = TestNode::start(&["hostile", "math"], &["--call-deadline-ms=1000"]).await;
    let client = node.client().await;
    let other = node.client().await;
    let started = Instant::now();
    let spinning = tokio::spawn(async move { call(&client, "hostile.spin", json!([])).await });
    // Other callers are served while the loop runs.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let quick = Instant::now();
    still_serving(&other).await;
    assert!(
        quick.elapsed() < Duration::from_millis(500),
        "a spinning plugin blocked other callers"
    );

    let response = spinning.await.unwrap();
    let elapsed = started.elapsed();
    assert_eq!(error_code(&response), Some(1004), "{response}");
    assert!(error_details(&response).contains("deadline of 1000 ms"), "{response}");
    assert!(elapsed >= deadline, "stopped early: {elapsed:?}");
    assert!(
        elapsed <= deadline + deadline / 10,
        "stopped {elapsed:?} after the call, deadline {deadline:?}"
    );
    still_serving(&other).await;
}

#[tokio::test]
async fn unbounded_memory_growth_stops_at_the_limit() {
    let node = TestNode::start(&["hostile", "math"], &["--memory-limit-mb=32"]).await;
    let client = node.client().await;
    for _ in 0..2 {
        let response = call(&client, "hostile.grow", json!([])).await;
        assert_eq!(error_code(&response), Some(1003), "{response}");
        assert!(
            error_details(&response).contains("memory limit of 32 MiB"),
            "{response}"
        );
        still_serving(&client).await;
    }
}

#[tokio::test]
async fn recursion_through_host_call_is_bounded() {
    let node = TestNode::start(&["hostile", "math"], &["--max-call-depth=8"]).await;
    let client = node.client().await;
    let response = call(&client, "hostile.recurse", json!([0])).await;
    assert_eq!(error_code(&response), Some(1003), "{response}");
    assert!(error_details(&response).contains("call depth limit of 8"), "{response}");
    still_serving(&client).await;
}

#[tokio::test]
async fn a_stack_overflow_is_a_trap_and_the_node_keeps_serving() {
    let node = TestNode::start(&["hostile", "math"], &[]).await;
    let client = node.client().await;
    // Rust keeps large locals on a stack in linear memory: running off its end is an
    // out-of-bounds access, which traps like any other.
    let response = call(&client, "hostile.overflow", json!([0])).await;
    assert_eq!(error_code(&response), Some(1003), "{response}");
    assert!(
        error_details(&response).contains("hostile.overflow: plugin trapped"),
        "{response}"
    );
    still_serving(&client).await;
}

#[tokio::test]
async fn a_plugin_sees_no_files_environment_or_network_of_the_host() {
    let node = TestNode::start(&["hostile", "math"], &[]).await;
    let client = node.client().await;
    for (fun, args, expected) in [
        ("hostile.read_file", json!(["/etc/passwd"]), "reading /etc/passwd"),
        ("hostile.list_dir", json!(["/"]), "listing /"),
        (
            "hostile.connect",
            json!([node.url().trim_start_matches("ws://")]),
            "connecting to 127.0.0.1",
        ),
    ] {
        let response = call(&client, fun, args).await;
        assert_eq!(error_code(&response), Some(1003), "{fun}: {response}");
        assert!(error_details(&response).contains(expected), "{fun}: {response}");
        still_serving(&client).await;
    }
    let response = call(&client, "hostile.env", json!(["PATH"])).await;
    assert_eq!(response["r"], json!({"x": null}), "{response}");
    let response = call(&client, "hostile.env_all", json!([])).await;
    assert_eq!(response["r"], json!({"x": []}), "{response}");
}

#[tokio::test]
async fn a_result_larger_than_a_frame_is_refused_clearly() {
    let node = TestNode::start(&["hostile", "math"], &["--max-frame-bytes=1048576"]).await;
    let client = node.client().await;
    let response = call(&client, "hostile.huge", json!([4])).await;
    assert_eq!(error_code(&response), Some(1003), "{response}");
    assert!(
        error_details(&response).contains("exceeds the limit of 1048576 bytes"),
        "{response}"
    );
    still_serving(&client).await;
}

#[tokio::test]
async fn wrong_arguments_name_the_command_and_parameter() {
    let node = TestNode::start(&["math", "scenarios"], &[]).await;
    let client = node.client().await;
    let cases = [
        ("math.add", json!([1]), "math.add: missing argument `b`"),
        (
            "math.add",
            json!([1, "two"]),
            "math.add: argument `b`: invalid type: string \"two\"",
        ),
        (
            "math.add",
            json!([1, 2, 3]),
            "math.add: takes 2 positional argument(s) but 3 were given",
        ),
        (
            "math.stats",
            json!([{"not": "a list"}]),
            "math.stats: argument `values`",
        ),
    ];
    for (fun, args, expected) in cases {
        let response = call(&client, fun, args.clone()).await;
        assert_eq!(error_code(&response), Some(1003), "{fun}{args}: {response}");
        assert_eq!(response["error"]["message"], json!("Invalid arguments"));
        assert!(error_details(&response).contains(expected), "{fun}{args}: {response}");
    }
    let response = client
        .request(rpc(
            json!([{"name": "x", "fun": "testing.greet", "args": ["Ada"], "kwargs": {"tone": "loud"}}]),
        ))
        .await
        .unwrap();
    assert!(
        error_details(&response).contains("testing.greet: unexpected keyword argument `tone`"),
        "{response}"
    );
    let response = client
        .request(rpc(
            json!([{"name": "x", "fun": "testing.greet", "args": ["Ada"], "kwargs": {"name": "Bob"}}]),
        ))
        .await
        .unwrap();
    assert!(
        error_details(&response).contains("given both by position and by keyword"),
        "{response}"
    );
}

#[tokio::test]
async fn keyword_and_optional_arguments() {
    let node = TestNode::start(&["scenarios", "math"], &[]).await;
    let client = node.client().await;
    let mut kwargs = Map::new();
    kwargs.insert("b".into(), json!(10));
    kwargs.insert("a".into(), json!(5));
    assert_eq!(client.call("math.mul", vec![], kwargs, &[]).await.unwrap(), json!(50));
    assert_eq!(
        client
            .call("testing.greet", vec![json!("Ada")], no_kwargs(), &[])
            .await
            .unwrap(),
        json!("Hello, Ada!")
    );
    let mut kwargs = Map::new();
    kwargs.insert("greeting".into(), json!("Welcome"));
    assert_eq!(
        client
            .call("testing.greet", vec![json!("Ada")], kwargs, &[])
            .await
            .unwrap(),
        json!("Welcome, Ada!")
    );
}

#[tokio::test]
async fn a_plugin_calls_other_commands_through_the_host() {
    let node = TestNode::start(&["pipeline", "math", "text"], &[]).await;
    let client = node.client().await;
    let report = client
        .call(
            "pipeline.report",
            vec![json!("weekly"), json!([3, 1, 2])],
            no_kwargs(),
            &[],
        )
        .await
        .unwrap();
    assert_eq!(report["title"], json!("WEEKLY"));
    assert_eq!(report["stats"]["median"], json!(2.0));
    assert_eq!(report["stats"]["count"], json!(3));
    let total = client
        .call("pipeline.sum_squares", vec![json!([1, 2, 3, 4])], no_kwargs(), &[])
        .await
        .unwrap();
    assert_eq!(total, json!(30.0));
}

#[tokio::test]
async fn nested_calls_never_wait_for_slots_their_callers_hold() {
    // One slot for client calls: the nested `math.stats` and `text.upper` calls of
    // `pipeline.report` must run on their caller's slot, concurrently with other clients.
    let node = TestNode::start(&["pipeline", "math", "text"], &["--max-instances=2"]).await;
    let mut tasks = Vec::new();
    for i in 0..8 {
        let url = node.url().to_string();
        tasks.push(tokio::spawn(async move {
            let client = Client::connect(&url).await.unwrap();
            client
                .call(
                    "pipeline.report",
                    vec![json!(format!("r{i}")), json!([1, 2, 3])],
                    no_kwargs(),
                    &[],
                )
                .await
        }));
    }
    for task in tasks {
        let report = tokio::time::timeout(Duration::from_secs(10), task)
            .await
            .expect("no deadlock")
            .unwrap()
            .unwrap();
        assert_eq!(report["stats"]["sum"], json!(6.0));
    }
}

#[tokio::test]
async fn a_failed_host_call_reaches_the_caller_as_an_error() {
    // `pipeline` without `text`: its `text.upper` call finds nothing.
    let node = TestNode::start(&["pipeline", "math"], &[]).await;
    let client = node.client().await;
    let response = call(&client, "pipeline.report", json!(["t", [1]])).await;
    assert_eq!(error_code(&response), Some(1001), "{response}");
    assert!(error_details(&response).contains("text.upper"), "{response}");
}

#[tokio::test]
async fn broken_files_in_the_plugin_directory_do_not_stop_the_node() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(support::plugin_file("math"), dir.path().join("math.wasm")).unwrap();
    std::fs::write(dir.path().join("garbage.wasm"), b"this is not webassembly").unwrap();
    let math = std::fs::read(support::plugin_file("math")).unwrap();
    std::fs::write(dir.path().join("truncated.wasm"), &math[..math.len() / 2]).unwrap();
    // A core module that is not a component: the smallest valid module.
    std::fs::write(dir.path().join("core.wasm"), b"\0asm\x01\0\0\0").unwrap();
    let process = weft::node::NodeProcess::spawn(
        std::path::Path::new(env!("CARGO_BIN_EXE_weft")),
        &[
            "node".into(),
            "--listen=127.0.0.1:0".into(),
            format!("--plugins={}", dir.path().display()),
        ],
        Duration::from_secs(60),
    )
    .await
    .unwrap();
    let client = Client::connect(process.url()).await.unwrap();
    assert_eq!(
        client
            .call("math.add", vec![json!(2), json!(3)], no_kwargs(), &[])
            .await
            .unwrap(),
        json!(5)
    );
}
