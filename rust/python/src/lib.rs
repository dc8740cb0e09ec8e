//! pyrt._core: the only file that knows PyO3. Functions take the OCI spec as JSON and raw
//! descriptors; every blocking call releases the GIL; every failure becomes a pyrt exception
//! (`pyrt.errors.SpawnError` with `.stage` and `.errno`), never a panic across the FFI.
//!
//! What cannot block keeps the GIL (a lock nobody holds, a poll that does not wait, the state
//! file's write). Releasing it is not free for a background thread, a pool's: while another
//! thread runs Python, getting it back can take up to the switch interval (5 ms), so every
//! needless release on a reset's path cost the pool that much in a test suite.

use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use pyo3::exceptions::{PyOSError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict};

use pyrt_core::cgroups::{self, Cgroup};
use pyrt_core::host::io::{communicate as core_communicate, Outputs};
use pyrt_core::plan::{ExecPlan, Plan};
use pyrt_core::report::{SetupError, Stage};
use pyrt_core::runtime;
use pyrt_core::spawn::{release as core_release, Child, ChildImage, Pending};

static CHILD_BIN: &[u8] = include_bytes!(env!("PYRT_CHILD_BIN"));

fn child_image() -> Result<&'static ChildImage, SetupError> {
    static IMAGE: OnceLock<Result<ChildImage, String>> = OnceLock::new();
    IMAGE
        .get_or_init(|| ChildImage::from_bytes(CHILD_BIN).map_err(|e| e.to_string()))
        .as_ref()
        .map_err(|e| {
            SetupError::new(
                Stage::Spawn,
                libc::EIO,
                format!("preparing the pyrt-child memfd: {e}"),
            )
        })
}

