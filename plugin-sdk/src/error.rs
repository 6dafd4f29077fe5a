use crate::bindings::weft::plugin::types::CallError;

/// Why a command failed. Converts from `String` and `&str` as [`Error::Failed`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    /// The arguments do not fit the command.
    InvalidArgs(String),
    /// The command ran and failed.
    Failed(String),
    /// A command called through the host could not be found.
    NotFound(String),
    /// The call was refused.
    Denied(String),
    /// A call through the host did not finish in time.
    Timeout(String),
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::InvalidArgs(m) => write!(f, "invalid arguments: {m}"),
            Error::Failed(m) => write!(f, "{m}"),
            Error::NotFound(m) => write!(f, "not found: {m}"),
            Error::Denied(m) => write!(f, "denied: {m}"),
            Error::Timeout(m) => write!(f, "timeout: {m}"),
        }
    }
}

impl std::error::Error for Error {}

impl From<String> for Error {
    fn from(message: String) -> Self {
        Error::Failed(message)
    }
}

impl From<&str> for Error {
    fn from(message: &str) -> Self {
        Error::Failed(message.to_string())
    }
}

impl From<CallError> for Error {
    fn from(e: CallError) -> Self {
        match e {
            CallError::InvalidArgs(m) => Error::InvalidArgs(m),
            CallError::Failed(m) => Error::Failed(m),
            CallError::NotFound(m) => Error::NotFound(m),
            CallError::Denied(m) => Error::Denied(m),
            CallError::Timeout(m) => Error::Timeout(m),
        }
    }
}

impl From<Error> for CallError {
    fn from(e: Error) -> Self {
        match e {
            Error::InvalidArgs(m) => CallError::InvalidArgs(m),
            Error::Failed(m) => CallError::Failed(m),
            Error::NotFound(m) => CallError::NotFound(m),
            Error::Denied(m) => CallError::Denied(m),
            Error::Timeout(m) => CallError::Timeout(m),
        }
    }
}
