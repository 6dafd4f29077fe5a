//! The README's steps for a new plugin author, in each language: `weft plugin new`, `weft plugin
//! build` into a node's watched directory, and a call.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::path::Path;
use std::process::Output;
use std::time::Duration;

use serde_json::json;
use support::{eventually, outcome, TestNode};

fn weft(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_weft"));
    command.args(args);
    for (key, value) in env {
        command.env(key, value);
    }
    command.output().unwrap()
}

fn succeeded(output: &Output) -> String {
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

/// Creates, builds and calls the scaffolded plugin of `lang`.
async fn new_build_call(lang: &str) {
    let work = tempfile::tempdir().unwrap();
    let name = format!("greet_{lang}");
    let source = work.path().join(&name);
    let source = source.to_str().unwrap();
    let node = TestNode::start(&[], &[]).await;
    let out = node.dir.path().join(format!("{name}.wasm"));
    let cache = node.cache.path().to_str().unwrap().to_string();
    // Rust plugins reuse the example plugins' compiled dependencies.
    let target = support::built_compile_cache().parent().unwrap().to_path_buf();
    let target = target.to_str().unwrap();

    let created = succeeded(&weft(&["plugin", "new", &name, "--lang", lang, "--dir", source], &[]));
    assert!(created.contains("build it with: weft plugin build"), "{created}");
    let built = succeeded(&weft(
        &[
            "plugin",
            "build",
            source,
            "-o",
            out.to_str().unwrap(),
            "--cache-dir",
            &cache,
        ],
        &[("CARGO_TARGET_DIR", target)],
    ));
    assert!(built.contains(&format!("{name}.greet(name, times)")), "{built}");

    let client = node.client().await;
    let command = format!("{name}.greet");
    let greet = || outcome(&client, &command, json!(["ada"]), json!({"times": 2}));
    assert!(
        eventually(Duration::from_secs(30), || async { greet().await.is_ok() }).await,
        "{name}.greet was never served: {:?}",
        greet().await
    );
    assert_eq!(greet().await.unwrap(), json!("hello ada, hello ada"));
    let (code, details) = outcome(&client, &command, json!(["ada", 0]), json!({}))
        .await
        .unwrap_err();
    assert_eq!(code, 1003);
    assert!(details.contains("times must be at least 1"), "{details}");
}

#[tokio::test]
async fn a_new_rust_plugin_builds_and_answers() {
    new_build_call("rust").await;
}

#[tokio::test]
async fn a_new_python_plugin_builds_and_answers() {
    new_build_call("python").await;
}

#[tokio::test]
async fn a_new_js_plugin_builds_and_answers() {
    new_build_call("js").await;
}

#[tokio::test]
async fn missing_toolchains_and_bad_names_get_clear_errors() {
    let work = tempfile::tempdir().unwrap();
    let empty_path = work.path().join("bin");
    std::fs::create_dir(&empty_path).unwrap();
    for (lang, install) in [
        ("python", "pip install componentize-py==0.25.1"),
        ("js", "npm install -g @bytecodealliance/componentize-js@0.23.0"),
    ] {
        let dir = work.path().join(format!("p_{lang}"));
        let dir = dir.to_str().unwrap();
        succeeded(&weft(
            &["plugin", "new", &format!("p_{lang}"), "--lang", lang, "--dir", dir],
            &[],
        ));
        let output = weft(
            &["plugin", "build", dir, "-o", "/dev/null"],
            &[("PATH", empty_path.to_str().unwrap())],
        );
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success());
        assert!(
            stderr.contains("is not installed") && stderr.contains(install),
            "{stderr}"
        );
    }

    let output = weft(&["plugin", "new", "Bad-Name", "--lang", "js"], &[]);
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("`Bad-Name` is not"));
    let output = weft(&["plugin", "build", work.path().to_str().unwrap()], &[]);
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("holds no plugin"));
    assert!(!Path::new("Bad-Name").exists());
}

#[tokio::test]
async fn a_build_that_breaks_the_contract_is_refused_and_not_written() {
    let work = tempfile::tempdir().unwrap();
    let dir = work.path().join("badversion");
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(
        dir.join("badversion.js"),
        "import { command } from \"./weft.js\";\ncommand(\"badversion.f\", { version: \"one\" }, () => 1);\n",
    )
    .unwrap();
    let out = work.path().join("plugins/badversion.wasm");
    let cache = work.path().join("cache");
    let output = weft(
        &[
            "plugin",
            "build",
            dir.to_str().unwrap(),
            "-o",
            out.to_str().unwrap(),
            "--cache-dir",
            cache.to_str().unwrap(),
        ],
        &[],
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(stderr.contains("does not fit the plugin contract"), "{stderr}");
    assert!(stderr.contains("badversion.f"), "{stderr}");
    assert!(!out.exists(), "a refused component was written");
}
