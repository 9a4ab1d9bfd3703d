//! What can go wrong, and which exit code it becomes.

use crate::api::ApiError;
use crate::config::ConfigError;

/// Success (for `listen --once`: messages came).
pub const EXIT_OK: u8 = 0;
/// An error: from the server, the network, the config file or the input.
pub const EXIT_FAILURE: u8 = 1;
/// Bad command-line usage.
pub const EXIT_USAGE: u8 = 2;
/// `listen --once`: the poll succeeded but there was nothing new.
pub const EXIT_NO_MESSAGES: u8 = 3;

#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// Printed as `<code>: <message>` for server errors.
    #[error(transparent)]
    Api(#[from] ApiError),
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The arguments do not make sense (exit 2, like clap's own errors).
    #[error("{0}")]
    Usage(String),
    #[error("cannot write output: {0}")]
    Output(std::io::Error),
    #[error("{0}")]
    Failed(String),
}

impl CliError {
    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::Usage(_) => EXIT_USAGE,
            _ => EXIT_FAILURE,
        }
    }

    /// stdout was closed by the reader (e.g. `| head`): stop quietly.
    pub fn is_broken_pipe(&self) -> bool {
        matches!(self, CliError::Output(e) if e.kind() == std::io::ErrorKind::BrokenPipe)
    }
}
