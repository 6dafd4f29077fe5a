//! The watched plugin directory: plugins added, replaced, broken, reconfigured and removed
//! while a client keeps calling; compiled code cached across restarts.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::time::Duration;

use serde_json::{json, Value};
use support::{all_ok, eventually, install_bytes, install_plugin, plugin_file, plugin_report, Caller, TestNode};
use weft::net::Client;

const CHANGE: Duration = Duration::from_secs(10);

async fn hello(client: &Client) -> Result<Value, String> {
    client
        .call("greeter.hello", vec![json!("ada")], support::no_kwargs(), &[])
        .await
        .map_err(|e| e.to_string())
}

#[tokio::test]
async fn a_plugin_dropped_into_the_directory_is_served() {
    let node = TestNode::start(&["math"], &[]).await;
    let client = node.client().await;
    let caller = Caller::start(node.url(), "math.add", vec![json!(1), json!(2)]).await;
    install_plugin(node.dir.path(), &plugin_file("greeter-v1"), "greeter.wasm");
    assert!(
        eventually(CHANGE, || async { hello(&client).await.is_ok() }).await,
        "never served"
    );
    assert_eq!(hello(&client).await.unwrap(), json!("hello ada from v1"));
    all_ok(&caller.finish().await);
}

#[tokio::test]
async fn a_replaced_plugin_swaps_without_a_failed_call() {
    let node = TestNode::start(&[], &[]).await;
    install_plugin(node.dir.path(), &plugin_file("greeter-v1"), "greeter.wasm");
    let client = node.client().await;
    assert!(eventually(CHANGE, || async { hello(&client).await.is_ok() }).await);
    let caller = Caller::start(node.url(), "greeter.hello", vec![json!("ada")]).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    install_plugin(node.dir.path(), &plugin_file("greeter-v2"), "greeter.wasm");
    assert!(
        eventually(CHANGE, || async {
            hello(&client).await == Ok(json!("hello ada from v2"))
        })
        .await
    );
    tokio::time::sleep(Duration::from_millis(50)).await;
    let outcomes = caller.finish().await;
    all_ok(&outcomes);
    // v1 until the swap, v2 after it, never back.
    let first_v2 = outcomes
        .iter()
        .position(|o| o == &Ok(json!("hello ada from v2")))
        .expect("v2 observed");
    assert!(outcomes[..first_v2]
        .iter()
        .all(|o| o == &Ok(json!("hello ada from v1"))));
    assert!(outcomes[first_v2..]
        .iter()
        .all(|o| o == &Ok(json!("hello ada from v2"))));
    assert!(first_v2 > 0, "the caller never saw v1");
}

#[tokio::test]
async fn a_removed_plugin_is_withdrawn() {
    let node = TestNode::start(&["math"], &[]).await;
    install_plugin(node.dir.path(), &plugin_file("greeter-v1"), "greeter.wasm");
    let client = node.client().await;
    assert!(eventually(CHANGE, || async { hello(&client).await.is_ok() }).await);
    let caller = Caller::start(node.url(), "greeter.hello", vec![json!("ada")]).await;
    let other = Caller::start(node.url(), "math.add", vec![json!(1), json!(2)]).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    std::fs::remove_file(node.dir.path().join("greeter.wasm")).unwrap();
    assert!(
        eventually(CHANGE, || async {
            hello(&client).await.is_err_and(|e| e.contains("1001"))
        })
        .await
    );
    tokio::time::sleep(Duration::from_millis(50)).await;
    let outcomes = caller.finish().await;
    // Answers until the withdrawal, then "not found", nothing else.
    let withdrawn = outcomes.iter().position(Result::is_err).expect("withdrawal observed");
    assert!(outcomes[..withdrawn]
        .iter()
        .all(|o| o == &Ok(json!("hello ada from v1"))));
    assert!(
        outcomes[withdrawn..].iter().all(|o| o == &Err(1001)),
        "{:?}",
        &outcomes[withdrawn..]
    );
    all_ok(&other.finish().await);
    assert_eq!(plugin_report(&client, "greeter").await, Value::Null);
}

