//! Hostile and careless clients at the connection level: ten thousand idle connections, a flood
//! of connections, slowloris clients, garbage and oversized frames on the peer port. The node
//! keeps answering, its memory stays bounded, and it gives back every file descriptor.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use weft::fabric::wire::PEER_PATH;

/// The node's resident memory, in KiB.
fn rss_kib(node: &TestNode) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{}/status", node.process.id().unwrap())).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// The node's open file descriptors.
fn fds(node: &TestNode) -> usize {
    std::fs::read_dir(format!("/proc/{}/fd", node.process.id().unwrap()))
        .unwrap()
        .count()
}

/// `calls` calls of `math.add` on a fresh connection: all must succeed.
async fn still_serves(node: &TestNode, calls: usize) {
    let client = node.client().await;
    for i in 0..calls as i64 {
        let sum = client
            .call("math.add", vec![json!(i), json!(1)], no_kwargs(), &[])
            .await
            .unwrap();
        assert_eq!(sum, json!(i + 1));
    }
}

/// Waits until the node's descriptors are back to `baseline` (a few more are allowed for its
/// own files).
async fn fds_return(node: &TestNode, baseline: usize) {
    let back = eventually(Duration::from_secs(10), || async { fds(node) <= baseline + 4 }).await;
    assert!(back, "file descriptors leaked: {} now, {baseline} before", fds(node));
}

