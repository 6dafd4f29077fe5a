//! The `weft` command line against a running node.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::process::Output;

use serde_json::{json, Value};
use support::TestNode;

fn weft(url: &str, args: &[&str]) -> Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_weft"))
        .args(args)
        .env("WEFT_URL", url)
        .output()
        .unwrap()
}

fn stdout_json(output: &Output) -> Value {
    serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {}", String::from_utf8_lossy(&output.stdout)))
}

#[tokio::test]
async fn call_prints_the_json_result() {
    let node = TestNode::start(&["math", "text"], &[]).await;
    let url = node.url().to_string();
    let out = tokio::task::spawn_blocking(move || {
        vec![
            weft(&url, &["call", "math.add", "2", "3"]),
            weft(&url, &["call", "text.upper", "hello world"]),
            weft(&url, &["call", "math.stats", "[4, 1, 3]"]),
            weft(
                &url,
                &["call", "math.mul", "--kw", "a=6", "--kw", "b=7", "--locs", "math"],
            ),
            weft(&url, &["call", "--url", &url, "echos", "-1", "{\"k\":true}", "plain"]),
            // Options may follow the arguments, also after a negative number.
            weft(&url, &["call", "math.add", "-2", "3", "--url", &url, "--locs", "math"]),
        ]
    })
    .await
    .unwrap();
    for o in &out {
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    assert_eq!(String::from_utf8_lossy(&out[0].stdout).trim(), "5");
    assert_eq!(stdout_json(&out[1]), json!("HELLO WORLD"));
    assert_eq!(stdout_json(&out[2])["median"], json!(3.0));
    assert_eq!(stdout_json(&out[3]), json!(42));
    assert_eq!(stdout_json(&out[4]), json!([-1, {"k": true}, "plain"]));
    assert_eq!(String::from_utf8_lossy(&out[5].stdout).trim(), "1");
}

#[tokio::test]
async fn call_fails_with_the_error_and_a_nonzero_exit() {
    let node = TestNode::start(&["math"], &[]).await;
    let url = node.url().to_string();
    let (missing, bad_args, no_node) = tokio::task::spawn_blocking(move || {
        (
            weft(&url, &["call", "no.such.command"]),
            weft(&url, &["call", "math.add", "1"]),
            weft("ws://127.0.0.1:1", &["call", "echo", "1"]),
        )
    })
    .await
    .unwrap();
    assert!(!missing.status.success());
    let stderr = String::from_utf8_lossy(&missing.stderr);
    assert!(
        stderr.contains("1001") && stderr.contains("no.such.command"),
        "{stderr}"
    );
    assert!(!bad_args.status.success());
    assert!(String::from_utf8_lossy(&bad_args.stderr).contains("missing argument `b`"));
    assert!(!no_node.status.success());
    assert!(String::from_utf8_lossy(&no_node.stderr).contains("connecting to ws://127.0.0.1:1"));
}

#[tokio::test]
async fn request_sends_a_multi_command_file() {
    let node = TestNode::start(&["scenarios"], &[]).await;
    let file = node.dir.path().join("request.json");
    std::fs::write(
        &file,
        json!({"role": "rpc", "cmds": [
            {"name": "s1", "fun": "first_step", "args": ["cli"]},
            {"name": "s2", "fun": "second_step", "args": ["s1", 3]},
        ]})
        .to_string(),
    )
    .unwrap();
    let url = node.url().to_string();
    let path = file.display().to_string();
    let out = tokio::task::spawn_blocking(move || weft(&url, &["request", &path]))
        .await
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(
        stdout_json(&out),
        json!({"s2": {"final": "final_processed_cli", "computed": 126}})
    );
}

#[tokio::test]
async fn node_stops_cleanly_on_sigterm_and_sigint() {
    for signal in ["-TERM", "-INT"] {
        let mut node = TestNode::start(&["math"], &[]).await;
        let client = node.client().await;
        assert_eq!(
            client
                .call("math.add", vec![json!(1), json!(1)], support::no_kwargs(), &[])
                .await
                .unwrap(),
            json!(2)
        );
        let pid = node.process.id().unwrap().to_string();
        let killed = std::process::Command::new("kill")
            .args([signal, &pid])
            .status()
            .unwrap();
        assert!(killed.success());
        let status = tokio::time::timeout(std::time::Duration::from_secs(10), node.process.wait())
            .await
            .unwrap()
            .unwrap();
        assert!(status.success(), "{signal}: {status:?}");
    }
}

#[tokio::test]
async fn plugins_lists_files_states_commands_and_errors() {
    let node = TestNode::start(&["math"], &[]).await;
    std::fs::write(node.dir.path().join("broken.wasm"), b"not a component").unwrap();
    let url = node.url().to_string();
    let listed = support::eventually(std::time::Duration::from_secs(10), || {
        let url = url.clone();
        async move {
            let out = tokio::task::spawn_blocking(move || weft(&url, &["plugins"]))
                .await
                .unwrap();
            String::from_utf8_lossy(&out.stdout).contains("broken  failed")
        }
    })
    .await;
    assert!(listed, "the broken plugin never showed up");
    let out = tokio::task::spawn_blocking(move || weft(&url, &["plugins"]))
        .await
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("math  serving"), "{text}");
    assert!(text.contains("math.add 1.0.0 [math]"), "{text}");
    assert!(
        text.contains("error: broken: not a valid weft plugin component"),
        "{text}"
    );
}

#[test]
fn logs_can_be_written_as_json_lines() {
    let data = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_weft"))
        .args([
            "node",
            "--log-format",
            "json",
            "--listen",
            "127.0.0.1:0",
            "--plugins",
            "/nonexistent",
        ])
        .arg(format!("--data-dir={}", data.path().display()))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    let logs: Vec<Value> = stderr
        .lines()
        .filter(|l| !l.starts_with("error:"))
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON line ({e}): {l}")))
        .collect();
    assert!(!logs.is_empty(), "{stderr}");
    assert!(
        logs.iter()
            .any(|l| l["level"] == "INFO" && l["fields"]["message"] == "joining the fabric"),
        "{stderr}"
    );
    assert!(
        stderr.contains("error: plugin directory /nonexistent does not exist"),
        "{stderr}"
    );
}
