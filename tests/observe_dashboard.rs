//! The live dashboard at `/`, in a real browser: headless Chromium against a running three-node
//! fabric. The screenshot it takes is kept in the target directory (`tmp/dashboard.png`).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::{json, Map};
use support::{eventually, fabric_node, node_id, peer_states};

/// The Chromium binary (`chromium` on Debian; `WEFT_CHROMIUM` to use another).
fn chromium() -> String {
    std::env::var("WEFT_CHROMIUM").unwrap_or_else(|_| "chromium".into())
}

/// Runs headless Chromium on `url` with `args`, giving the page's script time to run.
fn browse(url: &str, args: &[&str]) -> String {
    let profile = tempfile::tempdir().unwrap();
    let output = Command::new(chromium())
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-dev-shm-usage",
            &format!("--user-data-dir={}", profile.path().display()),
            "--virtual-time-budget=5000",
            "--window-size=1200,1100",
        ])
        .args(args)
        .arg(url)
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "headless Chromium (`{}`) must be installed for this test: {e}",
                chromium()
            )
        });
    assert!(
        output.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[tokio::test]
async fn the_dashboard_draws_every_node_and_command_of_a_three_node_fabric() {
    let a = fabric_node(&["math"], None, &["--http=127.0.0.1:0"]).await;
    let b = fabric_node(&["text"], Some(&a), &[]).await;
    let c = fabric_node(&[], Some(&b), &[]).await;
    assert!(
        eventually(Duration::from_secs(20), || async {
            let states = peer_states(&a).await;
            states.len() == 2 && states.iter().all(|(_, s)| s == "alive")
        })
        .await
    );
    assert!(
        eventually(Duration::from_secs(10), || async {
            !support::servers_of(&a, "text.upper").await.is_empty()
        })
        .await
    );
    // Some calls, so that the page has rates to show.
    let client = a.client().await;
    for i in 0..20 {
        client
            .call("math.add", vec![json!(i), json!(1)], Map::new(), &[])
            .await
            .unwrap();
    }
    let ids = [node_id(&a).await, node_id(&b).await, node_id(&c).await];
    let url = format!("{}/", a.process.http_url().unwrap());

    let dom = browse(&url, &["--dump-dom"]);
    for id in &ids {
        assert!(dom.contains(id.as_str()), "node {id} is not on the page:\n{dom}");
    }
    for command in ["math.add", "text.upper"] {
        assert!(dom.contains(command), "command {command} is not on the page:\n{dom}");
    }
    assert!(dom.contains("<circle"), "the fabric is not drawn:\n{dom}");
    assert!(
        dom.contains(r#"<span id="error"></span>"#),
        "the page reports an error:\n{dom}"
    );

    let shot = artifacts().join("dashboard.png");
    browse(&url, &[&format!("--screenshot={}", shot.display())]);
    let png = std::fs::read(&shot).unwrap();
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 10_000,
        "no screenshot at {}",
        shot.display()
    );
}

/// Where test artifacts are kept: the target directory's `tmp`.
fn artifacts() -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).to_path_buf();
    std::fs::create_dir_all(&dir).unwrap();
    dir
}
