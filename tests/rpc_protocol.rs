//! The client protocol over a real socket: frames, errors, concurrency (SCENARIOS.md 1).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use support::{cmd, error_code, error_details, no_kwargs, rpc, TestNode};
use tokio_tungstenite::tungstenite::Message;

#[tokio::test]
async fn echo_and_echos_return_their_arguments() {
    let node = TestNode::start(&[], &[]).await;
    let client = node.client().await;
    assert_eq!(
        client
            .call("echo", vec![json!("Hello World!")], no_kwargs(), &[])
            .await
            .unwrap(),
        json!("Hello World!")
    );
    let object = json!({"message": "test", "number": 42, "list": [1, 2, 3]});
    assert_eq!(
        client
            .call("echo", vec![object.clone()], no_kwargs(), &[])
            .await
            .unwrap(),
        object
    );
    assert_eq!(
        client
            .call("echos", vec![json!("a"), json!("b"), json!("c")], no_kwargs(), &[])
            .await
            .unwrap(),
        json!(["a", "b", "c"])
    );
}

#[tokio::test]
async fn concurrent_clients_each_get_their_own_answer() {
    let node = TestNode::start(&["math"], &[]).await;
    let mut tasks = Vec::new();
    for i in 0..3i64 {
        let url = node.url().to_string();
        tasks.push(tokio::spawn(async move {
            let client = weft::net::Client::connect(&url).await.unwrap();
            let mut answers = Vec::new();
            for j in 0..20i64 {
                let echoed = client
                    .call("echo", vec![json!(format!("client-{i}-{j}"))], no_kwargs(), &[])
                    .await
                    .unwrap();
                assert_eq!(echoed, json!(format!("client-{i}-{j}")));
                answers.push(
                    client
                        .call("math.add", vec![json!(i), json!(j)], no_kwargs(), &[])
                        .await
                        .unwrap(),
                );
            }
            (i, answers)
        }));
    }
    for task in tasks {
        let (i, answers) = task.await.unwrap();
        let expected: Vec<Value> = (0..20).map(|j| json!(i + j)).collect();
        assert_eq!(answers, expected);
    }
}

#[tokio::test]
async fn response_echoes_u_and_has_no_role() {
    let node = TestNode::start(&[], &[]).await;
    let client = node.client().await;
    let response = client
        .request(json!({"role": "rpc", "u": "my-id-1", "cmds": [cmd("a", "echo", json!([1]))], "extra_field": true}))
        .await
        .unwrap();
    assert_eq!(response["u"], json!("my-id-1"));
    assert_eq!(response["r"], json!({"a": 1}));
    assert!(response["error"].is_null());
    assert!(response.get("role").is_none(), "{response}");
}

#[tokio::test]
async fn unknown_command_is_1001_and_names_it() {
    let node = TestNode::start(&["math"], &[]).await;
    let client = node.client().await;
    let response = client
        .request(rpc(json!([cmd("x", "no.such.command", json!([]))])))
        .await
        .unwrap();
    assert_eq!(error_code(&response), Some(1001));
    assert!(error_details(&response).contains("no.such.command"), "{response}");
    // Known command, tags it does not carry.
    let response = client
        .request(rpc(
            json!([{"name": "x", "fun": "math.add", "args": [1, 2], "locs": ["gpu"]}]),
        ))
        .await
        .unwrap();
    assert_eq!(error_code(&response), Some(1001), "{response}");
    // Tags it does carry.
    let response = client
        .request(rpc(
            json!([{"name": "x", "fun": "math.add", "args": [1, 2], "locs": ["math"]}]),
        ))
        .await
        .unwrap();
    assert_eq!(response["r"], json!({"x": 3}));
}

#[tokio::test]
async fn node_resources_are_part_of_every_commands_tags() {
    let node = TestNode::start(&["math"], &["--resources=dataset-a,eu"]).await;
    let client = node.client().await;
    let locs = ["math".to_string(), "dataset-a".to_string(), "eu".to_string()];
    assert_eq!(
        client
            .call("math.mul", vec![json!(6), json!(7)], no_kwargs(), &locs)
            .await
            .unwrap(),
        json!(42)
    );
    let err = client
        .call("math.mul", vec![json!(6), json!(7)], no_kwargs(), &["us".to_string()])
        .await
        .unwrap_err();
    assert!(err.to_string().contains("1001"), "{err}");
}

