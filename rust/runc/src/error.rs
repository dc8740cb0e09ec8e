//! The one error type of `pyrt-runc`: every command fails with one of these, printed on stderr
//! and to `--log`, and exit status 1 (runc's).

use std::io;

use pyrt_core::cgroups::CgroupError;
use pyrt_core::report::SetupError;

#[derive(Debug, thiserror::Error)]
pub enum RuncError {
    #[error("container does not exist: {0}")]
    NotExist(String),
    #[error("container with id exists: {0}")]
    Exists(String),
    #[error("invalid container id {0:?}: use letters, digits, '_', '+', '-' and '.'")]
    BadId(String),
    #[error("{0}")]
    State(String),
    #[error("{0}")]
    Usage(String),
    #[error("{0}")]
    Spec(String),
    #[error("{0}")]
    Setup(#[from] SetupError),
    #[error("cgroup: {0}")]
    Cgroup(#[from] CgroupError),
    #[error("{what}: {source}")]
    Io { what: String, source: io::Error },
}

pub type Result<T> = std::result::Result<T, RuncError>;

/// `map_err(io_err("reading x"))`.
pub fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> RuncError {
    let what = what.into();
    move |source| RuncError::Io { what, source }
}