#[tokio::test]
async fn broken_replacements_leave_the_old_version_serving() {
    let node = TestNode::start(&[], &[]).await;
    install_plugin(node.dir.path(), &plugin_file("greeter-v1"), "greeter.wasm");
    let client = node.client().await;
    assert!(eventually(CHANGE, || async { hello(&client).await.is_ok() }).await);
    let caller = Caller::start(node.url(), "greeter.hello", vec![json!("ada")]).await;

    let component = std::fs::read(plugin_file("greeter-v2")).unwrap();
    let not_a_plugin = std::fs::read(plugin_file("not-a-plugin")).unwrap();
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "garbage",
            b"definitely not webassembly".to_vec(),
            "not a valid weft plugin component",
        ),
        (
            "truncated",
            component[..component.len() / 3].to_vec(),
            "not a valid weft plugin component",
        ),
        (
            "core module",
            b"\0asm\x01\0\0\0".to_vec(),
            "not a valid weft plugin component",
        ),
        (
            "component of another world",
            not_a_plugin,
            "does not fit the weft:plugin/command-plugin world",
        ),
    ];
    for (case, bytes, expected) in cases {
        install_bytes(node.dir.path(), &bytes, "greeter.wasm");
        let visible = eventually(CHANGE, || async {
            plugin_report(&client, "greeter").await["last_error"]
                .as_str()
                .is_some_and(|e| e.contains(expected))
        })
        .await;
        let report = plugin_report(&client, "greeter").await;
        assert!(visible, "{case}: error not visible: {report}");
        assert_eq!(report["state"], json!("serving"), "{case}: {report}");
        assert!(report["last_error"]
            .as_str()
            .unwrap()
            .contains("the previous version keeps serving"));
        assert_eq!(hello(&client).await.unwrap(), json!("hello ada from v1"), "{case}");
    }
    // A good file again clears the error.
    install_plugin(node.dir.path(), &plugin_file("greeter-v2"), "greeter.wasm");
    assert!(
        eventually(CHANGE, || async {
            hello(&client).await == Ok(json!("hello ada from v2"))
        })
        .await
    );
    assert_eq!(plugin_report(&client, "greeter").await["last_error"], Value::Null);
    let outcomes = caller.finish().await;
    all_ok(&outcomes);
}

#[tokio::test]
async fn a_sidecar_change_reapplies_without_recompiling() {
    let node = TestNode::start(&[], &[]).await;
    let dir = node.dir.path();
    std::fs::write(dir.join("greeter.toml"), "resources = [\"blue\"]\n").unwrap();
    install_plugin(dir, &plugin_file("greeter-v1"), "greeter.wasm");
    let client = node.client().await;
    let with_locs = |locs: &'static str| {
        let client = &client;
        async move {
            client
                .call(
                    "greeter.hello",
                    vec![json!("ada")],
                    support::no_kwargs(),
                    &[locs.to_string()],
                )
                .await
                .is_ok()
        }
    };
    assert!(eventually(CHANGE, || with_locs("blue")).await);
    let before = plugin_report(&client, "greeter").await;
    let caller = Caller::start(node.url(), "greeter.hello", vec![json!("ada")]).await;

    install_bytes(
        dir,
        b"resources = [\"green\"]\ndescription = \"greets\"\n",
        "greeter.toml",
    );
    assert!(eventually(CHANGE, || with_locs("green")).await);
    assert!(!with_locs("blue").await);
    let after = plugin_report(&client, "greeter").await;
    assert_eq!(after["digest"], before["digest"]);
    assert_eq!(
        after["compile_ms"], before["compile_ms"],
        "the component was compiled again"
    );
    assert_eq!(after["description"], json!("greets"));

    // A bad sidecar is reported and the last good settings stay.
    install_bytes(dir, b"resourcez = [\"red\"]\n", "greeter.toml");
    assert!(
        eventually(CHANGE, || async {
            plugin_report(&client, "greeter").await["last_error"]
                .as_str()
                .is_some_and(|e| e.contains("resourcez"))
        })
        .await
    );
    assert!(with_locs("green").await);

    // A valid sidecar again clears the error.
    install_bytes(
        dir,
        b"resources = [\"green\"]\n[limits]\nmax_instances = 1\n",
        "greeter.toml",
    );
    assert!(
        eventually(CHANGE, || async {
            plugin_report(&client, "greeter").await["last_error"].is_null()
        })
        .await
    );
    // Disabled: loaded but not served.
    install_bytes(dir, b"enabled = false\n", "greeter.toml");
    assert!(
        eventually(CHANGE, || async {
            hello(&client).await.is_err_and(|e| e.contains("1001"))
        })
        .await
    );
    assert_eq!(plugin_report(&client, "greeter").await["state"], json!("disabled"));
    let outcomes = caller.finish().await;
    let disabled_at = outcomes.iter().position(Result::is_err).unwrap_or(outcomes.len());
    all_ok(&outcomes[..disabled_at]);
}