#[tokio::test]
async fn version_constraints_and_function_ids_select_commands() {
    let node = TestNode::start(&["math"], &[]).await;
    let client = node.client().await;
    let call = |constraint: &str| {
        rpc(json!([{"name": "x", "fun": "math.add", "args": [1, 1], "version_constraint": constraint}]))
    };
    assert_eq!(
        client.request(call(">=1.0.0,<2.0.0")).await.unwrap()["r"],
        json!({"x": 2})
    );
    assert_eq!(error_code(&client.request(call(">=2.0.0")).await.unwrap()), Some(1001));
    let by_id = |id: &str| rpc(json!([{"name": "x", "fun": "math.add", "args": [1, 1], "function_id": id}]));
    assert_eq!(
        client.request(by_id("math.add@1.0.0")).await.unwrap()["r"],
        json!({"x": 2})
    );
    assert_eq!(
        error_code(&client.request(by_id("math.add@9.9.9")).await.unwrap()),
        Some(1001)
    );
}

/// Sends a raw frame and returns the parsed response frame.
async fn raw_exchange(
    ws: &mut tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>,
    frame: Message,
) -> (Value, bool) {
    ws.send(frame).await.unwrap();
    loop {
        match ws.next().await.unwrap().unwrap() {
            Message::Text(text) => return (serde_json::from_str(&text).unwrap(), false),
            Message::Binary(bytes) => return (serde_json::from_slice(&bytes).unwrap(), true),
            _ => continue,
        }
    }
}

#[tokio::test]
async fn bad_frames_get_errors_and_the_connection_stays_usable() {
    let node = TestNode::start(&[], &[]).await;
    let (mut ws, _) = tokio_tungstenite::connect_async(node.url()).await.unwrap();
    let good = json!({"role": "rpc", "u": "ok", "cmds": [cmd("a", "echo", json!(["still here"]))]}).to_string();

    let cases: Vec<(&str, String, i64)> = vec![
        ("malformed JSON", "{\"role\": \"rpc\", \"cmds\": [".into(), 1002),
        ("not an object", "[1, 2, 3]".into(), 1002),
        (
            "unknown role",
            json!({"role": "server", "u": "r1", "cmds": []}).to_string(),
            1004,
        ),
        ("missing role", json!({"u": "r2", "cmds": []}).to_string(), 1002),
        ("missing cmds", json!({"role": "rpc", "u": "r3"}).to_string(), 1002),
        (
            "missing fun",
            json!({"role": "rpc", "u": "r4", "cmds": [{"name": "a", "args": []}]}).to_string(),
            1002,
        ),
        (
            "args not a list",
            json!({"role": "rpc", "u": "r5", "cmds": [{"name": "a", "fun": "echo", "args": 5}]}).to_string(),
            1002,
        ),
    ];
    for (case, frame, code) in cases {
        let (response, _) = raw_exchange(&mut ws, Message::Text(frame.into())).await;
        assert_eq!(error_code(&response), Some(code), "{case}: {response}");
        assert!(!error_details(&response).is_empty(), "{case}: {response}");
        let (response, _) = raw_exchange(&mut ws, Message::Text(good.clone().into())).await;
        assert_eq!(response["r"], json!({"a": "still here"}), "after {case}");
    }
    // The `u` of a request that could be read comes back with its error.
    let (response, _) = raw_exchange(
        &mut ws,
        Message::Text(json!({"role": "x", "u": "keep-me"}).to_string().into()),
    )
    .await;
    assert_eq!(response["u"], json!("keep-me"));
}

#[tokio::test]
async fn binary_frames_are_answered_in_binary() {
    let node = TestNode::start(&[], &[]).await;
    let (mut ws, _) = tokio_tungstenite::connect_async(node.url()).await.unwrap();
    let frame = json!({"role": "rpc", "u": "b1", "cmds": [cmd("a", "echo", json!([{"k": [1, 2]}]))]}).to_string();
    let (response, binary) = raw_exchange(&mut ws, Message::Binary(frame.into_bytes().into())).await;
    assert!(binary);
    assert_eq!(response["r"], json!({"a": {"k": [1, 2]}}));
}

