//! WebSocket transport of the client protocol: the node's listener and a client.

pub mod client;
pub mod server;

pub use client::{Client, ClientError};
