//! Capabilities beyond the contract: granted by a plugin's sidecar, honoured only where its
//! tenant allows them.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::time::Duration;

use serde_json::{json, Map, Value};
use support::{eventually, plugin_file, plugin_report, TestNode};
use weft::net::{Client, ClientError};
use weft::tenancy::hash_token;

async fn call(client: &Client, fun: &str, args: Value) -> Result<Value, String> {
    let args = args.as_array().cloned().unwrap_or_default();
    match client.call(fun, args, Map::new(), &[]).await {
        Ok(value) => Ok(value),
        Err(ClientError::Remote { details, .. }) => Err(details),
        Err(e) => panic!("the connection failed: {e}"),
    }
}

#[tokio::test]
async fn a_granted_directory_and_variables_are_all_a_plugin_sees() {
    let data = tempfile::tempdir().unwrap();
    std::fs::write(data.path().join("prices.csv"), "apple,3\n").unwrap();
    let node = TestNode::start(&["hostile"], &[]).await;
    let client = node.client().await;
    assert!(call(&client, "hostile.list_dir", json!(["/data"])).await.is_err());

    std::fs::write(
        node.dir.path().join("hostile.toml"),
        format!("[grants]\nread_dir = \"{}\"\nenv = [\"PATH\"]\n", data.path().display()),
    )
    .unwrap();
    assert!(
        eventually(Duration::from_secs(10), || async {
            call(&client, "hostile.list_dir", json!(["/data"])).await == Ok(json!(["prices.csv"]))
        })
        .await,
        "{:?}",
        call(&client, "hostile.list_dir", json!(["/data"])).await
    );
    assert_eq!(
        call(&client, "hostile.read_file", json!(["/data/prices.csv"])).await,
        Ok(json!("apple,3\n"))
    );
    // Only what was granted: the rest of the host stays out of sight.
    assert!(call(&client, "hostile.read_file", json!(["/etc/passwd"]))
        .await
        .is_err());
    assert!(call(&client, "hostile.env", json!(["PATH"])).await.unwrap().is_string());
    assert_eq!(call(&client, "hostile.env", json!(["HOME"])).await, Ok(Value::Null));
}

#[tokio::test]
async fn a_grant_the_tenant_does_not_allow_is_refused_with_the_reason() {
    let config = tempfile::tempdir().unwrap();
    let data = tempfile::tempdir().unwrap();
    std::fs::write(data.path().join("secret.txt"), "s").unwrap();
    let tenants = config.path().join("tenants.toml");
    std::fs::write(
        &tenants,
        format!(
            "[[tenant]]\nid = \"acme\"\ntokens = [\"{}\"]\ngrants = [\"env\"]\n",
            hash_token("acme-token")
        ),
    )
    .unwrap();
    let node = TestNode::start(&[], &[&format!("--tenants={}", tenants.display())]).await;
    let dir = node.dir.path().join("acme");
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(
        dir.join("hostile.toml"),
        format!("[grants]\nread_dir = \"{}\"\n", data.path().display()),
    )
    .unwrap();
    support::install_plugin(&dir, &plugin_file("hostile"), "hostile.wasm");
    let client = Client::connect_as(node.url(), Some("acme-token")).await.unwrap();
    assert!(
        eventually(Duration::from_secs(10), || async {
            call(&client, "hostile.ok", json!([])).await.is_ok()
        })
        .await
    );
    let report = plugin_report(&client, "acme/hostile").await;
    let error = report["last_error"].as_str().unwrap_or_default();
    assert!(
        error.contains("grant `read_dir` is not allowed for tenant `acme`"),
        "{report}"
    );
    assert!(call(&client, "hostile.list_dir", json!(["/data"])).await.is_err());

    // `env` is allowed: the same plugin gets it.
    std::fs::write(dir.join("hostile.toml"), "[grants]\nenv = [\"PATH\"]\n").unwrap();
    assert!(
        eventually(Duration::from_secs(10), || async {
            call(&client, "hostile.env", json!(["PATH"]))
                .await
                .is_ok_and(|v| v.is_string())
        })
        .await
    );
    assert_eq!(plugin_report(&client, "acme/hostile").await["last_error"], Value::Null);
}
