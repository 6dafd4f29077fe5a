//! Tenants on a node and across the fabric: authentication on the upgrade, private and public
//! commands, calls plugins make as their tenant, and per-tenant limits.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::path::Path;
use std::time::Duration;

use serde_json::{json, Map, Value};
use support::{eventually, fabric_node, plugin_file, TestNode};
use weft::net::{Client, ClientError};
use weft::tenancy::hash_token;

const ACME: &str = "acme-token";
const BETA: &str = "beta-token";
const SLOW: &str = "slow-token";
const SMALL: &str = "small-token";

/// A tenants file in `dir`: acme, beta, `slow` (5 calls per second, one request at a time) and
/// `small` (16 MiB, 300 ms and 2 KiB requests at most).
fn tenants_file(dir: &Path) -> String {
    let path = dir.join("tenants.toml");
    std::fs::write(
        &path,
        format!(
            "[[tenant]]\nid = \"acme\"\ntokens = [\"{}\"]\n\n[[tenant]]\nid = \"beta\"\ntokens = [\"{}\"]\n\n\
             [[tenant]]\nid = \"slow\"\ntokens = [\"{}\"]\ncalls_per_second = 5\nmax_concurrent = 1\n\n\
             [[tenant]]\nid = \"small\"\ntokens = [\"{}\"]\nmemory_mb = 16\ndeadline_ms = 300\nmax_request_bytes = 2048\n",
            hash_token(ACME),
            hash_token(BETA),
            hash_token(SLOW),
            hash_token(SMALL)
        ),
    )
    .unwrap();
    format!("--tenants={}", path.display())
}

/// Copies built plugin `name` into the tenant's directory as `file`.
fn install(node: &TestNode, tenant: &str, name: &str, file: &str) {
    let dir = node.dir.path().join(tenant);
    std::fs::create_dir_all(&dir).unwrap();
    support::install_plugin(&dir, &plugin_file(name), file);
}

async fn client(node: &TestNode, token: &str) -> Client {
    Client::connect_as(node.url(), Some(token)).await.unwrap()
}

async fn call(client: &Client, fun: &str, args: Value) -> Result<Value, (i64, String)> {
    let args = args.as_array().cloned().unwrap_or_default();
    match client.call(fun, args, Map::new(), &[]).await {
        Ok(value) => Ok(value),
        Err(ClientError::Remote { code, details, .. }) => Err((code, details)),
        Err(e) => panic!("the connection failed: {e}"),
    }
}

fn catalog_commands(catalog: &Value) -> Vec<String> {
    let mut names: Vec<String> = catalog
        .as_array()
        .unwrap()
        .iter()
        .map(|row| row["command"].as_str().unwrap().to_string())
        .collect();
    names.dedup();
    names
}

#[tokio::test]
async fn clients_without_a_valid_token_are_refused() {
    let config = tempfile::tempdir().unwrap();
    let node = TestNode::start(&[], &[&tenants_file(config.path())]).await;
    for token in [None, Some("wrong-token")] {
        let error = Client::connect_as(node.url(), token).await.err().expect("refused");
        let text = error.to_string();
        assert!(text.contains("401"), "{text}");
        let reason = if token.is_none() {
            "send `Authorization: Bearer <token>`"
        } else {
            "the token belongs to no tenant"
        };
        assert!(text.contains(reason), "{text}");
    }
    // The right token works, and the node kept serving through the refusals.
    assert_eq!(call(&client(&node, ACME).await, "echo", json!([1])).await, Ok(json!(1)));
}

