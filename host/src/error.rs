//! Why one command did not produce a result. Shared by the runtime (which raises it) and the
//! RPC layer (which maps it to a client error code).

/// The outcome of a failed command.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CommandError {
    /// No command of that name, tags and version can be reached.
    #[error("{0}")]
    NotFound(String),
    /// The arguments do not fit the command.
    #[error("{0}")]
    InvalidArgs(String),
    /// The command ran and failed, or its plugin trapped.
    #[error("{0}")]
    Failed(String),
    /// The caller may not do this.
    #[error("{0}")]
    Denied(String),
    /// The command did not finish within its deadline.
    #[error("{0}")]
    Timeout(String),
}

impl CommandError {
    /// The name of the kind, as clients see it in `details`.
    pub fn kind(&self) -> &'static str {
        match self {
            CommandError::NotFound(_) => "not-found",
            CommandError::InvalidArgs(_) => "invalid-args",
            CommandError::Failed(_) => "failed",
            CommandError::Denied(_) => "denied",
            CommandError::Timeout(_) => "timeout",
        }
    }
}
