//! The MPREG-compatible client protocol: request frames, dependency resolution between the
//! commands of one request, and their execution on this node.

mod builtins;
mod executor;
pub(crate) mod plan;
pub(crate) mod protocol;

pub use builtins::{NAMES as BUILTIN_COMMANDS, PEER_STATES};
pub use executor::{Executor, Remote, RemoteCall, RemoteFuture};
pub use protocol::{codes, ErrorBody, Request, RequestCommand, Response};