#[tokio::test]
async fn tenants_see_and_call_their_own_commands_and_public_ones_only() {
    let config = tempfile::tempdir().unwrap();
    let tenants = tenants_file(config.path());
    let node = fabric_node(&[], None, &[&tenants]).await;
    install(&node, "acme", "greeter-v1", "greeter.wasm");
    install(&node, "acme", "pipeline", "pipeline.wasm");
    install(&node, "beta", "text", "text.wasm");
    install(&node, "beta", "math", "math.wasm");
    std::fs::write(node.dir.path().join("beta/math.toml"), "public = true\n").unwrap();
    let (acme, beta) = (client(&node, ACME).await, client(&node, BETA).await);
    assert!(
        eventually(Duration::from_secs(10), || async {
            call(&acme, "math.add", json!([1, 2])).await.is_ok()
                && call(&acme, "greeter.hello", json!(["ada"])).await.is_ok()
        })
        .await
    );

    // Own commands and public ones.
    assert_eq!(
        call(&acme, "greeter.hello", json!(["ada"])).await,
        Ok(json!("hello ada from v1"))
    );
    assert_eq!(call(&acme, "math.add", json!([1, 2])).await, Ok(json!(3)));
    assert_eq!(call(&beta, "math.add", json!([1, 2])).await, Ok(json!(3)));
    assert_eq!(call(&beta, "text.upper", json!(["x"])).await, Ok(json!("X")));
    // Another tenant's private command is not there at all.
    let (code, details) = call(&acme, "text.upper", json!(["x"])).await.unwrap_err();
    assert_eq!(
        (code, details.contains("`text.upper` not found")),
        (1001, true),
        "{details}"
    );
    assert_eq!(call(&beta, "greeter.hello", json!(["ada"])).await.unwrap_err().0, 1001);

    // A plugin's calls act as its tenant: acme's pipeline may use beta's public math.stats,
    // not beta's private text.upper.
    let (code, details) = call(&acme, "pipeline.report", json!(["weekly", [3, 1, 2]]))
        .await
        .unwrap_err();
    assert_eq!(code, 1001);
    assert!(details.contains("text.upper"), "{details}");

    // Listings follow the same rule.
    let catalog = acme.call("weft.catalog", vec![], Map::new(), &[]).await.unwrap();
    let names = catalog_commands(&catalog);
    assert!(names.contains(&"greeter.hello".to_string()) && names.contains(&"math.add".to_string()));
    assert!(!names.iter().any(|n| n.starts_with("text.")), "{names:?}");
    let plugins = acme.call("weft.plugins", vec![], Map::new(), &[]).await.unwrap();
    let mut mine: Vec<&str> = plugins
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    mine.sort();
    assert_eq!(mine, ["acme/greeter", "acme/pipeline"]);

    // Through another node: the serving node enforces visibility too.
    let other = fabric_node(&[], Some(&node), &[&tenants]).await;
    let (acme2, beta2) = (client(&other, ACME).await, client(&other, BETA).await);
    assert!(
        eventually(Duration::from_secs(10), || async {
            call(&acme2, "greeter.hello", json!(["ada"])).await.is_ok()
        })
        .await,
        "acme never reached its command through the second node"
    );
    assert_eq!(call(&acme2, "math.add", json!([2, 2])).await, Ok(json!(4)));
    assert_eq!(call(&acme2, "text.upper", json!(["x"])).await.unwrap_err().0, 1001);
    assert_eq!(call(&beta2, "greeter.hello", json!(["ada"])).await.unwrap_err().0, 1001);
    assert_eq!(call(&beta2, "text.upper", json!(["x"])).await, Ok(json!("X")));
}

#[tokio::test]
async fn rate_and_concurrency_limits_are_clear_errors() {
    let config = tempfile::tempdir().unwrap();
    let node = TestNode::start(&[], &[&tenants_file(config.path())]).await;
    install(&node, "slow", "scenarios", "scenarios.wasm");
    let slow = client(&node, SLOW).await;
    assert!(
        eventually(Duration::from_secs(10), || async {
            call(&slow, "testing.sleep", json!([0])).await.is_ok()
        })
        .await
    );
    // Let the rate refill, then call 20 times at once: a second's worth (5) passes.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let outcomes = futures_util::future::join_all((0..20).map(|_| call(&slow, "echo", json!([1])))).await;
    let passed = outcomes.iter().filter(|o| o.is_ok()).count();
    assert!((5..=6).contains(&passed), "{passed} of 20 passed: {outcomes:?}");
    for outcome in outcomes.iter().filter(|o| o.is_err()) {
        let (code, details) = outcome.as_ref().unwrap_err();
        assert_eq!(*code, 1005);
        assert!(details.contains("over its rate of 5 calls per second"), "{details}");
    }

    // One request at a time: a second one waits at most a second, then is refused as busy.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let long = call(&slow, "testing.sleep", json!([2500, "long"]));
    let second = async {
        tokio::time::sleep(Duration::from_millis(200)).await;
        call(&slow, "echo", json!([2])).await
    };
    let (long, second) = tokio::join!(long, second);
    assert_eq!(long, Ok(json!("long")));
    let (code, details) = second.unwrap_err();
    assert_eq!(code, 1005);
    assert!(details.contains("tenant `slow` is busy"), "{details}");
}

#[tokio::test]
async fn a_tenants_ceilings_hold_whatever_its_sidecars_say() {
    let config = tempfile::tempdir().unwrap();
    let node = TestNode::start(&[], &[&tenants_file(config.path())]).await;
    install(&node, "small", "hostile", "hostile.wasm");
    std::fs::write(
        node.dir.path().join("small/hostile.toml"),
        "[limits]\nmemory_mb = 512\ndeadline_ms = 60000\n",
    )
    .unwrap();
    let small = client(&node, SMALL).await;
    assert!(
        eventually(Duration::from_secs(10), || async {
            call(&small, "hostile.ok", json!([])).await.is_ok()
        })
        .await
    );
    let (code, details) = call(&small, "hostile.grow", json!([])).await.unwrap_err();
    assert_eq!(code, 1003);
    assert!(details.contains("memory limit of 16 MiB"), "{details}");
    let (code, details) = call(&small, "hostile.spin", json!([])).await.unwrap_err();
    assert_eq!(code, 1004, "{details}");
    assert!(details.contains("deadline of 300 ms"), "{details}");
    let (code, details) = call(&small, "echo", json!(["x".repeat(4096)])).await.unwrap_err();
    assert_eq!(code, 1002);
    assert!(
        details.contains("exceeds tenant `small`'s limit of 2048 bytes"),
        "{details}"
    );
    assert_eq!(call(&small, "hostile.ok", json!([])).await, Ok(json!("ok")));
}
