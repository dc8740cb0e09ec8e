//! Starting a container and its first process as Python sees it (`pyrt._core.Process`):
//! spawn, its output, its wait, its signals.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use pyo3::exceptions::{PyOSError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyBytes;

use pyrt_core::cgroups::{self, Cgroup};
use pyrt_core::host::io::{communicate as core_communicate, Outputs};
use pyrt_core::plan::Plan;
use pyrt_core::report::{SetupError, Stage};
use pyrt_core::runtime;
use pyrt_core::spawn::{release as core_release, Child, Pending};

use crate::child::child_image;
use crate::errors::{cgroup_error, os_error, spawn_error};
use crate::timeouts::deadline_of;

/// Fault injection for the crash-recovery tests: with PYRT_FAULT naming this point, the process
/// dies here by SIGKILL, as a crash would leave it.
pub(crate) fn fault(point: &str) {
    if std::env::var("PYRT_FAULT").is_ok_and(|v| v == point) {
        // SAFETY: raise has no memory arguments.
        unsafe { libc::raise(libc::SIGKILL) };
    }
}

/// The plan pyrt would carry out for this spec, as JSON: what the child will do, in order.
#[pyfunction]
pub(crate) fn plan(py: Python<'_>, spec_json: &str) -> PyResult<String> {
    let p = Plan::from_json(spec_json).map_err(|e| {
        spawn_error(
            py,
            &SetupError::new(Stage::Spec, libc::EINVAL, e.to_string()),
        )
    })?;
    serde_json::to_string_pretty(&p).map_err(|e| PyValueError::new_err(e.to_string()))
}

/// Starts a container from an OCI runtime spec (JSON) with the given stdio descriptors, which
/// stay the caller's. Returns once the command runs; with `hold`, once the process exists in
/// its namespaces but before it has its plan (call `release()` to go on). `seccomp_json`, an
/// OCI `linux.seccomp` object given beside a spec without one, is compiled once per text (the
/// same text at every start of a profile costs a lookup, not a parse).
#[pyfunction]
#[pyo3(signature = (spec_json, stdin, stdout, stderr, hold=false, seccomp_json=None))]
pub(crate) fn spawn(
    py: Python<'_>,
    spec_json: &str,
    stdin: i32,
    stdout: i32,
    stderr: i32,
    hold: bool,
    seccomp_json: Option<&str>,
) -> PyResult<Process> {
    let plan = plan_of(py, spec_json, seccomp_json)?;
    let image = child_image().map_err(|e| spawn_error(py, &e))?;
    let created = py
        .detach(|| {
            runtime::create(image, plan, [stdin, stdout, stderr], hold, None, || {
                fault("cgroup-created")
            })
        })
        .map_err(|e| spawn_error(py, &e))?;
    Ok(Process::new(created.child, created.cgroup, created.pending))
}

/// The plan of a spec (JSON), with the filter of `seccomp_json` given beside it (compiled
/// once per text); the SpawnError of stage "spec" when either is wrong.
pub(crate) fn plan_of(
    py: Python<'_>,
    spec_json: &str,
    seccomp_json: Option<&str>,
) -> PyResult<Plan> {
    let spec_error = |e: String| spawn_error(py, &SetupError::new(Stage::Spec, libc::EINVAL, e));
    let mut plan = Plan::from_json(spec_json).map_err(|e| spec_error(e.to_string()))?;
    if let Some(j) = seccomp_json {
        if plan.seccomp.is_some() {
            return Err(spec_error(
                "linux.seccomp: given both in the spec and beside it".into(),
            ));
        }
        plan.seccomp = Some(seccomp_program(py, j)?);
    }
    Ok(plan)
}

/// What `communicate` returns: (stdout, stderr, timed_out, over_limit).
type Communicated<'py> = (
    Bound<'py, PyBytes>,
    Bound<'py, PyBytes>,
    bool,
    Option<&'static str>,
);

/// Feeds `input` to `stdin` and reads `stdout` and `stderr` (descriptors, -1 for none) to EOF,
/// until `timeout` seconds pass, or until one of them has more than `limit` bytes. Returns
/// (stdout, stderr, timed_out, over_limit): over_limit names the stream ("stdout" or
/// "stderr") that had more, of which `limit` bytes are kept.
#[pyfunction]
#[pyo3(signature = (stdin, input, stdout, stderr, timeout=None, limit=None))]
pub(crate) fn communicate<'py>(
    py: Python<'py>,
    stdin: i32,
    input: Option<&[u8]>,
    stdout: i32,
    stderr: i32,
    timeout: Option<f64>,
    limit: Option<usize>,
) -> PyResult<Communicated<'py>> {
    let deadline = deadline_of(timeout)?;
    let input = input.map(|b| b.to_vec()).unwrap_or_default();
    let mut out = Outputs::default();
    py.detach(|| core_communicate(stdin, &input, stdout, stderr, deadline, limit, &mut out))
        .map_err(|e| PyOSError::new_err((e.raw_os_error().unwrap_or(0), e.to_string())))?;
    Ok((
        PyBytes::new(py, &out.stdout),
        PyBytes::new(py, &out.stderr),
        out.timed_out,
        out.over_limit.map(|k| ["stdout", "stderr"][k]),
    ))
}

