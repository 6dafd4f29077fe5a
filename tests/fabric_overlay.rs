//! Fabrics larger than the full mesh: a partial view, records relayed by other nodes (and never
//! forged by them), and calls that travel through nodes to reach the one that serves them.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use support::{eventually, fabric_node, no_kwargs, peer_rows, peer_states, servers_of, TestNode};
use tokio_tungstenite::tungstenite::Message;
use weft::fabric::auth;
use weft::fabric::identity::NodeKey;
use weft::fabric::wire::{self, CatalogEntry, NodeRecord, PeerMessage, RecordBody, PEER_PATH, PROTOCOL_VERSION};

const CONVERGE: Duration = Duration::from_secs(20);

#[tokio::test]
async fn beyond_max_mesh_nodes_keep_a_partial_view_and_calls_travel_through_others() {
    const N: usize = 10;
    const MAX_MESH: usize = 3;
    let max_mesh = format!("--max-mesh={MAX_MESH}");
    let mut nodes: Vec<TestNode> = Vec::new();
    for i in 0..N {
        let plugins: &[&str] = match i {
            0 => &["math"],
            9 => &["text"],
            _ => &[],
        };
        let node = fabric_node(plugins, nodes.last(), &[&max_mesh]).await;
        nodes.push(node);
    }
    let origin = support::node_id(&nodes[0]).await;
    for node in &nodes {
        assert!(
            eventually(CONVERGE, || async {
                peer_states(node).await.iter().filter(|(_, s)| s == "alive").count() == N - 1
                    && servers_of(node, "math.add").await.len() == 1
                    && servers_of(node, "text.upper").await.len() == 1
            })
            .await,
            "a node never learned every member and command: {:?}",
            peer_states(node).await
        );
    }
    // A node accepts 2 × max-mesh links, two more for ring neighbours or a healing partition;
    // surplus links are dropped at the next maintenance round.
    let linked = |peers: &[Value]| peers.iter().filter(|p| p["linked"] == true).count();
    for node in &nodes {
        let now = peer_rows(node).await;
        assert!(linked(&now) <= 2 * MAX_MESH + 2, "{} links: {now:?}", linked(&now));
        assert!(
            eventually(CONVERGE, || async { linked(&peer_rows(node).await) <= 2 * MAX_MESH }).await,
            "surplus links were never dropped: {:?}",
            peer_rows(node).await
        );
    }
    let mut through_others = 0;
    for node in &nodes {
        let peers = peer_rows(node).await;
        if peers
            .iter()
            .any(|p| p["node"] == origin.as_str() && p["linked"] == false)
        {
            through_others += 1;
        }
        let client = node.client().await;
        assert_eq!(
            client
                .call("math.add", vec![json!(2), json!(3)], no_kwargs(), &[])
                .await
                .unwrap(),
            json!(5)
        );
        assert_eq!(
            client
                .call("text.upper", vec![json!("relay")], no_kwargs(), &[])
                .await
                .unwrap(),
            json!("RELAY")
        );
    }
    assert!(through_others > 0, "every node linked the origin: no partial view");

    // The origin dies: its commands leave every catalog, and calls fail clearly.
    support::signal(&nodes[0], "-KILL");
    for node in &nodes[1..] {
        assert!(
            eventually(CONVERGE, || async { servers_of(node, "math.add").await.is_empty() }).await,
            "the dead node's command stayed in a catalog"
        );
        let err = node
            .client()
            .await
            .call("math.add", vec![json!(2), json!(3)], no_kwargs(), &[])
            .await
            .unwrap_err();
        assert!(err.to_string().contains("1001"), "{err}");
    }
}

/// A peer that speaks the protocol by hand (with the cluster secret, so it gets in).
struct RawPeer {
    ws: tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>,
}

impl RawPeer {
    async fn join(url: &str, node: &str, key: &NodeKey) -> RawPeer {
        let (mut ws, _) = tokio_tungstenite::connect_async(format!("{url}{PEER_PATH}"))
            .await
            .unwrap();
        let my_nonce = auth::nonce();
        let hello = PeerMessage::Hello {
            protocol: PROTOCOL_VERSION,
            cluster: "default".into(),
            node: node.into(),
            url: "ws://127.0.0.1:9".into(),
            key: key.public(),
            nonce: my_nonce,
            tier: 0,
        };
        ws.send(Message::Binary(wire::encode(&hello).unwrap().into()))
            .await
            .unwrap();
        let Some(Ok(Message::Binary(frame))) = ws.next().await else {
            panic!("no welcome")
        };
        let PeerMessage::Welcome {
            node: listener,
            key: listener_key,
            nonce,
            ..
        } = wire::decode(&frame).unwrap()
        else {
            panic!("not a welcome")
        };
        let me = auth::Party {
            node,
            key: &key.public(),
        };
        let them = auth::Party {
            node: &listener,
            key: &listener_key,
        };
        let transcript = auth::transcript("dialer", &my_nonce, &nonce, me, them);
        let proof = PeerMessage::Proof {
            proof: auth::proof(b"test-secret", &transcript),
            signature: key.sign(&transcript),
        };
        ws.send(Message::Binary(wire::encode(&proof).unwrap().into()))
            .await
            .unwrap();
        RawPeer { ws }
    }

