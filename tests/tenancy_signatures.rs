//! Publisher signatures: a tenant that lists publisher keys runs only components they signed.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::time::Duration;

use serde_json::{json, Map, Value};
use support::{eventually, install_plugin, keygen, plugin_file, plugin_report, sign, weft_cli as weft, TestNode};
use weft::net::Client;
use weft::tenancy::hash_token;

async fn hello(client: &Client) -> Result<Value, String> {
    client
        .call("greeter.hello", vec![json!("ada")], Map::new(), &[])
        .await
        .map_err(|e| e.to_string())
}

async fn last_error(client: &Client) -> String {
    plugin_report(client, "acme/greeter").await["last_error"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

#[tokio::test]
async fn only_components_signed_by_the_tenants_publishers_run() {
    let keys = tempfile::tempdir().unwrap();
    let (key, stranger) = (keys.path().join("publisher.key"), keys.path().join("stranger.key"));
    let public = keygen(&key);
    keygen(&stranger);
    // Keys are never overwritten.
    assert!(!weft(&["plugin", "keygen", "--key", key.to_str().unwrap()])
        .status
        .success());

    let tenants = keys.path().join("tenants.toml");
    std::fs::write(
        &tenants,
        format!(
            "[[tenant]]\nid = \"acme\"\ntokens = [\"{}\"]\npublishers = [\"{public}\"]\n",
            hash_token("t")
        ),
    )
    .unwrap();
    let node = TestNode::start(&[], &[&format!("--tenants={}", tenants.display())]).await;
    let dir = node.dir.path().join("acme");
    std::fs::create_dir(&dir).unwrap();
    let client = Client::connect_as(node.url(), Some("t")).await.unwrap();
    let component = dir.join("greeter.wasm");

    // Unsigned: refused, with the reason.
    install_plugin(&dir, &plugin_file("greeter-v1"), "greeter.wasm");
    assert!(
        eventually(Duration::from_secs(10), || async {
            last_error(&client).await.contains("unsigned: tenant `acme`")
        })
        .await,
        "{}",
        last_error(&client).await
    );
    assert!(hello(&client).await.is_err());

    // Signed by a stranger: refused.
    sign(&component, &stranger);
    assert!(
        eventually(Duration::from_secs(10), || async {
            last_error(&client)
                .await
                .contains("which is not a publisher of tenant `acme`")
        })
        .await,
        "{}",
        last_error(&client).await
    );

    // Signed by the publisher: served.
    sign(&component, &key);
    assert!(eventually(Duration::from_secs(10), || async { hello(&client).await.is_ok() }).await);
    assert_eq!(hello(&client).await.unwrap(), json!("hello ada from v1"));
    assert_eq!(last_error(&client).await, "");

    // Other bytes under the old signature (tampered): refused; version 1 keeps serving.
    install_plugin(&dir, &plugin_file("greeter-v2"), "greeter.wasm");
    assert!(
        eventually(Duration::from_secs(10), || async {
            last_error(&client).await.contains("does not match the component")
        })
        .await,
        "{}",
        last_error(&client).await
    );
    assert_eq!(hello(&client).await.unwrap(), json!("hello ada from v1"));

    // Signed, version 2 replaces it.
    sign(&component, &key);
    assert!(
        eventually(Duration::from_secs(10), || async {
            hello(&client).await == Ok(json!("hello ada from v2"))
        })
        .await
    );
}