fn spawn_error(py: Python<'_>, e: &SetupError) -> PyErr {
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

/// A timeout in seconds as a duration: NaN and negative numbers are refused, and one too large
/// for a `Duration` (or infinity) means no limit, so no conversion can panic.
fn timeout_of(t: Option<f64>) -> PyResult<Option<Duration>> {
    match t {
        None => Ok(None),
        Some(s) if s.is_nan() || s < 0.0 => Err(PyValueError::new_err(format!(
            "timeout must be a non-negative number, not {s}"
        ))),
        Some(s) => Ok(Duration::try_from_secs_f64(s).ok()),
    }
}

/// The instant `timeout` seconds from now; None (no limit) when that lies beyond what an
/// `Instant` can hold.
fn deadline_of(t: Option<f64>) -> PyResult<Option<Instant>> {
    Ok(timeout_of(t)?.and_then(|d| Instant::now().checked_add(d)))
}

/// Fault injection for the crash-recovery tests: with PYRT_FAULT naming this point, the process
/// dies here by SIGKILL, as a crash would leave it.
fn fault(point: &str) {
    if std::env::var("PYRT_FAULT").is_ok_and(|v| v == point) {
        // SAFETY: raise has no memory arguments.
        unsafe { libc::raise(libc::SIGKILL) };
    }
}

/// The plan pyrt would carry out for this spec, as JSON: what the child will do, in order.
#[pyfunction]
fn plan(py: Python<'_>, spec_json: &str) -> PyResult<String> {
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
fn spawn(
    py: Python<'_>,
    spec_json: &str,
    stdin: i32,
    stdout: i32,
    stderr: i32,
    hold: bool,
    seccomp_json: Option<&str>,
) -> PyResult<Process> {
    let spec_error = |e: String| spawn_error(py, &SetupError::new(Stage::Spec, libc::EINVAL, e));
    let mut plan = Plan::from_json(spec_json).map_err(|e| spec_error(e.to_string()))?;
    if let Some(j) = seccomp_json {
        if plan.seccomp.is_some() {
            return Err(spec_error(
                "linux.seccomp: given both in the spec and beside it".into(),
            ));
        }
        let program = pyrt_core::seccomp::from_json(j)
            .map_err(|e| spec_error(format!("linux.seccomp: {e}")))?;
        plan.seccomp = Some(program);
    }
    let image = child_image().map_err(|e| spawn_error(py, &e))?;
    let created = py
        .detach(|| {
            runtime::create(image, plan, [stdin, stdout, stderr], hold, None, || {
                fault("cgroup-created")
            })
        })
        .map_err(|e| spawn_error(py, &e))?;
    Ok(Process {
        child: created.child,
        cgroup: Mutex::new(created.cgroup),
        pending: Mutex::new(created.pending),
    })
}

/// Starts a process inside the running container whose first process is `target` (a host pid),
/// from the JSON of an OCI `process` object; it joins the container's namespaces and the cgroup
/// whose directories are `cgroup_paths` (may be empty).
#[pyfunction]
#[pyo3(signature = (target, process_json, stdin, stdout, stderr, cgroup_paths=Vec::new(), seccomp_json=None, server=None))]
#[allow(clippy::too_many_arguments)]
fn exec(
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
                return Ok(Process {
                    child,
                    cgroup: Mutex::new(None),
                    pending: Mutex::new(None),
                })
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
    Ok(Process {
        child,
        cgroup: Mutex::new(None),
        pending: Mutex::new(None),
    })
}

/// A container's exec server (`pyrt_core::spawn::ExecServer`): execs passed to `exec` with
/// `server=` are forked by it, already inside the container's namespaces.
#[pyclass(module = "pyrt._core")]
struct ExecServer {
    inner: Mutex<Option<pyrt_core::spawn::ExecServer>>,
}

#[pymethods]
impl ExecServer {
    /// The server process's pid, while it runs.
    #[getter]
    fn pid(&self, py: Python<'_>) -> Option<i32> {
        quick(py, &self.inner, |s| s.as_ref().map(|s| s.pid()))
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
#[pyo3(signature = (target, cgroup_paths=Vec::new()))]
fn exec_server(py: Python<'_>, target: i32, cgroup_paths: Vec<String>) -> PyResult<ExecServer> {
    let image = child_image().map_err(|e| spawn_error(py, &e))?;
    let server = py
        .detach(|| {
            let paths: Vec<std::path::PathBuf> = cgroup_paths.iter().map(Into::into).collect();
            let cgroup = runtime::cgroup_of(&paths);
            pyrt_core::spawn::ExecServer::start(image, target, cgroup.as_ref())
        })
        .map_err(|e| spawn_error(py, &e))?;
    Ok(ExecServer {
        inner: Mutex::new(Some(server)),
    })
}

/// Feeds `input` to `stdin` and reads `stdout` and `stderr` (descriptors, -1 for none) to EOF or
/// until `timeout` seconds pass. Returns (stdout, stderr, timed_out).
#[pyfunction]
#[pyo3(signature = (stdin, input, stdout, stderr, timeout=None))]
fn communicate<'py>(
    py: Python<'py>,
    stdin: i32,
    input: Option<&[u8]>,
    stdout: i32,
    stderr: i32,
    timeout: Option<f64>,
) -> PyResult<(Bound<'py, PyBytes>, Bound<'py, PyBytes>, bool)> {
    let deadline = deadline_of(timeout)?;
    let input = input.map(|b| b.to_vec()).unwrap_or_default();
    let mut out = Outputs::default();
    py.detach(|| core_communicate(stdin, &input, stdout, stderr, deadline, &mut out))
        .map_err(|e| PyOSError::new_err((e.raw_os_error().unwrap_or(0), e.to_string())))?;
    Ok((
        PyBytes::new(py, &out.stdout),
        PyBytes::new(py, &out.stderr),
        out.timed_out,
    ))
}

/// Opens `path` beneath the directory `dirfd` as if that directory were `/` (openat2 with
/// RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS): symlinks and `..` cannot leave it. Returns a new
/// close-on-exec descriptor.
#[pyfunction]
#[pyo3(signature = (dirfd, path, flags, mode=0))]
fn open_in_root(dirfd: i32, path: &str, flags: i32, mode: u32) -> PyResult<i32> {
    use std::os::fd::IntoRawFd;
    pyrt_core::syscall::openat2(
        dirfd,
        std::path::Path::new(path),
        flags,
        mode,
        pyrt_core::syscall::RESOLVE_IN_ROOT | pyrt_core::syscall::RESOLVE_NO_MAGICLINKS,
    )
    .map(|fd| fd.into_raw_fd())
    .map_err(|e| {
        let errno = e.raw_os_error().unwrap_or(0);
        PyOSError::new_err((errno, pyrt_core::report::strerror(errno), path.to_string()))
    })
}

/// Unpacks the blob read from descriptor `fd` (gzip, zstd or plain tar; the descriptor is
/// duplicated, and read from its current offset to its end) into the directory `dest`, by
/// `pyrt_layer::unpack`'s rules. Returns (entries, bytes, skipped device nodes, whiteouts,
/// diff_id, blob digest). `progress` is called with the count of blob bytes read, a few times
/// a second at most. Errors are `pyrt.ImageError` or `pyrt.UnsafeImageError`, naming `what`.
#[pyfunction]
#[pyo3(signature = (fd, dest, what, whiteouts, lowers, owner, devices, strip_setid,
                    max_entries, max_bytes, as_root, privileged, progress=None))]
