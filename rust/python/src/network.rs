//! Network namespaces, published ports and connections made inside a namespace.

use std::time::Duration;

use pyo3::exceptions::{PyOSError, PyValueError};
use pyo3::prelude::*;

use pyrt_core::runtime;

use crate::child::child_image;
use crate::errors::{os_error, spawn_error};
use crate::timeouts::timeout_of;

/// A new network namespace with `lo` up, as a descriptor the caller owns (see core/host/netns.rs).
#[pyfunction]
pub(crate) fn new_netns() -> PyResult<i32> {
    use std::os::fd::IntoRawFd;
    pyrt_core::host::netns::create()
        .map(|fd| fd.into_raw_fd())
        .map_err(|e| PyOSError::new_err((e.raw_os_error().unwrap_or(0), e.to_string())))
}

/// A new user namespace with these (inside, outside, count) maps and a network namespace of
/// its own, as two descriptors the caller owns: a rootless `pyrt.Network`'s (see
/// core/host/userns.rs).
#[pyfunction]
pub(crate) fn new_userns_netns(
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
pub(crate) struct PortForward {
    inner: Option<Forwarding>,
    port: u16,
}

/// Where a published port's loop runs: a thread of ours, or (rootless) a process of its own.
pub(crate) enum Forwarding {
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

/// The address a published port listens on: a ValueError naming it when it is no IPv4 one.
fn ipv4(addr: &str) -> PyResult<std::net::Ipv4Addr> {
    addr.parse()
        .map_err(|_| PyValueError::new_err(format!("not an IPv4 address: {addr}")))
}

/// Listens on `addr`:`port` (0: a free port) and forwards each connection to 127.0.0.1:`target`
/// inside the network namespace `netns_fd` (which stays the caller's).
#[pyfunction]
pub(crate) fn forward_tcp(
    netns_fd: i32,
    addr: &str,
    port: u16,
    target: u16,
) -> PyResult<PortForward> {
    use std::os::fd::BorrowedFd;
    let ip = ipv4(addr)?;
    // SAFETY: the caller keeps the descriptor open for the duration of this call.
    let ns = unsafe { BorrowedFd::borrow_raw(netns_fd) };
    let f =
        pyrt_core::host::portfwd::Forwarder::tcp(ns, ip, port, target).map_err(|e| os_error(&e))?;
    Ok(PortForward {
        port: f.port(),
        inner: Some(Forwarding::Thread(f)),
    })
}

/// `forward_tcp` for a namespace of another user namespace (a rootless container's): the loop
/// runs in a process that enters `userns_fd`, then `netns_fd` (both stay the caller's).
#[pyfunction]
pub(crate) fn forward_tcp_in(
    py: Python<'_>,
    userns_fd: i32,
    netns_fd: i32,
    addr: &str,
    port: u16,
    target: u16,
) -> PyResult<PortForward> {
    let ip = ipv4(addr)?;
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
pub(crate) fn connect_in(
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

/// Whether a TCP connection to 127.0.0.1:`port` inside the network namespace of process `pid`
/// is accepted within `timeout` seconds.
#[pyfunction]
pub(crate) fn tcp_probe(py: Python<'_>, pid: i32, port: u16, timeout: f64) -> PyResult<bool> {
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
pub(crate) fn tcp_connect(py: Python<'_>, netns: String, port: u16, timeout: f64) -> PyResult<i32> {
    use std::os::fd::IntoRawFd;
    let t = timeout_of(Some(timeout))?.unwrap_or(Duration::from_secs(3600));
    match connect_in(py, netns, port, t)? {
        Ok(s) => Ok(s.into_raw_fd()),
        Err(e) => Err(os_error(&e)),
    }
}