#[tokio::test]
async fn two_plugins_claiming_one_command_follow_the_file_name_rule() {
    let node = TestNode::start(&[], &[]).await;
    install_plugin(node.dir.path(), &plugin_file("greeter-v2"), "zeta.wasm");
    install_plugin(node.dir.path(), &plugin_file("greeter-v1"), "alpha.wasm");
    let client = node.client().await;
    assert!(
        eventually(CHANGE, || async {
            plugin_report(&client, "zeta").await["state"] == json!("conflict")
        })
        .await,
        "{}",
        plugin_report(&client, "zeta").await
    );
    assert_eq!(hello(&client).await.unwrap(), json!("hello ada from v1"));
    let zeta = plugin_report(&client, "zeta").await;
    assert!(
        zeta["last_error"]
            .as_str()
            .unwrap()
            .contains("already served by plugin `alpha`"),
        "{zeta}"
    );
    assert_eq!(zeta["commands"][0]["served"], json!(false));
}

#[tokio::test]
async fn a_restart_loads_compiled_code_from_the_cache() {
    let cache = tempfile::tempdir().unwrap();
    let cache_arg = format!("--cache-dir={}", cache.path().display());
    let report = |node: &TestNode, field: &'static str| {
        let url = node.url().to_string();
        async move {
            let client = Client::connect(&url).await.unwrap();
            plugin_report(&client, "math").await[field].clone()
        }
    };
    let origin = |node: &TestNode| report(node, "origin");
    let node = TestNode::start(&["math"], &[&cache_arg]).await;
    assert_eq!(origin(&node).await, json!("compiled"));
    // Cranelift's code is cached when it is ready, before the plugin switches to it.
    assert!(
        eventually(CHANGE, || async { report(&node, "tier").await == json!("optimized") }).await,
        "the plugin never switched to cranelift's code"
    );
    drop(node);
    let node = TestNode::start(&["math"], &[&cache_arg]).await;
    assert_eq!(origin(&node).await, json!("cache"));
    assert_eq!(report(&node, "tier").await, json!("optimized"));
    assert_eq!(add(&node).await, json!(5));
    drop(node);
    // Corrupt every entry: detected, recompiled, served.
    for entry in walk(cache.path()) {
        let mut bytes = std::fs::read(&entry).unwrap();
        let middle = bytes.len() / 2;
        bytes[middle] ^= 0xff;
        std::fs::write(&entry, bytes).unwrap();
    }
    let node = TestNode::start(&["math"], &[&cache_arg]).await;
    assert_eq!(origin(&node).await, json!("compiled"));
    assert_eq!(add(&node).await, json!(5));
}

#[tokio::test]
async fn a_new_plugin_serves_from_baseline_code_then_switches_to_cranelifts_without_a_failed_call() {
    // The Python example (18 MB): Winch compiles it in seconds, Cranelift (in the background, on
    // one thread) takes several times longer, so both phases are seen.
    let node = TestNode::start(&[], &[]).await;
    let client = node.client().await;
    install_plugin(node.dir.path(), &plugin_file("textstats"), "textstats.wasm");
    let text = json!(["the quick fox and the lazy dog and the cat"]);
    let summary = || async {
        client
            .call(
                "textstats.summary",
                text.as_array().unwrap().clone(),
                support::no_kwargs(),
                &[],
            )
            .await
    };
    assert!(
        eventually(Duration::from_secs(60), || async { summary().await.is_ok() }).await,
        "never served"
    );
    let first = plugin_report(&client, "textstats").await;
    assert_eq!(first["tier"], json!("baseline"), "{first}");
    assert_eq!(first["origin"], json!("compiled"), "{first}");
    let answer = summary().await.unwrap();
    let caller = Caller::start(node.url(), "textstats.summary", text.as_array().unwrap().clone()).await;
    assert!(
        eventually(Duration::from_secs(180), || async {
            plugin_report(&client, "textstats").await["tier"] == json!("optimized")
        })
        .await,
        "the plugin never switched to cranelift's code"
    );
    let after = caller.finish().await;
    all_ok(&after);
    assert!(
        after.iter().all(|o| o.as_ref().ok() == Some(&answer)),
        "answers changed with the code"
    );
    // Cranelift's code went to the cache: a restart loads it and compiles nothing.
    let cache_arg = format!("--cache-dir={}", node.cache.path().display());
    let restarted = TestNode::start(&["textstats"], &[&cache_arg]).await;
    let client = restarted.client().await;
    let report = plugin_report(&client, "textstats").await;
    assert_eq!(
        (&report["origin"], &report["tier"]),
        (&json!("cache"), &json!("optimized")),
        "{report}"
    );
}