#[allow(clippy::too_many_arguments)]
fn unpack_layer(
    py: Python<'_>,
    fd: i32,
    dest: std::path::PathBuf,
    what: &str,
    whiteouts: &str,
    lowers: Vec<std::path::PathBuf>,
    owner: Option<(u32, u32)>,
    devices: bool,
    strip_setid: bool,
    max_entries: u64,
    max_bytes: u64,
    as_root: bool,
    privileged: bool,
    progress: Option<Py<PyAny>>,
) -> PyResult<(u64, u64, Vec<String>, u64, String, String)> {
    use pyrt_layer::Whiteouts;
    let whiteouts = match whiteouts {
        "keep" => Whiteouts::Keep,
        "overlay" => Whiteouts::Overlay,
        "apply" => Whiteouts::Apply,
        other => {
            return Err(PyValueError::new_err(format!(
                "whiteouts: unknown mode {other:?}"
            )))
        }
    };
    // SAFETY: dup of a number the caller gave; an invalid one fails with EBADF.
    let dup = unsafe { libc::dup(fd) };
    if dup < 0 {
        let e = std::io::Error::last_os_error();
        return Err(PyOSError::new_err((
            e.raw_os_error().unwrap_or(0),
            e.to_string(),
        )));
    }
    // SAFETY: a fresh descriptor, owned by the File from here on.
    let file = unsafe { <std::fs::File as std::os::fd::FromRawFd>::from_raw_fd(dup) };
    let opts = pyrt_layer::Options {
        whiteouts,
        lowers,
        owner,
        devices,
        strip_setid,
        max_entries,
        max_bytes,
        as_root,
        privileged,
    };
    // Progress is reported in steps of 4 MiB: each report takes the GIL.
    let report = progress.map(|cb| {
        let mut pending = 0u64;
        Box::new(move |n: u64| {
            pending += n;
            if pending >= 4 << 20 {
                let done = std::mem::take(&mut pending);
                Python::attach(|py| {
                    let _ = cb.call1(py, (done,));
                });
            }
        }) as Box<dyn FnMut(u64) + Send>
    });
    let r = py.detach(|| pyrt_layer::unpack(file, &dest, &opts, report));
    match r {
        Ok(s) => Ok((
            s.entries,
            s.bytes,
            s.skipped_devices,
            s.whiteouts,
            s.diff_id,
            s.blob_digest,
        )),
        Err(e) => {
            let kind = if e.is_unsafe() {
                "UnsafeImageError"
            } else {
                "ImageError"
            };
            let cls = py.import("pyrt.errors")?.getattr(kind)?;
            Err(PyErr::from_value(cls.call1((format!("{what}: {e}"),))?))
        }
    }
}

/// A pipe whose read end pyrt's log thread copies into `path` (rotated at `cap` bytes, one old
/// file kept), until every writer has closed it. Returns the write end, for the container's
/// stdout and stderr, and a descriptor that reads EOF once all of it is in the file.
#[pyfunction]
fn log_pipe(path: &str, cap: u64) -> PyResult<(i32, i32)> {
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
/// container's log pipe.
#[pyfunction]
fn log_from(fd: i32, path: &str, cap: u64) -> PyResult<()> {
    use std::os::fd::FromRawFd;
    // SAFETY: the caller hands the descriptor over.
    let owned = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) };
    pyrt_core::host::logs::follow_into(owned, path.into(), cap, None)
        .map_err(|e| PyOSError::new_err((e.raw_os_error().unwrap_or(0), e.to_string())))
}

/// A new network namespace with `lo` up, as a descriptor the caller owns (see core/host/netns.rs).
#[pyfunction]
fn new_netns() -> PyResult<i32> {
    use std::os::fd::IntoRawFd;
    pyrt_core::host::netns::create()
        .map(|fd| fd.into_raw_fd())
        .map_err(|e| PyOSError::new_err((e.raw_os_error().unwrap_or(0), e.to_string())))
}

