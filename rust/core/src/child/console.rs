//! A terminal as the container's console (`process.terminal`): the pty comes from the
//! container's own devpts instance, its slave is got from the master with TIOCGPTPEER (never
//! opened by path, so no symlink or bind mount in the image can substitute another file), and
//! the master is sent to the parent over the socket on fd 0 (SCM_RIGHTS), as runc's console
//! socket does. The slave becomes our controlling terminal and our stdio.

use std::io::{self, IoSlice};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;

use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};

use crate::report::{SetupError, Stage};
use crate::syscall;

const TIOCGPTPEER: libc::c_ulong = 0x5441;

fn err(what: &str) -> impl FnOnce(io::Error) -> SetupError + '_ {
    move |e| SetupError::io(Stage::Devices, format!("terminal: {what}"), &e)
}

/// After pivot_root, as a session leader: makes the pty, hands the master to the parent over
/// `sock`, and makes the slave our session's controlling terminal and fds 0, 1 and 2.
pub fn setup(sock: RawFd) -> Result<(), SetupError> {
    let master = syscall::openat2(
        libc::AT_FDCWD,
        Path::new("/dev/pts/ptmx"),
        libc::O_RDWR | libc::O_NOCTTY,
        0,
        syscall::RESOLVE_NO_SYMLINKS,
    )
    .map_err(err(
        "opening /dev/pts/ptmx (does the container mount devpts on /dev/pts?)",
    ))?;
    let unlock: libc::c_int = 0;
    // SAFETY: ioctls on our own descriptor with valid arguments.
    if unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSPTLCK, &unlock) } < 0 {
        return Err(err("unlocking the pty")(io::Error::last_os_error()));
    }
    let slave = unsafe {
        libc::ioctl(
            master.as_raw_fd(),
            TIOCGPTPEER as _,
            libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC,
        )
    };
    if slave < 0 {
        return Err(err("TIOCGPTPEER")(io::Error::last_os_error()));
    }
    // SAFETY: the kernel just gave us this descriptor.
    let slave = unsafe { OwnedFd::from_raw_fd(slave) };
    let fds = [master.as_raw_fd()];
    sendmsg::<()>(
        sock,
        &[IoSlice::new(b"pty")],
        &[ControlMessage::ScmRights(&fds)],
        MsgFlags::empty(),
        None,
    )
    .map_err(|e| err("sending the pty to the parent")(io::Error::from(e)))?;
    drop(master);
    // We lead a session of our own already (child::new_session): the slave becomes its
    // controlling terminal.
    // SAFETY: as above.
    if unsafe { libc::ioctl(slave.as_raw_fd(), libc::TIOCSCTTY, 0) } < 0 {
        return Err(err("TIOCSCTTY")(io::Error::last_os_error()));
    }
    for target in 0..=2 {
        // SAFETY: dup2 onto our stdio; replaces the socket on fd 0 too.
        if unsafe { libc::dup2(slave.as_raw_fd(), target) } < 0 {
            return Err(err("dup2")(io::Error::last_os_error()));
        }
    }
    Ok(())
}
