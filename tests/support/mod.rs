//! Shared by the integration tests: real `weft node` processes serving real plugin
//! components built from `plugins/` by `scripts/build-plugins`.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{json, Map, Value};
use weft::net::Client;
use weft::node::NodeProcess;

/// The repository root.
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

/// The built component of plugin `name` (an example or a test-only plugin).
pub fn plugin_file(name: &str) -> PathBuf {
    for dir in ["build/plugins", "build/test-plugins"] {
        let path = repo().join(dir).join(format!("{name}.wasm"));
        if path.is_file() {
            return path;
        }
    }
    panic!("plugin `{name}` is not built: run scripts/build-plugins (the README's test command does)");
}

/// A node process with its own plugin directory; killed when dropped.
pub struct TestNode {
    pub process: NodeProcess,
    pub dir: tempfile::TempDir,
}

impl TestNode {
    /// Starts `weft node` on a free loopback port serving copies of the named plugins.
    pub async fn start(plugins: &[&str], extra_args: &[&str]) -> TestNode {
        let dir = tempfile::tempdir().unwrap();
        for name in plugins {
            std::fs::copy(plugin_file(name), dir.path().join(format!("{name}.wasm"))).unwrap();
        }
        let mut args = vec![
            "node".to_string(),
            "--listen=127.0.0.1:0".into(),
            format!("--plugins={}", dir.path().display()),
        ];
        args.extend(extra_args.iter().map(|a| a.to_string()));
        let process = NodeProcess::spawn(Path::new(env!("CARGO_BIN_EXE_weft")), &args, Duration::from_secs(60))
            .await
            .expect("node starts");
        TestNode { process, dir }
    }

    pub fn url(&self) -> &str {
        self.process.url()
    }

    pub async fn client(&self) -> Client {
        Client::connect(self.url()).await.unwrap()
    }
}

/// A request of the given commands.
pub fn rpc(cmds: Value) -> Value {
    json!({ "role": "rpc", "cmds": cmds })
}

/// One command of a request.
pub fn cmd(name: &str, fun: &str, args: Value) -> Value {
    json!({ "name": name, "fun": fun, "args": args, "kwargs": {}, "locs": [] })
}

/// The error code of a response, or `None` when it succeeded.
pub fn error_code(response: &Value) -> Option<i64> {
    response
        .get("error")
        .filter(|e| !e.is_null())
        .map(|e| e["code"].as_i64().unwrap())
}

/// The error details of a response.
pub fn error_details(response: &Value) -> String {
    response["error"]["details"].as_str().unwrap_or_default().to_string()
}

/// No keyword arguments.
pub fn no_kwargs() -> Map<String, Value> {
    Map::new()
}
