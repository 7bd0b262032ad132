//! Library error type: every variant names the file, key or dimension that is wrong.
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum GendaError {
    #[error("config {path}: {msg}")]
    Config { path: String, msg: String },

    #[error("invalid setting `{key}`: {msg}")]
    Invalid { key: String, msg: String },

    #[error("dimension mismatch in {what}: expected {expected}, got {got}")]
    Dimension {
        what: String,
        expected: usize,
        got: usize,
    },

    #[error("{path}: {msg}")]
    File { path: PathBuf, msg: String },

    #[error("filter diverged at cycle {cycle}: {what}; try more inflation, more members or a smaller dt")]
    Diverged { cycle: usize, what: String },

    #[error("stopped by signal after cycle {cycle}; checkpoint written to {checkpoint}; continue with `genda run <config> --restart {checkpoint}`", checkpoint = checkpoint.display())]
    Stopped { cycle: usize, checkpoint: PathBuf },

    #[error("parallel layout: {0}")]
    Parallel(String),

    #[error("linear algebra: {0}")]
    LinAlg(String),

    #[error("score network: {0}")]
    Score(String),

    /// An error already reported by rank 0 (the same on every rank): exit non-zero silently.
    #[error("see the error reported by rank 0")]
    Quiet,
}

pub type Result<T> = std::result::Result<T, GendaError>;

impl GendaError {
    pub fn invalid(key: impl Into<String>, msg: impl Into<String>) -> Self {
        GendaError::Invalid {
            key: key.into(),
            msg: msg.into(),
        }
    }
    pub fn file(path: impl Into<PathBuf>, msg: impl std::fmt::Display) -> Self {
        GendaError::File {
            path: path.into(),
            msg: msg.to_string(),
        }
    }
}
