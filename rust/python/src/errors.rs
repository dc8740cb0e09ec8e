//! Rust failures as Python exceptions: a container's setup error as `pyrt.errors.SpawnError`
//! (with its stage and errno), an I/O error as `OSError`, a cgroup's as `OSError` too.

use pyo3::exceptions::PyOSError;
use pyo3::prelude::*;
use pyo3::types::PyDict;

use pyrt_core::cgroups;
use pyrt_core::report::SetupError;

/// A container's setup error as `pyrt.errors.SpawnError(message, stage=, errno=)`.
pub(crate) fn spawn_error(py: Python<'_>, e: &SetupError) -> PyErr {
    let build = || -> PyResult<PyErr> {
        let cls = py.import("pyrt.errors")?.getattr("SpawnError")?;
        let kw = PyDict::new(py);
        kw.set_item("stage", e.stage.name())?;
        kw.set_item("errno", e.errno)?;
        Ok(PyErr::from_value(
            cls.call((e.message.clone(),), Some(&kw))?,
        ))
    };
    build().unwrap_or_else(|err| err)
}

/// An I/O error as `OSError(errno, message)`.
pub(crate) fn os_error(e: &std::io::Error) -> PyErr {
    PyOSError::new_err((e.raw_os_error().unwrap_or(0), e.to_string()))
}

/// A cgroup's error as `OSError(errno, message)` (the message names the cgroup's path).
pub(crate) fn cgroup_error(e: cgroups::CgroupError) -> PyErr {
    PyOSError::new_err((e.errno(), e.to_string()))
}
