//! TLS on the client listener and between peers, with certificates made by the test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use serde_json::{json, Map};
use support::{eventually, fabric_node, peer_states, servers_of};
use weft::net::tls::client_trusting;
use weft::net::Client;

/// A CA and, for each name, a certificate it signed for `127.0.0.1` (usable by servers and
/// clients), written as PEM files into `dir`.
struct Pki {
    ca: PathBuf,
}

impl Pki {
    fn new(dir: &Path, label: &str, nodes: &[&str]) -> Pki {
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, format!("weft test CA {label}"));
        let ca_cert = ca_params.self_signed(&ca_key).unwrap();
        let ca = dir.join(format!("{label}-ca.pem"));
        std::fs::write(&ca, ca_cert.pem()).unwrap();
        let issuer = Issuer::new(ca_params, ca_key);
        for node in nodes {
            let key = KeyPair::generate().unwrap();
            let mut params = CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()]).unwrap();
            params.distinguished_name.push(DnType::CommonName, *node);
            let cert = params.signed_by(&key, &issuer).unwrap();
            std::fs::write(dir.join(format!("{node}.pem")), cert.pem()).unwrap();
            std::fs::write(dir.join(format!("{node}.key")), key.serialize_pem()).unwrap();
        }
        Pki { ca }
    }
}

fn tls_args(dir: &Path, node: &str, ca: &Path, mtls: bool) -> Vec<String> {
    let mut args = vec![
        format!("--tls-cert={}", dir.join(format!("{node}.pem")).display()),
        format!("--tls-key={}", dir.join(format!("{node}.key")).display()),
        format!("--tls-ca={}", ca.display()),
    ];
    if mtls {
        args.push("--peer-mtls".into());
    }
    args
}

#[tokio::test]
async fn clients_reach_a_tls_node_only_over_verified_tls() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path(), "a", &["node"]);
    let other = Pki::new(dir.path(), "b", &[]);
    let args = tls_args(dir.path(), "node", &pki.ca, false);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let node = fabric_node(&["math"], None, &args).await;
    assert!(node.url().starts_with("wss://127.0.0.1:"), "{}", node.url());

    let trusted = Client::connect_with(node.url(), None, Some(client_trusting(&pki.ca).unwrap()))
        .await
        .unwrap();
    let sum = trusted
        .call("math.add", vec![json!(2), json!(3)], Map::new(), &[])
        .await
        .unwrap();
    assert_eq!(sum, json!(5));

    // A client that trusts another CA, and one speaking plain WebSocket, get nowhere.
    let untrusted = Client::connect_with(node.url(), None, Some(client_trusting(&other.ca).unwrap())).await;
    assert!(untrusted.is_err());
    let plain = Client::connect(&node.url().replacen("wss://", "ws://", 1)).await;
    assert!(plain.is_err());
    // The node kept serving through both.
    let sum = trusted
        .call("math.add", vec![json!(1), json!(1)], Map::new(), &[])
        .await
        .unwrap();
    assert_eq!(sum, json!(2));
}

#[tokio::test]
async fn peers_link_over_mutual_tls_and_a_peer_without_a_certificate_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path(), "cluster", &["a", "b", "c"]);
    let (a_args, b_args) = (
        tls_args(dir.path(), "a", &pki.ca, true),
        tls_args(dir.path(), "b", &pki.ca, true),
    );
    let a_args: Vec<&str> = a_args.iter().map(String::as_str).collect();
    let b_args: Vec<&str> = b_args.iter().map(String::as_str).collect();
    let a = fabric_node(&["math"], None, &a_args).await;
    let b = fabric_node(&["text"], Some(&a), &b_args).await;
    assert!(
        eventually(Duration::from_secs(10), || async {
            servers_of(&b, "math.add").await.len() == 1 && servers_of(&a, "text.upper").await.len() == 1
        })
        .await,
        "the two nodes never exchanged catalogs over mutual TLS"
    );
    let tls = client_trusting(&pki.ca).unwrap();
    let client = Client::connect_with(b.url(), None, Some(tls.clone())).await.unwrap();
    assert_eq!(
        client
            .call("math.add", vec![json!(20), json!(22)], Map::new(), &[])
            .await
            .unwrap(),
        json!(42)
    );

    // Same CA, same secret, but it shows no certificate when it dials: refused.
    let c_args = tls_args(dir.path(), "c", &pki.ca, false);
    let c_args: Vec<&str> = c_args.iter().map(String::as_str).collect();
    let c = fabric_node(&["scenarios"], Some(&a), &c_args).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        peer_states(&c).await.iter().all(|(_, state)| state != "alive"),
        "{:?}",
        peer_states(&c).await
    );
    assert!(servers_of(&a, "first_step").await.is_empty());
}
