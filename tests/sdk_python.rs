//! Python plugins (componentize-py, `plugin-sdk/python`) served by a node: arguments, errors,
//! calls to other commands and hot reload.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::time::Duration;

use serde_json::json;
use support::{all_ok, eventually, install_plugin, outcome, plugin_file, warm_node, Caller};

#[tokio::test]
async fn python_commands_take_positional_and_keyword_arguments() {
    let node = warm_node(&["textstats"], &[]).await;
    let client = node.client().await;
    let text = "The cat sat. The cat ran away!";
    let summary = outcome(&client, "textstats.summary", json!([text]), json!({}))
        .await
        .unwrap();
    assert_eq!(summary["words"], json!(7), "{summary}");
    assert_eq!(summary["unique_words"], json!(5), "{summary}");
    assert_eq!(summary["sentences"], json!(2), "{summary}");
    assert_eq!(
        outcome(&client, "textstats.summary", json!([]), json!({"text": text}))
            .await
            .unwrap(),
        summary
    );
    let counts = json!({"words": 6, "counts": {"cat": 3, "dog": 1, "emu": 2}});
    assert_eq!(
        outcome(&client, "textstats.top_words", json!([counts]), json!({"n": 2}))
            .await
            .unwrap(),
        json!([{"word": "cat", "count": 3}, {"word": "emu", "count": 2}])
    );
    // The default of `n` applies when it is left out.
    let top = outcome(
        &client,
        "textstats.top_words",
        json!([{"a": 1, "b": 1, "c": 1, "d": 1}]),
        json!({}),
    )
    .await;
    assert_eq!(top.unwrap().as_array().unwrap().len(), 3);

    for (args, kwargs, expected) in [
        (
            json!([]),
            json!({}),
            "textstats.summary: missing a required argument: 'text'",
        ),
        (
            json!(["a", "b"]),
            json!({}),
            "textstats.summary: too many positional arguments",
        ),
        (
            json!(["a"]),
            json!({"txt": "a"}),
            "textstats.summary: got an unexpected keyword argument 'txt'",
        ),
        (json!([42]), json!({}), "textstats.summary: text must be a string"),
    ] {
        let (code, details) = outcome(&client, "textstats.summary", args.clone(), kwargs)
            .await
            .unwrap_err();
        assert_eq!(code, 1003, "{args}: {details}");
        assert!(details.contains(expected), "{args}: {details}");
    }
}

#[tokio::test]
async fn a_python_exception_is_1003_with_its_message() {
    let node = warm_node(&["textstats"], &[]).await;
    let client = node.client().await;
    // float("heavy") raises ValueError inside the plugin.
    let (code, details) = outcome(
        &client,
        "textstats.score",
        json!(["a heavy load", {"heavy": "heavy"}]),
        json!({}),
    )
    .await
    .unwrap_err();
    assert_eq!(code, 1003);
    assert!(
        details.contains("ValueError: could not convert string to float: 'heavy'"),
        "{details}"
    );
    // The plugin keeps serving after its exception.
    let score = outcome(
        &client,
        "textstats.score",
        json!(["a heavy heavy load", {"heavy": 1.5}]),
        json!({}),
    )
    .await
    .unwrap();
    assert_eq!(score, json!({"score": 3.0, "hits": {"heavy": 2}}));
}

#[tokio::test]
async fn python_calls_other_commands_through_the_host() {
    let node = warm_node(&["textstats", "text"], &[]).await;
    let client = node.client().await;
    assert_eq!(
        outcome(
            &client,
            "textstats.shout_words",
            json!(["hello world, hello"]),
            json!({})
        )
        .await
        .unwrap(),
        json!(["HELLO", "WORLD"])
    );
}

#[tokio::test]
async fn a_python_plugin_hot_reloads_without_a_failed_call() {
    let node = warm_node(&[], &[]).await;
    let dir = node.dir.path();
    install_plugin(dir, &plugin_file("pygreeter-v1"), "pygreeter.wasm");
    let client = node.client().await;
    let hello = || outcome(&client, "pygreeter.hello", json!(["ada"]), json!({}));
    assert!(eventually(Duration::from_secs(30), || async { hello().await.is_ok() }).await);
    assert_eq!(hello().await.unwrap(), json!("hello ada from python v1"));

    let caller = Caller::start(node.url(), "pygreeter.hello", vec![json!("ada")]).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    install_plugin(dir, &plugin_file("pygreeter-v2"), "pygreeter.wasm");
    assert!(
        eventually(Duration::from_secs(30), || async {
            hello().await == Ok(json!("hello ada from python v2"))
        })
        .await
    );
    let outcomes = caller.finish().await;
    all_ok(&outcomes);
    let first_v2 = outcomes
        .iter()
        .position(|o| o == &Ok(json!("hello ada from python v2")))
        .expect("the caller saw version 2");
    assert!(outcomes[..first_v2]
        .iter()
        .all(|o| o == &Ok(json!("hello ada from python v1"))));
    assert!(outcomes[first_v2..]
        .iter()
        .all(|o| o == &Ok(json!("hello ada from python v2"))));
}

#[tokio::test]
async fn warm_instances_keep_module_state_unless_the_sidecar_asks_for_fresh_ones() {
    let node = warm_node(&["pygreeter-v1"], &[]).await;
    let client = node.client().await;
    let count = || async { outcome(&client, "pygreeter.calls", json!([]), json!({})).await.unwrap() };
    // One caller, one call at a time: the same warm instance serves each call.
    let first = count().await.as_i64().unwrap();
    assert_eq!(count().await, json!(first + 1));
    assert_eq!(count().await, json!(first + 2));

    std::fs::write(
        node.dir.path().join("pygreeter-v1.toml"),
        "[limits]\ninstance_reuse = 1\n",
    )
    .unwrap();
    assert!(eventually(Duration::from_secs(10), || async { count().await == json!(1) }).await);
    for _ in 0..5 {
        assert_eq!(count().await, json!(1), "a fresh instance serves every call");
    }
}
