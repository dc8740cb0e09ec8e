//! Processes named by (pid, start time), so that a reused pid is never taken for them.

use pyo3::exceptions::PyOSError;
use pyo3::prelude::*;

use pyrt_core::runtime;

use crate::errors::os_error;

/// The start time of process `pid` (clock ticks after boot), None when there is none: with
/// the pid, it names one process and never a later one that reused the number.
#[pyfunction]
pub(crate) fn pid_start_time(pid: i64) -> Option<u64> {
    i32::try_from(pid).ok().and_then(runtime::start_time)
}

/// Sends `sig` to a container's first process recorded as (`pid`, `start`) by whoever
/// created it, through a pidfd (ProcessLookupError once it is gone).
#[pyfunction]
pub(crate) fn signal_recorded(pid: i64, start: u64, sig: i32) -> PyResult<()> {
    let pid =
        i32::try_from(pid).map_err(|_| PyOSError::new_err((libc::ESRCH, "no such process")))?;
    runtime::signal_recorded(pid, start, sig).map_err(|e| os_error(&e))
}
