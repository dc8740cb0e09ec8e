//! A container's log file, filled from its output by a thread of ours.

use pyo3::exceptions::PyOSError;
use pyo3::prelude::*;

/// A pipe whose read end pyrt's log thread copies into `path` (rotated at `cap` bytes, one old
/// file kept), until every writer has closed it. Returns the write end, for the container's
/// stdout and stderr, and a descriptor that reads EOF once all of it is in the file.
#[pyfunction]
pub(crate) fn log_pipe(path: &str, cap: u64) -> PyResult<(i32, i32)> {
    use std::os::fd::IntoRawFd;
    let pipe = || {
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
            .map_err(|e| PyOSError::new_err((e as i32, e.desc())))
    };
    let (r, w) = pipe()?;
    let (done_r, done_w) = pipe()?;
    pyrt_core::host::logs::follow_into(r, path.into(), cap, Some(done_w))
        .map_err(|e| PyOSError::new_err((e.raw_os_error().unwrap_or(0), e.to_string())))?;
    Ok((w.into_raw_fd(), done_r.into_raw_fd()))
}

/// Copies what can be read from `fd` (taken over; e.g. a pty master) into `path` like a
/// container's log pipe. Returns a descriptor that reads EOF once all of it is in the file, as
/// `log_pipe`'s second one does.
#[pyfunction]
pub(crate) fn log_from(fd: i32, path: &str, cap: u64) -> PyResult<i32> {
    use std::os::fd::{FromRawFd, IntoRawFd};
    // SAFETY: the caller hands the descriptor over.
    let owned = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) };
    let (done_r, done_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
        .map_err(|e| PyOSError::new_err((e as i32, e.desc())))?;
    pyrt_core::host::logs::follow_into(owned, path.into(), cap, Some(done_w))
        .map_err(|e| PyOSError::new_err((e.raw_os_error().unwrap_or(0), e.to_string())))?;
    Ok(done_r.into_raw_fd())
}
