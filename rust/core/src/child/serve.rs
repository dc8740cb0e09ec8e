//! A container's exec server: a pyrt-child that has joined the container's namespaces once
//! and makes each exec by a fork, instead of a new pyrt-child from the spawner per exec that
//! executes, joins five to seven namespaces and (in a user namespace) forks again. An exec
//! through it costs a message and a fork; its setup after the fork is the ordinary exec's
//! (`child::run_exec`, which finds nothing left to join).
//!
//! It lives outside the container: not in its pid namespace (its children are born there, by
//! the pid namespace it set for them) nor its cgroup (it steps into the cgroup's v1 `tasks`
//! around each fork, as the spawner thread does, so that the child is born inside), so the
//! container's processes can neither see nor signal it. Each fork is made with CLONE_PARENT:
//! the exec is the caller's child, reaped and signalled as any exec is. It ends when the
//! container's first process does (its pidfd), when the caller drops the socket, and with the
//! caller (the parent-death signal).
//!
//! With a seccomp filter in its plan (the container's), the server installs it once it has
//! joined, and each fork inherits it: the caller then sends execs without one of their own
//! (`spawn::ExecServer::exec`), so that the filter is not attached again at every exec.
//!
//! The protocol, on a unix stream socket: the caller sends one byte with six descriptors (the
//! exec's stdin, stdout, stderr, plan pipe, error pipe and status pipe, which become its fds
//! 0-5); the server answers with the pid as four little-endian bytes and a pidfd of it, or
//! with a negative errno and no descriptor.

use std::io::{self, IoSlice, IoSliceMut};
use std::os::fd::RawFd;

use nix::sys::socket::{recvmsg, sendmsg, ControlMessage, ControlMessageOwned, MsgFlags};

use crate::plan::ServePlan;
use crate::report::{SetupError, Stage};
use crate::wire::{ERROR_FD, PLAN_FD, STATUS_FD};

/// The descriptors an exec is handed, in the order they become its fds 0-5.
pub const EXEC_FDS: usize = 6;

pub fn run(plan: &ServePlan) -> Result<std::convert::Infallible, SetupError> {
    super::join::join_container(plan.target, Some(plan.pidfd), true)?;
    super::new_session()?;
    // SAFETY: a constant name for prctl.
    unsafe { libc::prctl(libc::PR_SET_NAME, c"pyrt-exec".as_ptr(), 0, 0, 0) };
    // Joining the user namespace changed our credentials, which clears the parent-death
    // signal that clone's child set: armed again, and the lifeline checked.
    super::rearm_parent_death()?;
    super::process::server_signals();
    // Learnt once here, inherited by every fork (see each one's comment).
    let _ = super::setgroups_allowed();
    if let Some(b) = plan.bounding {
        crate::capabilities::narrow_bounding(b).map_err(|e| {
            SetupError::new(
                Stage::Capabilities,
                libc::EPERM,
                format!("narrowing the bounding set to the container's: {e}"),
            )
        })?;
    }
    if let Some(p) = &plan.seccomp {
        crate::seccomp::install(p).map_err(|e| {
            SetupError::io(
                Stage::Seccomp,
                "installing the container's seccomp filter",
                &e,
            )
        })?;
    }
    // Ready: EOF on the error pipe tells the caller so. The status pipe is not ours to use.
    // SAFETY: closing our own copies.
    unsafe {
        libc::close(ERROR_FD);
        libc::close(STATUS_FD);
    }
    loop {
        match next_request(plan) {
            Some(fds) => {
                let answer = fork_exec(plan, &fds);
                for fd in fds {
                    // SAFETY: the received descriptors are ours and handed on by now.
                    unsafe { libc::close(fd) };
                }
                if reply(plan.socket, answer).is_err() {
                    std::process::exit(0);
                }
            }
            None => std::process::exit(0),
        }
    }
}

/// Waits for a request: its descriptors, or None when the server should end (the container's
/// first process ended, the socket closed, or a malformed message). A signal's EINTR is not
/// an end.
fn next_request(plan: &ServePlan) -> Option<Vec<RawFd>> {
    loop {
        let mut pfd = [
            libc::pollfd {
                fd: plan.socket,
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: plan.pidfd,
                events: libc::POLLIN,
                revents: 0,
            },
            // The caller's lifeline: hung up when the caller is gone.
            libc::pollfd {
                fd: PLAN_FD,
                events: 0,
                revents: 0,
            },
        ];
        // SAFETY: polling descriptors we hold, from a local array.
        let n = unsafe { libc::poll(pfd.as_mut_ptr(), pfd.len() as libc::nfds_t, -1) };
        if n < 0 {
            if io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return None;
        }
        if pfd[1].revents != 0 || pfd[2].revents != 0 {
            return None;
        }
        if pfd[0].revents == 0 {
            continue;
        }
        let mut byte = [0u8; 1];
        let mut iov = [IoSliceMut::new(&mut byte)];
        let mut space = nix::cmsg_space!([RawFd; EXEC_FDS]);
        let msg = match recvmsg::<()>(
            plan.socket,
            &mut iov,
            Some(&mut space),
            MsgFlags::MSG_CMSG_CLOEXEC,
        ) {
            Err(nix::errno::Errno::EINTR) => continue,
            r => r.ok()?,
        };
        let mut fds = Vec::new();
        for c in msg.cmsgs().ok()? {
            if let ControlMessageOwned::ScmRights(r) = c {
                fds.extend(r);
            }
        }
        if msg.bytes == 0 || fds.len() != EXEC_FDS {
            for fd in fds {
                // SAFETY: closing what we were sent.
                unsafe { libc::close(fd) };
            }
            return None;
        }
        return Some(fds);
    }
}