/// A new user namespace with these (inside, outside, count) maps and a network namespace of
/// its own, as two descriptors the caller owns: a rootless `pyrt.Network`'s (see
/// core/host/userns.rs).
#[pyfunction]
fn new_userns_netns(
    py: Python<'_>,
    uid_map: Vec<(u32, u32, u32)>,
    gid_map: Vec<(u32, u32, u32)>,
) -> PyResult<(i32, i32)> {
    use std::os::fd::IntoRawFd;
    if uid_map.is_empty() || gid_map.is_empty() || uid_map.len() > 340 || gid_map.len() > 340 {
        return Err(PyValueError::new_err(
            "uid_map and gid_map need 1 to 340 ranges each",
        ));
    }
    let maps = pyrt_core::plan::IdMaps {
        uid: uid_map,
        gid: gid_map,
    };
    py.detach(|| pyrt_core::host::userns::with_netns(&maps))
        .map(|(u, n)| (u.into_raw_fd(), n.into_raw_fd()))
        .map_err(|e| PyOSError::new_err((e.raw_os_error().unwrap_or(0), e.to_string())))
}

/// A published TCP port (see core/host/portfwd.rs): stops accepting on `close()`.
#[pyclass(module = "pyrt._core")]
struct PortForward {
    inner: Option<Forwarding>,
    port: u16,
}

/// Where a published port's loop runs: a thread of ours, or (rootless) a process of its own.
enum Forwarding {
    Thread(pyrt_core::host::portfwd::Forwarder),
    Process(pyrt_core::spawn::Child),
}

#[pymethods]
impl PortForward {
    /// The host port it listens on.
    #[getter]
    fn port(&self) -> u16 {
        self.port
    }

    /// Stops accepting connections; idempotent.
    fn close(&mut self, py: Python<'_>) {
        match self.inner.take() {
            Some(Forwarding::Thread(mut f)) => py.detach(move || f.close()),
            Some(Forwarding::Process(c)) => py.detach(move || {
                let _ = c.kill(libc::SIGKILL);
                let _ = c.wait(None);
            }),
            None => {}
        }
    }
}

/// Listens on `addr`:`port` (0: a free port) and forwards each connection to 127.0.0.1:`target`
/// inside the network namespace `netns_fd` (which stays the caller's).
#[pyfunction]
fn forward_tcp(netns_fd: i32, addr: &str, port: u16, target: u16) -> PyResult<PortForward> {
    use std::os::fd::BorrowedFd;
    let ip: std::net::Ipv4Addr = addr
        .parse()
        .map_err(|_| PyValueError::new_err(format!("not an IPv4 address: {addr}")))?;
    // SAFETY: the caller keeps the descriptor open for the duration of this call.
    let ns = unsafe { BorrowedFd::borrow_raw(netns_fd) };
    let f = pyrt_core::host::portfwd::Forwarder::tcp(ns, ip, port, target)
        .map_err(|e| PyOSError::new_err((e.raw_os_error().unwrap_or(0), e.to_string())))?;
    Ok(PortForward {
        port: f.port(),
        inner: Some(Forwarding::Thread(f)),
    })
}

/// `forward_tcp` for a namespace of another user namespace (a rootless container's): the loop
/// runs in a process that enters `userns_fd`, then `netns_fd` (both stay the caller's).
#[pyfunction]
fn forward_tcp_in(
    py: Python<'_>,
    userns_fd: i32,
    netns_fd: i32,
    addr: &str,
    port: u16,
    target: u16,
) -> PyResult<PortForward> {
    let ip: std::net::Ipv4Addr = addr
        .parse()
        .map_err(|_| PyValueError::new_err(format!("not an IPv4 address: {addr}")))?;
    let image = child_image().map_err(|e| spawn_error(py, &e))?;
    let (child, bound) = py
        .detach(|| runtime::forwarder(image, userns_fd, netns_fd, ip, port, target))
        .map_err(|e| match e.errno {
            libc::EADDRINUSE => PyOSError::new_err((e.errno, e.to_string())),
            _ => spawn_error(py, &e),
        })?;
    Ok(PortForward {
        port: bound,
        inner: Some(Forwarding::Process(child)),
    })
}