async fn add(node: &TestNode) -> Value {
    node.client()
        .await
        .call("math.add", vec![json!(2), json!(3)], support::no_kwargs(), &[])
        .await
        .unwrap()
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files.extend(walk(&path));
        } else {
            files.push(path);
        }
    }
    assert!(
        !files.is_empty() || dir.ends_with("compiled"),
        "no cache entries in {}",
        dir.display()
    );
    files
}

/// `component` with a custom section of `extra` bytes appended: a valid component of another
/// digest and size.
fn padded(component: &[u8], extra: usize) -> Vec<u8> {
    fn leb(mut n: usize, out: &mut Vec<u8>) {
        loop {
            let byte = (n & 0x7f) as u8;
            n >>= 7;
            if n == 0 {
                out.push(byte);
                return;
            }
            out.push(byte | 0x80);
        }
    }
    let name = b"padding";
    let mut section = vec![name.len() as u8];
    section.extend_from_slice(name);
    section.resize(section.len() + extra, 0x5a);
    let mut bytes = component.to_vec();
    bytes.push(0);
    leb(section.len(), &mut bytes);
    bytes.extend_from_slice(&section);
    bytes
}

#[tokio::test]
async fn slow_in_place_writes_of_a_large_file_never_replace_a_working_version_early() {
    let node = TestNode::start(&[], &[]).await;
    let dir = node.dir.path();
    install_plugin(dir, &plugin_file("greeter-v1"), "greeter.wasm");
    let client = node.client().await;
    assert!(eventually(CHANGE, || async { hello(&client).await.is_ok() }).await);
    let caller = Caller::start(node.url(), "greeter.hello", vec![json!("ada")]).await;

    // A 20 MB version 2, written in place in 1 MB pieces with pauses, as a slow copy does.
    let big = padded(&std::fs::read(plugin_file("greeter-v2")).unwrap(), 20 << 20);
    {
        use std::io::Write;
        let mut file = std::fs::File::create(dir.join("greeter.wasm")).unwrap();
        for chunk in big.chunks(1 << 20) {
            file.write_all(chunk).unwrap();
            file.flush().unwrap();
            tokio::time::sleep(Duration::from_millis(30)).await;
        }
    }
    assert!(
        eventually(CHANGE, || async {
            hello(&client).await == Ok(json!("hello ada from v2"))
        })
        .await
    );
    let outcomes = caller.finish().await;
    all_ok(&outcomes);
    let first_v2 = outcomes
        .iter()
        .position(|o| o == &Ok(json!("hello ada from v2")))
        .unwrap();
    assert!(outcomes[first_v2..]
        .iter()
        .all(|o| o == &Ok(json!("hello ada from v2"))));
    let report = plugin_report(&client, "greeter").await;
    assert_eq!(report["last_error"], Value::Null, "{report}");
}

#[tokio::test]
async fn rapid_repeated_changes_settle_on_the_last_version() {
    let node = TestNode::start(&[], &[]).await;
    let dir = node.dir.path();
    install_plugin(dir, &plugin_file("greeter-v1"), "greeter.wasm");
    let client = node.client().await;
    assert!(eventually(CHANGE, || async { hello(&client).await.is_ok() }).await);
    let caller = Caller::start(node.url(), "greeter.hello", vec![json!("ada")]).await;
    for i in 0..20 {
        let version = if i % 2 == 0 { "greeter-v2" } else { "greeter-v1" };
        install_plugin(dir, &plugin_file(version), "greeter.wasm");
        tokio::time::sleep(Duration::from_millis(3)).await;
    }
    install_plugin(dir, &plugin_file("greeter-v2"), "greeter.wasm");
    assert!(
        eventually(CHANGE, || async {
            hello(&client).await == Ok(json!("hello ada from v2"))
        })
        .await
    );
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(hello(&client).await.unwrap(), json!("hello ada from v2"));
    all_ok(&caller.finish().await);
}
