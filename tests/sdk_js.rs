//! JavaScript plugins (componentize-js, `plugin-sdk/js`) served by a node: arguments, errors and
//! calls to Rust commands.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use serde_json::json;
use support::{outcome, warm_node};

#[tokio::test]
async fn js_commands_take_positional_and_keyword_arguments() {
    let node = warm_node(&["reshape"], &[]).await;
    let client = node.client().await;
    let record = json!({"id": 7, "name": "ada", "team": "compilers"});
    assert_eq!(
        outcome(&client, "reshape.pick", json!([record, ["id", "team"]]), json!({}))
            .await
            .unwrap(),
        json!({"id": 7, "team": "compilers"})
    );
    assert_eq!(
        outcome(
            &client,
            "reshape.pick",
            json!([]),
            json!({"fields": ["name"], "value": record})
        )
        .await
        .unwrap(),
        json!({"name": "ada"})
    );
    assert_eq!(
        outcome(
            &client,
            "reshape.rename",
            json!([record]),
            json!({"mapping": {"name": "who"}})
        )
        .await
        .unwrap(),
        json!({"id": 7, "who": "ada", "team": "compilers"})
    );
    let rows = json!([{"team": "a", "n": 1}, {"team": "b", "n": 2}, {"team": "a", "n": 3}]);
    assert_eq!(
        outcome(&client, "reshape.group_by", json!([rows, "team"]), json!({}))
            .await
            .unwrap(),
        json!({"a": [{"team": "a", "n": 1}, {"team": "a", "n": 3}], "b": [{"team": "b", "n": 2}]})
    );

    for (args, kwargs, expected) in [
        (json!([record]), json!({}), "reshape.pick: missing argument fields"),
        (
            json!([record, [], 3]),
            json!({}),
            "reshape.pick: takes 2 arguments but 3 were given",
        ),
        (
            json!([record]),
            json!({"feilds": []}),
            "reshape.pick: no parameter named feilds",
        ),
        (
            json!([record, []]),
            json!({"value": 1}),
            "reshape.pick: value is given twice",
        ),
        (
            json!(["not a record", []]),
            json!({}),
            "reshape.pick: record must be an object",
        ),
    ] {
        let (code, details) = outcome(&client, "reshape.pick", args.clone(), kwargs)
            .await
            .unwrap_err();
        assert_eq!(code, 1003, "{args}: {details}");
        assert!(details.contains(expected), "{args}: {details}");
    }
}

#[tokio::test]
async fn a_js_exception_is_1003_with_its_message() {
    let node = warm_node(&["reshape"], &[]).await;
    let client = node.client().await;
    let (code, details) = outcome(
        &client,
        "reshape.render",
        json!(["hi {{who.name}}", {"who": {}}]),
        json!({}),
    )
    .await
    .unwrap_err();
    assert_eq!(code, 1003);
    assert!(
        details.contains("Error: the value has nothing at who.name"),
        "{details}"
    );
    assert_eq!(
        outcome(
            &client,
            "reshape.render",
            json!(["hi {{who.name}} ({{n}})", {"who": {"name": "ada"}, "n": 3}]),
            json!({})
        )
        .await
        .unwrap(),
        json!("hi ada (3)")
    );
}

#[tokio::test]
async fn a_js_command_calls_a_rust_command() {
    let node = warm_node(&["reshape", "math"], &[]).await;
    let client = node.client().await;
    let rows = json!([{"cost": {"eur": 1.5}}, {"cost": {"eur": 2}}, {"cost": {"eur": 4.25}}]);
    assert_eq!(
        outcome(&client, "reshape.total", json!([rows, "cost.eur"]), json!({}))
            .await
            .unwrap(),
        json!(7.75)
    );
    // A failure of the called command reaches the caller with its kind and message: here
    // nothing serves `math.add`.
    let node = warm_node(&["reshape"], &[]).await;
    let client = node.client().await;
    let (code, details) = outcome(&client, "reshape.total", json!([rows, "cost.eur"]), json!({}))
        .await
        .unwrap_err();
    assert_eq!(code, 1001);
    assert!(details.contains("math.add"), "{details}");
}
