//! WebSocket transport of the client protocol: the node's listener and a client.

pub mod client;
pub mod http;
pub mod server;
pub mod tls;

pub use client::{Client, ClientError};