/// A TCP connection to 127.0.0.1:`port` inside the network namespace at `netns` (a path),
/// made within `t` by a short-lived thread that joins that namespace (a socket belongs to the
/// namespace it was created in, wherever it is used afterwards).
fn connect_in(
    py: Python<'_>,
    netns: String,
    port: u16,
    t: Duration,
) -> PyResult<std::io::Result<std::net::TcpStream>> {
    let r = py.detach(|| {
        std::thread::spawn(move || -> std::io::Result<std::net::TcpStream> {
            use std::os::fd::AsRawFd;
            let ns = std::fs::File::open(&netns)?;
            // SAFETY: setns on a descriptor we own; this thread ends right after.
            if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(std::io::Error::last_os_error());
            }
            let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
            std::net::TcpStream::connect_timeout(&addr, t.max(Duration::from_millis(1)))
        })
        .join()
    });
    r.map_err(|_| PyOSError::new_err((0, "the connecting thread failed")))
}

fn os_error(e: &std::io::Error) -> PyErr {
    PyOSError::new_err((e.raw_os_error().unwrap_or(0), e.to_string()))
}

/// Whether a TCP connection to 127.0.0.1:`port` inside the network namespace of process `pid`
/// is accepted within `timeout` seconds.
#[pyfunction]
fn tcp_probe(py: Python<'_>, pid: i32, port: u16, timeout: f64) -> PyResult<bool> {
    let t = timeout_of(Some(timeout))?.unwrap_or(Duration::from_secs(3600));
    match connect_in(py, format!("/proc/{pid}/ns/net"), port, t)? {
        Ok(_) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(os_error(&e)),
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => Err(os_error(&e)),
        Err(_) => Ok(false),
    }
}

/// A connected TCP socket to 127.0.0.1:`port` inside the network namespace at path `netns`,
/// as a descriptor the caller owns; OSError when refused or not within `timeout` seconds.
#[pyfunction]
fn tcp_connect(py: Python<'_>, netns: String, port: u16, timeout: f64) -> PyResult<i32> {
    use std::os::fd::IntoRawFd;
    let t = timeout_of(Some(timeout))?.unwrap_or(Duration::from_secs(3600));
    match connect_in(py, netns, port, t)? {
        Ok(s) => Ok(s.into_raw_fd()),
        Err(e) => Err(os_error(&e)),
    }
}

/// Freezes (or, with `freeze` false, thaws) the container cgroup at `paths` (its directories,
/// as `Process.cgroup_paths()` gives them; another process's container); false when it has no
/// freezer.
#[pyfunction]
fn cgroup_freeze(py: Python<'_>, paths: Vec<String>, freeze: bool) -> PyResult<bool> {
    let layout = cgroups::layout().map_err(cgroup_error)?;
    let dirs: Vec<std::path::PathBuf> = paths.iter().map(Into::into).collect();
    let Some(c) = Cgroup::from_paths(layout, &dirs) else {
        return Ok(false);
    };
    if freeze {
        py.detach(|| c.freeze()).map_err(cgroup_error)
    } else {
        c.thaw().map(|_| true).map_err(cgroup_error)
    }
}

fn cgroup_error(e: cgroups::CgroupError) -> PyErr {
    PyOSError::new_err((e.errno(), e.to_string()))
}

/// Kills what is left in a container's cgroup (frozen or not) and removes its directories, as
/// its creator recorded them (a stale container's, or another process's for `pyrt rm`).
#[pyfunction]
fn remove_cgroup(py: Python<'_>, paths: Vec<String>) -> PyResult<()> {
    let dirs: Vec<std::path::PathBuf> = paths.iter().map(Into::into).collect();
    py.detach(|| runtime::remove_cgroup(&dirs))
        .map_err(cgroup_error)
}

/// The start time of process `pid` (clock ticks after boot), None when there is none: with
/// the pid, it names one process and never a later one that reused the number.
#[pyfunction]
fn pid_start_time(pid: i64) -> Option<u64> {
    i32::try_from(pid).ok().and_then(runtime::start_time)
}