    async fn send(&mut self, message: &PeerMessage) {
        self.ws
            .send(Message::Binary(wire::encode(message).unwrap().into()))
            .await
            .unwrap();
    }
}

fn record(node: &str, key: [u8; 32], command: &str, signer: &NodeKey) -> std::sync::Arc<NodeRecord> {
    let body = RecordBody {
        node: node.into(),
        key,
        url: "ws://127.0.0.1:9".into(),
        incarnation: u64::MAX / 2,
        version: u64::MAX / 2,
        entries: vec![CatalogEntry {
            command: command.into(),
            tags: vec![],
            version: "1.0.0".into(),
            digest: "00".into(),
            tenant: "default".into(),
            public: false,
            plugin: "math".into(),
            size: 1,
            replica_of: None,
        }],
        neighbours: vec![],
        routes: Vec::new(),
    };
    std::sync::Arc::new(NodeRecord::signed(body, signer).unwrap())
}

#[tokio::test]
async fn a_member_cannot_forge_another_nodes_record() {
    let a = fabric_node(&[], None, &[]).await;
    let b = fabric_node(&["math"], Some(&a), &[]).await;
    let id_b = support::node_id(&b).await;
    assert!(
        eventually(CONVERGE, || async {
            servers_of(&a, "math.add").await == vec![id_b.clone()]
        })
        .await
    );

    let mallory = NodeKey::generate();
    let mut peer = RawPeer::join(a.url(), "mallory", &mallory).await;
    // B's public key (read from its data directory; the forger never has the private half).
    let b_public = NodeKey::load_or_create(&b.cache.path().join("data")).unwrap().public();
    // Under its own key, naming B; under B's key, signed by mallory; and mallory's own record.
    peer.send(&PeerMessage::Record(record(
        &id_b,
        mallory.public(),
        "evil.own-key",
        &mallory,
    )))
    .await;
    peer.send(&PeerMessage::Record(record(&id_b, b_public, "evil.b-key", &mallory)))
        .await;
    peer.send(&PeerMessage::Record(record(
        "mallory",
        mallory.public(),
        "mallory.cmd",
        &mallory,
    )))
    .await;
    assert!(
        eventually(Duration::from_secs(1), || async {
            servers_of(&a, "mallory.cmd").await == vec!["mallory".to_string()]
        })
        .await,
        "the raw peer's own record was not taken (so the test proves nothing)"
    );
    for node in [&a, &b] {
        assert!(servers_of(node, "evil.own-key").await.is_empty());
        assert!(servers_of(node, "evil.b-key").await.is_empty());
        assert_eq!(servers_of(node, "math.add").await, vec![id_b.clone()]);
    }
}

#[tokio::test]
async fn a_partition_of_a_partial_view_is_found_and_heals() {
    const N: usize = 10;
    let mut nodes: Vec<TestNode> = Vec::new();
    for i in 0..N {
        let plugins: &[&str] = if i == N - 1 { &["math"] } else { &[] };
        let node = fabric_node(plugins, nodes.last(), &["--max-mesh=3", "--fault-injection"]).await;
        nodes.push(node);
    }
    let mut ids = Vec::new();
    for node in &nodes {
        ids.push(support::node_id(node).await);
    }
    for node in &nodes {
        assert!(
            eventually(CONVERGE, || async {
                peer_states(node).await.iter().filter(|(_, s)| s == "alive").count() == N - 1
                    && servers_of(node, "math.add").await.len() == 1
            })
            .await
        );
    }
    let (left, right) = ids.split_at(N / 2);
    let fault = |action: &'static str| {
        let nodes = &nodes;
        async move {
            for (i, node) in nodes.iter().enumerate() {
                let other = if i < N / 2 { right } else { left };
                node.client()
                    .await
                    .call("weft.fault", vec![json!(action), json!(other)], no_kwargs(), &[])
                    .await
                    .unwrap();
            }
        }
    };
    fault("cut").await;
    // Every node of the left half finds every node of the right half dead, also those no left
    // node ever linked to, and the command served only on the right is gone from the left.
    for node in &nodes[..N / 2] {
        assert!(
            eventually(CONVERGE, || async {
                let states = peer_states(node).await;
                right
                    .iter()
                    .all(|id| states.iter().any(|(n, s)| n == id && s == "dead"))
                    && servers_of(node, "math.add").await.is_empty()
            })
            .await,
            "the left half still sees the right: {:?}",
            peer_states(node).await
        );
    }
    // The right half keeps serving itself.
    assert_eq!(
        nodes[N / 2]
            .client()
            .await
            .call("math.add", vec![json!(20), json!(22)], no_kwargs(), &[])
            .await
            .unwrap(),
        json!(42)
    );
    fault("restore").await;
    for node in &nodes {
        assert!(
            eventually(CONVERGE, || async {
                peer_states(node).await.iter().filter(|(_, s)| s == "alive").count() == N - 1
                    && servers_of(node, "math.add").await.len() == 1
            })
            .await,
            "the fabric did not heal: {:?}",
            peer_states(node).await
        );
        assert_eq!(
            node.client()
                .await
                .call("math.add", vec![json!(1), json!(1)], no_kwargs(), &[])
                .await
                .unwrap(),
            json!(2)
        );
    }
}
