//! `pyrt-runc create` / `start`: the child sets everything up, then waits at a *gate* until the
//! runtime's `start` command connects to a unix socket that `create` bound (`start.sock` in the
//! container's state directory) and handed down to it. The connection then takes the error
//! pipe's place: a failure from here on (a `startContainer` hook, seccomp, execve) reaches `start`, and EOF on a
//! successful execve tells `start` that the command runs, as the pipe told `create`.
//!
//! A socket rather than runc's FIFO: it needs no /proc inside the container to reopen, and the
//! reply channel comes with it.

use std::io::{self, Read};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;

use crate::hooks::{self, Hook};
use crate::report::{SetupError, Stage};

use crate::wire::ERROR_FD;

pub const SOCKET_NAME: &str = "start.sock";

/// Binds and listens on `dir/start.sock`, in `pyrt-runc create` (the parent), which hands the
/// listener to the child: a container in a user namespace of its own may have no right to
/// create a file in the caller's state directory, or even to reach it. The directory is
/// reached through a descriptor, so that a long state path does not matter (a socket name has
/// 108 bytes).
pub fn bind(dir: &Path) -> io::Result<OwnedFd> {
    let d = std::fs::File::open(dir)?;
    let path = format!("/proc/self/fd/{}/{SOCKET_NAME}", d.as_raw_fd());
    std::os::unix::net::UnixListener::bind(path).map(OwnedFd::from)
}

/// Tells `create` that the container is set up (closes the error pipe), then waits for `start`
/// and runs the `startContainer` hooks. Returns with fd 4 being the connection to `start`.
pub fn wait(listener: &OwnedFd, start_hooks: &[Hook], state: &str) -> Result<(), SetupError> {
    // SAFETY: closing our copy of the error pipe: the parent reads EOF, "created".
    unsafe { libc::close(ERROR_FD) };
    let conn = loop {
        // SAFETY: accept on our listening socket, no address wanted.
        let c = unsafe {
            libc::accept4(
                listener.as_raw_fd(),
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                libc::SOCK_CLOEXEC,
            )
        };
        if c >= 0 {
            // SAFETY: the kernel just gave us this descriptor.
            break unsafe { OwnedFd::from_raw_fd(c) };
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            // Nobody to report to: the create parent is gone, no start has come.
            std::process::exit(127);
        }
    };
    // accept may have reused the error pipe's number, closed above; else move it there,
    // close-on-exec as the pipe was.
    if conn.as_raw_fd() == ERROR_FD {
        std::mem::forget(conn);
    } else {
        // SAFETY: dup3 onto a free descriptor number.
        if unsafe { libc::dup3(conn.as_raw_fd(), ERROR_FD, libc::O_CLOEXEC) } < 0 {
            std::process::exit(127);
        }
        drop(conn);
    }
    // `start` sends one byte; a connection closed without it (a probe) is not a start.
    let mut go = [0u8; 1];
    // SAFETY: ERROR_FD is the connection now; borrowed for one read.
    let mut f = std::mem::ManuallyDrop::new(unsafe { std::fs::File::from_raw_fd(ERROR_FD) });
    if !matches!(f.read(&mut go), Ok(1)) {
        std::process::exit(127);
    }
    // The state as `create` gave it, now that the container is created.
    let state = state.replacen("\"status\":\"creating\"", "\"status\":\"created\"", 1);
    hooks::run_all(start_hooks, &state)
        .map_err(|e| SetupError::new(Stage::Hooks, libc::EIO, format!("startContainer {e}")))
}