/// Whether the node closed `stream` (EOF or reset) within `within`.
async fn closed_by_node(stream: &mut TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 1024];
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue,
            Err(_) => return false,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_idle_connections_leave_the_node_responsive() {
    let node = TestNode::start(&["math"], &[]).await;
    still_serves(&node, 10).await;
    let (rss_before, fds_before) = (rss_kib(&node), fds(&node));
    let url = node.url().to_string();
    let mut idle = Vec::with_capacity(10_000);
    for _ in 0..50 {
        let batch = (0..200).map(|_| tokio_tungstenite::connect_async(url.clone()));
        for connected in futures_util::future::join_all(batch).await {
            idle.push(connected.unwrap().0);
        }
    }
    assert_eq!(idle.len(), 10_000);
    // Every one is held: the node has a descriptor for each.
    assert!(fds(&node) >= 10_000, "{} descriptors", fds(&node));
    still_serves(&node, 200).await;
    let grown = rss_kib(&node).saturating_sub(rss_before);
    println!(
        "10,000 idle connections: RSS {rss_before} KiB → +{grown} KiB ({} bytes each)",
        grown * 1024 / 10_000
    );
    assert!(
        grown < 10_000 * 32,
        "memory per idle connection stays under 32 KiB: +{grown} KiB in all"
    );
    drop(idle);
    fds_return(&node, fds_before).await;
    still_serves(&node, 10).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_flood_meets_the_connection_limit() {
    let node = TestNode::start(&["math"], &["--max-connections=200"]).await;
    let client = node.client().await;
    let fds_before = fds(&node);
    // 32 flooders open, handshake and drop connections as fast as they can for 2 s, while the
    // client already connected keeps calling.
    let url = node.url().to_string();
    let stop = tokio::time::Instant::now() + Duration::from_secs(2);
    let mut flooders = Vec::new();
    for _ in 0..32 {
        let url = url.clone();
        flooders.push(tokio::spawn(async move {
            let mut opened = 0u64;
            while tokio::time::Instant::now() < stop {
                if let Ok((mut ws, _)) = tokio_tungstenite::connect_async(url.clone()).await {
                    let _ = ws.close(None).await;
                }
                opened += 1;
            }
            opened
        }));
    }
    let mut calls = 0i64;
    while tokio::time::Instant::now() < stop {
        let sum = client
            .call("math.add", vec![json!(calls), json!(1)], no_kwargs(), &[])
            .await
            .unwrap();
        assert_eq!(sum, json!(calls + 1));
        calls += 1;
    }
    let mut opened = 0;
    for flooder in flooders {
        opened += flooder.await.unwrap();
    }
    println!("flood: {opened} connections opened and closed in 2 s; {calls} calls served meanwhile, none failed");
    assert!(calls > 0 && opened > 0);

    // Past the limit, new connections are closed at once; the ones held keep working.
    let address = url.trim_start_matches("ws://").to_string();
    let mut held = Vec::new();
    for _ in 0..250 {
        held.push(TcpStream::connect(&address).await.unwrap());
    }
    let mut refused = 0;
    for stream in held.iter_mut().skip(200) {
        if closed_by_node(stream, Duration::from_secs(2)).await {
            refused += 1;
        }
    }
    assert!(refused >= 45, "connections past the limit are closed: {refused} of 50");
    let sum = client
        .call("math.add", vec![json!(2), json!(2)], no_kwargs(), &[])
        .await
        .unwrap();
    assert_eq!(sum, 4);
    drop(held);
    fds_return(&node, fds_before).await;
    still_serves(&node, 5).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_clients_are_cut_off() {
    let node = TestNode::start(&["math"], &["--handshake-timeout-ms=500"]).await;
    let fds_before = fds(&node);
    let address = node.url().trim_start_matches("ws://").to_string();
    // 300 clients start an upgrade request and never finish it; another sends garbage.
    let mut slow = Vec::new();
    for i in 0..300 {
        let mut stream = TcpStream::connect(&address).await.unwrap();
        let partial = if i % 2 == 0 {
            "GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n".as_bytes()
        } else {
            b"\x16\x03\x01\x02\x00garbage-that-is-no-http"
        };
        stream.write_all(partial).await.unwrap();
        slow.push(stream);
    }
    still_serves(&node, 20).await;
    for stream in &mut slow {
        assert!(
            closed_by_node(stream, Duration::from_secs(3)).await,
            "a stalled handshake is closed"
        );
    }
    drop(slow);
    fds_return(&node, fds_before).await;
    still_serves(&node, 5).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_on_the_peer_port_leaves_the_fabric_standing() {
    let a = fabric_node(&[], None, &[]).await;
    let b = fabric_node(&["math"], Some(&a), &[]).await;
    let b_id = node_id(&b).await;
    assert!(
        eventually(Duration::from_secs(10), || async {
            servers_of(&a, "math.add").await == [b_id.clone()]
        })
        .await
    );
    let fds_before = fds(&a);
    let rss_before = rss_kib(&a);
    let peer_url = format!("{}{PEER_PATH}", a.url());

    // Binary frames that are no peer message, a text frame, a truncated Hello.
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let mut noise = |len: usize| -> Vec<u8> {
        (0..len)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                seed as u8
            })
            .collect()
    };
    for len in [1, 7, 64, 4096, 65_536] {
        let (mut ws, _) = tokio_tungstenite::connect_async(peer_url.clone()).await.unwrap();
        let _ = ws.send(Message::Binary(noise(len).into())).await;
        // The node drops a link whose first frame is not a Hello.
        let closed = tokio::time::timeout(Duration::from_secs(5), async {
            while let Some(Ok(_)) = ws.next().await {}
        })
        .await;
        assert!(
            closed.is_ok(),
            "a peer connection sending garbage ({len} bytes) is closed"
        );
    }
    let (mut ws, _) = tokio_tungstenite::connect_async(peer_url.clone()).await.unwrap();
    let _ = ws.send(Message::Text("{\"Hello\":{}}".into())).await;
    let _ = ws.send(Message::Binary(vec![0x81, 0xa5, b'H', b'e'].into())).await;
    // A frame far over the peer frame limit (2 × 8 MiB): closed without being kept.
    let (mut big, _) = tokio_tungstenite::connect_async(peer_url.clone()).await.unwrap();
    let _ = big.send(Message::Binary(vec![0u8; 40 << 20].into())).await;
    let closed = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(Ok(_)) = big.next().await {}
    })
    .await;
    assert!(closed.is_ok(), "an oversized peer frame closes the connection");
    // Raw garbage instead of an upgrade request, and a peer that opens and says nothing (its
    // handshake times out).
    let address = a.url().trim_start_matches("ws://").to_string();
    let mut raw = TcpStream::connect(&address).await.unwrap();
    raw.write_all(&noise(10_000)).await.unwrap();
    assert!(closed_by_node(&mut raw, Duration::from_secs(12)).await);
    let (mut silent, _) = tokio_tungstenite::connect_async(peer_url.clone()).await.unwrap();
    let closed = tokio::time::timeout(Duration::from_secs(6), async {
        while let Some(Ok(_)) = silent.next().await {}
    })
    .await;
    assert!(closed.is_ok(), "a peer that never says Hello is dropped");

    // The fabric is untouched: a still routes to b, and b is alive on a.
    let client = a.client().await;
    let sum = client
        .call("math.add", vec![json!(2), json!(3)], no_kwargs(), &[])
        .await
        .unwrap();
    assert_eq!(sum, 5);
    assert!(peer_states(&a).await.contains(&(b_id.clone(), "alive".to_string())));
    drop((ws, big, raw, silent));
    fds_return(&a, fds_before).await;
    let grown = rss_kib(&a).saturating_sub(rss_before);
    println!("garbage on the peer port: RSS +{grown} KiB");
    assert!(
        grown < 64 * 1024,
        "memory stays bounded after a 40 MiB frame: +{grown} KiB"
    );
}