/// Replaces the file `dest` with `data` whole, through a temporary file beside it
/// (`pyrt_core::host::statefile`). The GIL stays held: a few small writes and renames. `dest`
/// is taken as a path (a str or a path object, converted as `os.fsencode` does), so a state
/// root whose name is not UTF-8 works as it did when Python wrote the file.
#[pyfunction]
fn write_replacing(dest: std::path::PathBuf, data: &str) -> PyResult<()> {
    pyrt_core::host::statefile::write_replacing(&dest, data.as_bytes()).map_err(|e| {
        PyOSError::new_err((
            e.raw_os_error().unwrap_or(0),
            format!("{}: {e}", dest.display()),
        ))
    })
}

/// Sends `sig` to a container's first process recorded as (`pid`, `start`) by whoever
/// created it, through a pidfd (ProcessLookupError once it is gone).
#[pyfunction]
fn signal_recorded(pid: i64, start: u64, sig: i32) -> PyResult<()> {
    let pid =
        i32::try_from(pid).map_err(|_| PyOSError::new_err((libc::ESRCH, "no such process")))?;
    runtime::signal_recorded(pid, start, sig).map_err(|e| os_error(&e))
}

/// A container's first process, as seen from the host.
#[pyclass(module = "pyrt._core")]
struct Process {
    child: Child,
    /// The container's cgroup, owned (destroyed) by its first process's handle.
    cgroup: Mutex<Option<Cgroup>>,
    /// Set for a process spawned with `hold=True` until `release()`.
    pending: Mutex<Option<Pending>>,
}

/// Every method takes `&self`: a container is waited for in one thread while another signals
/// it or asks its status (a healthcheck, a pool's refill), and PyO3 refuses a second borrow
/// of a `&mut self` while the first waits with the GIL released.
fn locked<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Runs the quick `f` (a take, a copy) on what `m` guards. A free lock is taken with the GIL
/// held. A held one is waited for with the GIL released: its holder may have released the GIL
/// for a long operation and need it back to finish.
fn quick<T: Send, R: Send>(py: Python<'_>, m: &Mutex<T>, f: impl FnOnce(&mut T) -> R + Send) -> R {
    match m.try_lock() {
        Ok(mut g) => f(&mut g),
        Err(std::sync::TryLockError::Poisoned(e)) => f(&mut e.into_inner()),
        Err(std::sync::TryLockError::WouldBlock) => py.detach(|| f(&mut locked(m))),
    }
}

impl Process {
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

    #[getter]
    fn pidfd(&self) -> i32 {
        use std::os::fd::AsRawFd;
        self.child.pidfd.as_raw_fd()
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

#[pymodule]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    // A long-lived process that starts many containers: network namespaces made ahead pay off.
    pyrt_core::host::netns::enable_pool();
    m.add_function(wrap_pyfunction!(plan, m)?)?;
    m.add_function(wrap_pyfunction!(spawn, m)?)?;
    m.add_function(wrap_pyfunction!(exec, m)?)?;
    m.add_function(wrap_pyfunction!(exec_server, m)?)?;
    m.add_class::<ExecServer>()?;
    m.add_function(wrap_pyfunction!(communicate, m)?)?;
    m.add_function(wrap_pyfunction!(open_in_root, m)?)?;
    m.add_function(wrap_pyfunction!(unpack_layer, m)?)?;
    m.add_function(wrap_pyfunction!(log_pipe, m)?)?;
    m.add_function(wrap_pyfunction!(log_from, m)?)?;
    m.add_function(wrap_pyfunction!(tcp_probe, m)?)?;
    m.add_function(wrap_pyfunction!(tcp_connect, m)?)?;
    m.add_function(wrap_pyfunction!(cgroup_freeze, m)?)?;
    m.add_function(wrap_pyfunction!(remove_cgroup, m)?)?;
    m.add_function(wrap_pyfunction!(pid_start_time, m)?)?;
    m.add_function(wrap_pyfunction!(signal_recorded, m)?)?;
    m.add_function(wrap_pyfunction!(write_replacing, m)?)?;
    m.add_function(wrap_pyfunction!(new_netns, m)?)?;
    m.add_function(wrap_pyfunction!(new_userns_netns, m)?)?;
    m.add_function(wrap_pyfunction!(forward_tcp_in, m)?)?;
    m.add_function(wrap_pyfunction!(forward_tcp, m)?)?;
    m.add_class::<PortForward>()?;
    m.add_class::<Process>()?;
    m.add("CHILD_SIZE", CHILD_BIN.len())?;
    Ok(())
}