/// A container's first process, as seen from the host.
#[pyclass(module = "pyrt._core")]
pub(crate) struct Process {
    pub(crate) child: Child,
    /// The container's cgroup, owned (destroyed) by its first process's handle.
    pub(crate) cgroup: Mutex<Option<Cgroup>>,
    /// Set for a process spawned with `hold=True` until `release()`.
    pending: Mutex<Option<Pending>>,
}

/// The compiled filter of an OCI `linux.seccomp` profile's JSON (cached by its text in the
/// core), or the SpawnError of stage "spec" naming the field.
pub(crate) fn seccomp_program(py: Python<'_>, json: &str) -> PyResult<pyrt_core::seccomp::Program> {
    pyrt_core::seccomp::from_json(json).map_err(|e| {
        let e = format!("linux.seccomp: {e}");
        spawn_error(py, &SetupError::new(Stage::Spec, libc::EINVAL, e))
    })
}

/// Every method takes `&self`: a container is waited for in one thread while another signals
/// it or asks its status (a healthcheck, a pool's refill), and PyO3 refuses a second borrow
/// of a `&mut self` while the first waits with the GIL released.
pub(crate) fn locked<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Runs the quick `f` (a take, a copy) on what `m` guards. A free lock is taken with the GIL
/// held. A held one is waited for with the GIL released: its holder may have released the GIL
/// for a long operation and need it back to finish.
pub(crate) fn quick<T: Send, R: Send>(
    py: Python<'_>,
    m: &Mutex<T>,
    f: impl FnOnce(&mut T) -> R + Send,
) -> R {
    match m.try_lock() {
        Ok(mut g) => f(&mut g),
        Err(std::sync::TryLockError::Poisoned(e)) => f(&mut e.into_inner()),
        Err(std::sync::TryLockError::WouldBlock) => py.detach(|| f(&mut locked(m))),
    }
}

impl Process {
    /// A started process: with the cgroup it owns (a container's first process) and, when
    /// spawned with `hold=True`, its pending setup.
    pub(crate) fn new(child: Child, cgroup: Option<Cgroup>, pending: Option<Pending>) -> Self {
        Process {
            child,
            cgroup: Mutex::new(cgroup),
            pending: Mutex::new(pending),
        }
    }

    /// Runs `f` on the cgroup with the GIL released, and takes the lock only then. A lock
    /// waited for while holding the GIL deadlocks against a holder that released the GIL for
    /// a long operation (a freeze polls until every task stops) and needs it back to return:
    /// a healthcheck's exec asking for the cgroup's paths during `commit()` did exactly that.
    fn with_cgroup<R: Send>(
        &self,
        py: Python<'_>,
        f: impl FnOnce(&mut Option<Cgroup>) -> R + Send,
    ) -> R {
        py.detach(|| f(&mut locked(&self.cgroup)))
    }
}

#[pymethods]
impl Process {
    /// Lets a process spawned with `hold=True` go on: returns once its command runs, or raises
    /// its setup error. Does nothing for a process not held.
    fn release(&self, py: Python<'_>) -> PyResult<()> {
        let Some(pending) = quick(py, &self.pending, Option::take) else {
            return Ok(());
        };
        let child = &self.child;
        py.detach(|| core_release(child, pending))
            .map_err(|e| spawn_error(py, &e))
    }

    #[getter]
    fn pid(&self) -> i32 {
        self.child.pid
    }

    /// A new descriptor of its pidfd (readable once it has exited), which the caller closes;
    /// ProcessLookupError once it has been reaped (its own is closed then).
    fn dup_pidfd(&self) -> PyResult<i32> {
        use std::os::fd::IntoRawFd;
        let fd = self.child.pidfd().and_then(|fd| fd.try_clone());
        fd.map(IntoRawFd::into_raw_fd).map_err(|e| os_error(&e))
    }

    #[getter]
    fn returncode(&self) -> Option<i32> {
        self.child.returncode()
    }

