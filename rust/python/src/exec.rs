//! Processes started inside a running container: one at a time by a fresh pyrt-child, or
//! forked by the container's exec server (`pyrt._core.ExecServer`).

use std::sync::Mutex;

use pyo3::prelude::*;

use pyrt_core::plan::ExecPlan;
use pyrt_core::report::{SetupError, Stage};
use pyrt_core::runtime;

use crate::child::child_image;
use crate::errors::spawn_error;
use crate::process::{locked, quick, seccomp_program, Process};

/// Starts a process inside the running container whose first process is `target` (a host pid),
/// from the JSON of an OCI `process` object; it joins the container's namespaces and the cgroup
/// whose directories are `cgroup_paths` (may be empty).
#[pyfunction]
#[pyo3(signature = (target, process_json, stdin, stdout, stderr, cgroup_paths=Vec::new(), seccomp_json=None, server=None))]
#[allow(clippy::too_many_arguments)]
pub(crate) fn exec(
    py: Python<'_>,
    target: i32,
    process_json: &str,
    stdin: i32,
    stdout: i32,
    stderr: i32,
    cgroup_paths: Vec<String>,
    seccomp_json: Option<&str>,
    server: Option<&ExecServer>,
) -> PyResult<Process> {
    let plan = ExecPlan::from_process_json(process_json, target, seccomp_json).map_err(|e| {
        spawn_error(
            py,
            &SetupError::new(Stage::Spec, libc::EINVAL, e.to_string()),
        )
    })?;
    if let Some(server) = server {
        let stdio = [stdin, stdout, stderr];
        let made = py.detach(|| {
            locked(&server.inner)
                .as_ref()
                .map(|s| s.exec(plan.clone(), stdio))
        });
        match made {
            Some(Ok(child)) => {
                return Ok(Process::new(child, None, None));
            }
            Some(Err(Some(e))) => return Err(spawn_error(py, &e)),
            // Closed, or ended (the container's first process did): the ordinary way.
            Some(Err(None)) | None => {}
        }
    }
    let image = child_image().map_err(|e| spawn_error(py, &e))?;
    let child = py
        .detach(|| {
            let paths: Vec<std::path::PathBuf> = cgroup_paths.iter().map(Into::into).collect();
            let cgroup = runtime::cgroup_of(&paths);
            runtime::exec_into(image, plan, [stdin, stdout, stderr], cgroup.as_ref())
        })
        .map_err(|e| spawn_error(py, &e))?;
    Ok(Process::new(child, None, None))
}

/// A container's exec server (`pyrt_core::spawn::ExecServer`): execs passed to `exec` with
/// `server=` are forked by it, already inside the container's namespaces.
#[pyclass(module = "pyrt._core")]
pub(crate) struct ExecServer {
    pub(crate) inner: Mutex<Option<pyrt_core::spawn::ExecServer>>,
}

impl ExecServer {
    pub(crate) fn new(server: pyrt_core::spawn::ExecServer) -> Self {
        ExecServer {
            inner: Mutex::new(Some(server)),
        }
    }
}

#[pymethods]
impl ExecServer {
    /// The server process's pid, while it runs.
    #[getter]
    fn pid(&self, py: Python<'_>) -> Option<i32> {
        quick(py, &self.inner, |s| s.as_ref().map(|s| s.pid()))
    }

    /// Sends the server SIGKILL and returns at once: its exit then overlaps the caller's
    /// other work (the container's own end), and `close` reaps it. Idempotent.
    fn kill(&self, py: Python<'_>) {
        quick(py, &self.inner, |s| {
            if let Some(s) = s {
                s.kill();
            }
        });
    }

    /// Ends the server (killed and reaped); idempotent.
    fn close(&self, py: Python<'_>) {
        if let Some(server) = quick(py, &self.inner, Option::take) {
            py.detach(move || drop(server));
        }
    }
}

/// Starts the exec server of the running container whose first process is `target` (a host
/// pid), its execs born in the cgroup whose directories are `cgroup_paths` (may be empty).
#[pyfunction]
#[pyo3(signature = (target, cgroup_paths=Vec::new(), seccomp_json=None))]
pub(crate) fn exec_server(
    py: Python<'_>,
    target: i32,
    cgroup_paths: Vec<String>,
    seccomp_json: Option<&str>,
) -> PyResult<ExecServer> {
    let image = child_image().map_err(|e| spawn_error(py, &e))?;
    let filter = seccomp_json.map(|j| seccomp_program(py, j)).transpose()?;
    let server = py
        .detach(|| {
            let paths: Vec<std::path::PathBuf> = cgroup_paths.iter().map(Into::into).collect();
            let cgroup = runtime::cgroup_of(&paths);
            pyrt_core::spawn::ExecServer::start(image, target, cgroup.as_ref(), filter)
        })
        .map_err(|e| spawn_error(py, &e))?;
    Ok(ExecServer::new(server))
}