#[tokio::test]
async fn oversized_frames_get_a_clear_error() {
    let node = TestNode::start(&[], &["--max-frame-bytes=65536"]).await;
    let (mut ws, _) = tokio_tungstenite::connect_async(node.url()).await.unwrap();
    let big = "x".repeat(100_000);
    let frame = json!({"role": "rpc", "u": "big", "cmds": [cmd("a", "echo", json!([big]))]}).to_string();
    let (response, _) = raw_exchange(&mut ws, Message::Text(frame.into())).await;
    assert_eq!(error_code(&response), Some(1002), "{response}");
    assert!(
        error_details(&response).contains("exceeds the limit of 65536 bytes"),
        "{response}"
    );
    let good = json!({"role": "rpc", "u": "ok", "cmds": [cmd("a", "echo", json!([1]))]}).to_string();
    let (response, _) = raw_exchange(&mut ws, Message::Text(good.into())).await;
    assert_eq!(response["r"], json!({"a": 1}));

    // Far beyond the limit: the connection is closed with code 1009 and a reason.
    let huge = "y".repeat(300_000);
    ws.send(Message::Text(huge.into())).await.unwrap();
    let closed = loop {
        match ws.next().await {
            Some(Ok(Message::Close(frame))) => break frame,
            Some(Ok(_)) => continue,
            other => panic!("expected a close frame, got {other:?}"),
        }
    };
    let closed = closed.expect("close frame with a reason");
    assert_eq!(u16::from(closed.code), 1009);
    assert!(closed.reason.contains("exceeds the limit"), "{}", closed.reason);
    // The node still serves new connections.
    let client = node.client().await;
    assert_eq!(
        client.call("echo", vec![json!(2)], no_kwargs(), &[]).await.unwrap(),
        json!(2)
    );
}

#[tokio::test]
async fn two_hundred_concurrent_requests_on_one_socket() {
    let node = TestNode::start(&["scenarios"], &[]).await;
    let client = std::sync::Arc::new(node.client().await);
    let started = std::time::Instant::now();
    let mut tasks = Vec::new();
    for i in 0..200 {
        let client = client.clone();
        tasks.push(tokio::spawn(async move {
            // Each request sleeps 200 ms in the plugin: served one after another they would
            // take 40 s.
            client
                .call("testing.sleep", vec![json!(200), json!(i)], no_kwargs(), &[])
                .await
                .unwrap()
        }));
    }
    for (i, task) in tasks.into_iter().enumerate() {
        assert_eq!(task.await.unwrap(), json!(i));
    }
    let elapsed = started.elapsed();
    assert!(
        elapsed < std::time::Duration::from_secs(20),
        "requests were not served concurrently: {elapsed:?}"
    );
}

#[tokio::test]
async fn a_client_that_stops_reading_does_not_stall_other_callers() {
    // Two instance slots for client calls: if a stalled connection held them, every other
    // plugin call would wait.
    let node = TestNode::start(&["scenarios", "math"], &["--max-instances=4"]).await;
    let (mut stalled, _) = tokio_tungstenite::connect_async(node.url()).await.unwrap();
    let tag = "z".repeat(64 * 1024);
    for i in 0..300 {
        let frame = json!({"role": "rpc", "u": format!("s{i}"), "cmds": [cmd("a", "testing.sleep", json!([5, tag]))]});
        stalled.feed(Message::Text(frame.to_string().into())).await.unwrap();
    }
    stalled.flush().await.unwrap();
    // 300 replies of 64 KiB (about 19 MiB) fill the socket long before they are all written.
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    let client = node.client().await;
    let answer = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        client.call("math.add", vec![json!(20), json!(22)], no_kwargs(), &[]),
    )
    .await
    .expect("a call on another connection is served while one client does not read")
    .unwrap();
    assert_eq!(answer, json!(42));
    drop(stalled);
}