    /// Waits at most `timeout` seconds; the return code, or None if it is still running.
    #[pyo3(signature = (timeout=None))]
    fn wait(&self, py: Python<'_>, timeout: Option<f64>) -> PyResult<Option<i32>> {
        // Waited for in slices, with Python's signal handlers run in between: a wait without
        // a timeout must not make the process deaf to Ctrl-C or to a handler that forwards
        // SIGTERM to the container (`pyrt run`).
        const SLICE: Duration = Duration::from_millis(100);
        let deadline = deadline_of(timeout)?;
        let child = &self.child;
        if timeout == Some(0.0) {
            // A look, not a wait (a reset's "is it still running?").
            return child.wait(Some(Duration::ZERO)).map_err(|e| os_error(&e));
        }
        loop {
            let slice = deadline.map_or(SLICE, |d| {
                d.saturating_duration_since(Instant::now()).min(SLICE)
            });
            let r = py
                .detach(|| child.wait(Some(slice)))
                .map_err(|e| PyOSError::new_err((e.raw_os_error().unwrap_or(0), e.to_string())))?;
            if r.is_some() || deadline.is_some_and(|d| Instant::now() >= d) {
                return Ok(r);
            }
            py.check_signals()?;
        }
    }

    /// (memory_bytes, pids, cpu_ns) of the container's cgroup, or None when it has none.
    fn stats(&self, py: Python<'_>) -> PyResult<Option<(u64, u64, u64)>> {
        let r = self.with_cgroup(py, |g| g.as_ref().map(|c| c.stats()));
        match r {
            None => Ok(None),
            Some(r) => r
                .map(|s| Some((s.memory_bytes, s.pids, s.cpu_ns)))
                .map_err(|e| PyOSError::new_err((e.errno(), e.to_string()))),
        }
    }

    /// How many of the container's processes the OOM killer killed (0 without a cgroup).
    fn oom_kills(&self, py: Python<'_>) -> u64 {
        self.with_cgroup(py, |g| g.as_ref().map_or(0, |c| c.oom_kills()))
    }

    /// The container's cgroup directories (one per v1 hierarchy, or the v2 one).
    fn cgroup_paths(&self, py: Python<'_>) -> Vec<String> {
        quick(py, &self.cgroup, |g| {
            g.as_ref().map_or_else(Vec::new, |c| {
                c.paths().iter().map(|p| p.display().to_string()).collect()
            })
        })
    }

    /// Kills everything in the container's cgroup and removes it; idempotent.
    fn destroy_cgroup(&self, py: Python<'_>) -> PyResult<()> {
        match quick(py, &self.cgroup, Option::take) {
            None => Ok(()),
            Some(c) => py
                .detach(|| c.destroy())
                .map_err(|e| PyOSError::new_err((e.errno(), e.to_string()))),
        }
    }

    /// Freezes the container's processes (its cgroup's freezer); false without a cgroup.
    fn freeze(&self, py: Python<'_>) -> PyResult<bool> {
        self.with_cgroup(py, |g| g.as_ref().map(|c| c.freeze()))
            .unwrap_or(Ok(false))
            .map_err(cgroup_error)
    }

    /// Lets them run again.
    fn thaw(&self, py: Python<'_>) -> PyResult<()> {
        self.with_cgroup(py, |g| g.as_ref().map_or(Ok(()), |c| c.thaw()))
            .map_err(cgroup_error)
    }

    /// Whether the container's cgroup is frozen.
    fn frozen(&self, py: Python<'_>) -> bool {
        self.with_cgroup(py, |g| g.as_ref().is_some_and(|c| c.frozen()))
    }

    /// New limits, from an OCI `linux.resources` object (JSON), checked as at create; returns
    /// the cgroup's directories (a v1 hierarchy may have been added).
    fn update(&self, py: Python<'_>, resources_json: &str) -> PyResult<Vec<String>> {
        let r = pyrt_core::plan::resources_from_json(resources_json)
            .map_err(|e| PyValueError::new_err(e.to_string()))?;
        let layout = cgroups::layout().map_err(cgroup_error)?;
        let updated = self.with_cgroup(py, |g| {
            g.as_mut().map(|c| {
                c.update(layout, &r)?;
                Ok(c.paths().iter().map(|p| p.display().to_string()).collect())
            })
        });
        match updated {
            None => Err(PyOSError::new_err((
                libc::ENOENT,
                "the container has no cgroup (started by run())",
            ))),
            Some(r) => r.map_err(cgroup_error),
        }
    }

    /// Sends `sig` through the pidfd; a process that already ended is not an error.
    fn kill(&self, sig: i32) -> PyResult<()> {
        self.child
            .kill(sig)
            .map_err(|e| PyOSError::new_err((e.raw_os_error().unwrap_or(0), e.to_string())))
    }
}
