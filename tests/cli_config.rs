//! One TOML file for a node's options: flags beat `WEFT_*` variables, which beat the file, which
//! beats the defaults; unknown keys are errors that name the key; `weft config check` shows it.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::Map;
use weft::net::Client;
use weft::node::NodeProcess;

fn exe() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_weft"))
}

fn write_config(dir: &Path, plugins: &Path) -> PathBuf {
    let path = dir.join("weft.toml");
    std::fs::write(
        &path,
        format!(
            "listen = \"127.0.0.1:0\"\nplugins = \"{}\"\ncluster = \"from-file\"\nmax-mesh = 7\nresources = [\"a\", \"b\"]\ncluster_secret = \"s3cret\"\ndata_dir = \"{}\"\n",
            plugins.display(),
            dir.join("data").display()
        ),
    )
    .unwrap();
    path
}

/// The cluster a node started with `args` and `env` joined, and its commands' tags.
async fn started(args: &[&str], env: &[(&str, &str)]) -> (String, Vec<String>) {
    let args: Vec<String> = std::iter::once("node".to_string())
        .chain(args.iter().map(|a| a.to_string()))
        .collect();
    let node = NodeProcess::spawn_with(&exe(), &args, Duration::from_secs(30), env, None)
        .await
        .unwrap();
    let client = Client::connect(node.url()).await.unwrap();
    let peers = client.call("weft.peers", vec![], Map::new(), &[]).await.unwrap();
    let catalog = client.call("weft.catalog", vec![], Map::new(), &[]).await.unwrap();
    let tags = catalog[0]["tags"]
        .as_array()
        .map(|t| t.iter().map(|t| t.as_str().unwrap().to_string()).collect())
        .unwrap_or_default();
    (peers["cluster"].as_str().unwrap().to_string(), tags)
}

#[tokio::test]
async fn flags_beat_the_environment_which_beats_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let plugins = dir.path().join("plugins");
    std::fs::create_dir(&plugins).unwrap();
    std::fs::copy(support::plugin_file("math"), plugins.join("math.wasm")).unwrap();
    let config = write_config(dir.path(), &plugins);
    let config_arg = format!("--config={}", config.display());

    let (cluster, tags) = started(&[&config_arg], &[]).await;
    assert_eq!(cluster, "from-file");
    for tag in ["a", "b", "math"] {
        assert!(tags.contains(&tag.to_string()), "{tags:?}");
    }
    let (cluster, _) = started(&[&config_arg], &[("WEFT_CLUSTER", "from-env")]).await;
    assert_eq!(cluster, "from-env");
    let (cluster, _) = started(&[&config_arg, "--cluster=from-flag"], &[("WEFT_CLUSTER", "from-env")]).await;
    assert_eq!(cluster, "from-flag");
    // The file can come from the environment too.
    let (cluster, _) = started(&[], &[("WEFT_CONFIG", config.to_str().unwrap())]).await;
    assert_eq!(cluster, "from-file");
}

#[test]
fn config_check_prints_the_effective_configuration_and_names_unknown_keys() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), dir.path());
    let out = Command::new(exe())
        .args(["config", "check", config.to_str().unwrap()])
        .env("WEFT_MAX_MESH", "9")
        .env_remove("WEFT_CLUSTER")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    for line in [
        "cluster = \"from-file\"  # file",
        "max_mesh = 9  # environment",
        "resources = [\"a\", \"b\"]  # file",
        "call_deadline_ms = 30000  # default",
        "cluster_secret = \"(set)\"  # file",
    ] {
        assert!(text.contains(line), "`{line}` missing from:\n{text}");
    }
    assert!(!text.contains("s3cret"), "the secret is printed:\n{text}");

    std::fs::write(&config, "cluster = \"x\"\nmax_mesg = 3\n").unwrap();
    for args in [
        vec!["config", "check", config.to_str().unwrap()],
        vec!["node", "--config", config.to_str().unwrap()],
    ] {
        let out = Command::new(exe()).args(&args).output().unwrap();
        assert!(!out.status.success());
        let error = String::from_utf8_lossy(&out.stderr);
        assert!(error.contains("unknown key `max_mesg`"), "{error}");
    }

    std::fs::write(&config, "max_mesh = \"many\"\n").unwrap();
    let out = Command::new(exe())
        .args(["config", "check", config.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("many"));
}
