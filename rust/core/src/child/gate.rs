//! `pyrt-runc create` / `start`: the child sets everything up, then waits at a *gate* until the
//! runtime's `start` command connects to a unix socket it bound before pivot_root (`start.sock`
//! in the container's state directory). The connection then takes the error pipe's place: a
//! failure from here on (a `startContainer` hook, seccomp, execve) reaches `start`, and EOF on a
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

fn err(what: &'static str) -> impl FnOnce(io::Error) -> SetupError {
    move |e| SetupError::io(Stage::Exec, what, &e)
}

/// Binds and listens on `dir/start.sock`, from inside `dir` so that a long state path does not
/// matter (a socket name has 108 bytes). Before pivot_root, while `dir` is reachable.
pub fn bind(dir: &Path) -> Result<OwnedFd, SetupError> {
    nix::unistd::chdir(dir).map_err(|e| err("entering the state directory")(io::Error::from(e)))?;
    // SAFETY: socket(2) with constant arguments; the result is checked.
    let fd = unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(err("socket for the start gate")(io::Error::last_os_error()));
    }
    // SAFETY: the kernel just gave us this descriptor.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: a zeroed sockaddr_un with a short relative name copied in.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    for (d, s) in addr.sun_path.iter_mut().zip(SOCKET_NAME.bytes()) {
        *d = s as libc::c_char;
    }
    let len = (std::mem::size_of::<libc::sa_family_t>() + SOCKET_NAME.len()) as libc::socklen_t;
    // SAFETY: bind/listen on our socket with a valid address.
    unsafe {
        if libc::bind(
            fd.as_raw_fd(),
            (&addr as *const libc::sockaddr_un).cast(),
            len,
        ) != 0
        {
            return Err(err("binding the start gate")(io::Error::last_os_error()));
        }
        if libc::listen(fd.as_raw_fd(), 4) != 0 {
            return Err(err("listening on the start gate")(
                io::Error::last_os_error(),
            ));
        }
    }
    Ok(fd)
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