/// Forks the exec into the container's cgroup and pid namespace as the caller's child: its
/// pid and pidfd, or the errno of the failure. The child does not return.
fn fork_exec(plan: &ServePlan, fds: &[RawFd]) -> Result<(i32, RawFd), i32> {
    enter(&plan.enter);
    let mut pidfd: RawFd = -1;
    // SAFETY: a fork-like clone (no CLONE_VM) of this single-threaded process; the child goes
    // on below with its own copy of everything. Exit signal 0, as the spawner's children.
    let pid = unsafe {
        libc::syscall(
            libc::SYS_clone,
            (libc::CLONE_PARENT | libc::CLONE_PIDFD) as u64,
            0usize,
            &mut pidfd as *mut RawFd,
            0usize,
            0usize,
        )
    };
    if pid == 0 {
        become_exec(fds);
    }
    let errno = io::Error::last_os_error()
        .raw_os_error()
        .unwrap_or(libc::EIO);
    enter(&plan.leave);
    if pid < 0 {
        return Err(errno);
    }
    Ok((pid as i32, pidfd))
}

/// Steps into (or back out of) the cgroup: "0" written to each `tasks` file moves this thread.
fn enter(tasks: &[RawFd]) {
    for fd in tasks {
        // SAFETY: a two-byte write to a descriptor we hold.
        unsafe { libc::write(*fd, b"0".as_ptr() as *const libc::c_void, 1) };
    }
}

/// In the fork: the six descriptors become 0-5, nothing else stays open, and the exec goes on
/// as a pyrt-child given them by the spawner would.
fn become_exec(fds: &[RawFd]) -> ! {
    // A failure here is reported on the exec's own error pipe (its fd 4, `fds[4]` until moved):
    // an exit without a report would read as "the command runs" to the caller.
    let fail = |report: RawFd, what: &str| -> ! {
        let e = SetupError::io(
            Stage::Spawn,
            format!("the exec server's fork: {what}"),
            &io::Error::last_os_error(),
        );
        let rec = e.encode();
        // SAFETY: writing a local buffer to the error pipe, then exiting without unwinding.
        unsafe {
            libc::write(report, rec.as_ptr() as *const libc::c_void, rec.len());
            libc::_exit(127)
        }
    };
    // SAFETY: descriptor calls on what we were sent; first out of the way of 0-5, then into
    // place (dup2 clears close-on-exec), then everything above closed.
    let mut high = [0; EXEC_FDS];
    for (i, fd) in fds.iter().enumerate() {
        high[i] = unsafe { libc::fcntl(*fd, libc::F_DUPFD_CLOEXEC, 16) };
        if high[i] < 0 {
            fail(fds[4], "moving its descriptors");
        }
    }
    for (i, fd) in high.iter().enumerate() {
        if unsafe { libc::dup2(*fd, i as RawFd) } < 0 {
            fail(high[4], "putting its descriptors in place");
        }
    }
    let _ = crate::syscall::close_from_except(EXEC_FDS as u32, &[]);
    super::handle(false)
}

/// Answers a request on the socket.
fn reply(socket: RawFd, answer: Result<(i32, RawFd), i32>) -> io::Result<()> {
    let (word, fd) = match answer {
        Ok((pid, fd)) => (pid, Some(fd)),
        Err(errno) => (-errno, None),
    };
    let bytes = word.to_le_bytes();
    let iov = [IoSlice::new(&bytes)];
    let fds = fd.map(|f| [f]);
    let cmsg: Vec<ControlMessage> = fds.iter().map(|f| ControlMessage::ScmRights(f)).collect();
    let r = loop {
        match sendmsg::<()>(socket, &iov, &cmsg, MsgFlags::MSG_NOSIGNAL, None) {
            Err(nix::errno::Errno::EINTR) => continue,
            r => break r,
        }
    };
    if let Some(f) = fd {
        // SAFETY: our copy of the pidfd, sent.
        unsafe { libc::close(f) };
    }
    r.map(|_| ()).map_err(io::Error::from)
}
