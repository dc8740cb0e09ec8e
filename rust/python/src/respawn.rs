//! A container's start as one call that releases the GIL once (`pyrt._core.respawn`): every
//! start but a held one (a rootless network's attach), fresh or a reset's.
//!
//! Made of the same steps as `Process.wait`, `Process.destroy_cgroup`, `ExecServer.close`,
//! `spawn` and `exec_server`, called one after the other from Python they released the GIL
//! five times. A pool's thread resets containers while the caller's thread runs a test's
//! Python, and each time it wanted the GIL back it waited for the switch interval (up to 5 ms):
//! a reset took 3.6 ms with the caller asleep and 9.7 ms with it busy. Here the thread asks
//! for it back once.

use std::path::PathBuf;
use std::time::Duration;

use pyo3::exceptions::PyOSError;
use pyo3::prelude::*;

use pyrt_core::cgroups::Cgroup;
use pyrt_core::host::statefile;
use pyrt_core::report::SetupError;
use pyrt_core::runtime;

use crate::child::child_image;
use crate::errors::spawn_error;
use crate::exec::ExecServer;
use crate::process::{fault, locked, plan_of, Process};

/// How long the call waits for the end of the container it replaces before it hands the wait
/// back to Python, where it can be interrupted (a killed container ends in well under this).
const END_WAIT: Duration = Duration::from_millis(100);

/// A respawn's result: the container, its exec server, its pid's start time.
type Respawned = (Process, Option<ExecServer>, Option<u64>);

/// What can stop a respawn before its spawn.
enum Failed {
    Setup(SetupError),
    Os(i32, String),
}

/// Starts a container as `spawn` does (its stdio the caller's, never held), after the end of
/// the one it `replaces` (already sent SIGKILL: waited for, its cgroup removed) and of that
/// one's exec `server`; with `serve`, the new container's exec server is started too (None
/// when it could not be: an exec then goes the ordinary way, which says why); with `state`
/// (a path and a JSON object), the object is written there (`write_replacing`) with the new
/// container's "pid", "pid_start" and "cgroups" added, or the container ended again. Returns
/// the container, its server and its pid's start time (read only with `state`); or None,
/// having started nothing, when the replaced container has not ended within 0.1 s: the caller
/// waits for it (interruptibly) and calls again.
#[pyfunction]
#[pyo3(signature = (spec_json, stdin, stdout, stderr, seccomp_json=None, replaces=None, server=None, serve=false, state=None))]
#[allow(clippy::too_many_arguments)]
pub(crate) fn respawn(
    py: Python<'_>,
    spec_json: &str,
    stdin: i32,
    stdout: i32,
    stderr: i32,
    seccomp_json: Option<&str>,
    replaces: Option<&Process>,
    server: Option<&ExecServer>,
    serve: bool,
    state: Option<(PathBuf, String)>,
) -> PyResult<Option<Respawned>> {
    let plan = plan_of(py, spec_json, seccomp_json)?;
    // (The server installs the container's filter on itself: see `exec_server`.)
    let filter = if serve { plan.seccomp.clone() } else { None };
    let image = child_image().map_err(|e| spawn_error(py, &e))?;
    let done = py.detach(|| {
        if let Some(old) = replaces {
            match old.child.wait(Some(END_WAIT)) {
                Ok(Some(_)) => {}
                Ok(None) => return Ok(None),
                Err(e) => return Err(Failed::Os(e.raw_os_error().unwrap_or(0), e.to_string())),
            }
            if let Some(c) = locked(&old.cgroup).take() {
                c.destroy()
                    .map_err(|e| Failed::Os(e.errno(), e.to_string()))?;
            }
        }
        if let Some(s) = server {
            drop(locked(&s.inner).take());
        }
        let created = runtime::create(image, plan, [stdin, stdout, stderr], false, None, || {
            fault("cgroup-created")
        })
        .map_err(Failed::Setup)?;
        let served = serve
            .then(|| {
                pyrt_core::spawn::ExecServer::start(
                    image,
                    created.child.pid,
                    created.cgroup.as_ref(),
                    filter,
                )
                .ok()
            })
            .flatten();
        // (Read only for the state: a run to completion has no use for it.)
        let started = state
            .as_ref()
            .and_then(|_| runtime::start_time(created.child.pid));
        if let Some((path, doc)) = &state {
            let paths = created.cgroup.as_ref().map(Cgroup::paths);
            let text = with_process(doc, created.child.pid, started, paths.as_deref());
            if let Err(e) = statefile::write_replacing(path, text.as_bytes()) {
                // (Dropping the server ends it; the container is ended as a reset ends one.)
                drop(served);
                let _ = created.child.kill(libc::SIGKILL);
                let _ = created.child.wait(None);
                if let Some(c) = created.cgroup {
                    let _ = c.destroy();
                }
                let msg = format!("{}: {e}", path.display());
                return Err(Failed::Os(e.raw_os_error().unwrap_or(0), msg));
            }
        }
        Ok(Some((created, served, started)))
    });
    match done {
        Ok(None) => Ok(None),
        Ok(Some((created, served, started))) => Ok(Some((
            Process::new(created.child, created.cgroup, created.pending),
            served.map(ExecServer::new),
            started,
        ))),
        Err(Failed::Setup(e)) => Err(spawn_error(py, &e)),
        Err(Failed::Os(errno, msg)) => Err(PyOSError::new_err((errno, msg))),
    }
}

/// The state object `doc` (JSON text of an object) with the process's fields added.
fn with_process(doc: &str, pid: i32, start: Option<u64>, cgroups: Option<&[PathBuf]>) -> String {
    let body = doc.trim_end().strip_suffix('}').unwrap_or(doc).trim_end();
    let sep = if body.ends_with('{') { "" } else { ", " };
    let cgroups: Vec<String> = cgroups
        .unwrap_or_default()
        .iter()
        .map(|p| p.display().to_string())
        .collect();
    let start = start.map_or_else(|| "null".to_string(), |t| t.to_string());
    let cgroups = serde_json::to_string(&cgroups).unwrap_or_else(|_| "[]".into());
    format!("{body}{sep}\"pid\": {pid}, \"pid_start\": {start}, \"cgroups\": {cgroups}}}")
}

#[cfg(test)]
mod tests {
    use super::with_process;
    use std::path::PathBuf;

    #[test]
    fn the_process_fields_are_added_to_the_object() {
        let paths = [PathBuf::from("/sys/fs/cgroup/pids/pyrt/a")];
        let got = with_process(r#"{"id": "a"}"#, 7, Some(99), Some(&paths));
        let v: serde_json::Value = serde_json::from_str(&got).unwrap();
        assert_eq!(v["id"], "a");
        assert_eq!(v["pid"], 7);
        assert_eq!(v["pid_start"], 99);
        assert_eq!(v["cgroups"][0], "/sys/fs/cgroup/pids/pyrt/a");
        let v: serde_json::Value =
            serde_json::from_str(&with_process("{}", 1, None, None)).unwrap();
        assert_eq!(v["pid"], 1);
        assert!(v["pid_start"].is_null());
        assert_eq!(v["cgroups"], serde_json::json!([]));
    }
}
