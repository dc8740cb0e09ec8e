//! The first stage of a container whose user namespace is joined by path (a rootless
//! `pyrt.Network`'s member, or a spec that names one): the namespaces it makes must belong to
//! that user namespace, so they are made from inside it, by a process that is not yet the
//! container's. Runc's nsexec splits its start the same way.
//!
//! The spawner cloned us with no namespace; our arguments say what to do (the plan comes
//! later, to the second stage): enter the user namespace, become its root, unshare the other
//! namespaces, and clone the container's process with CLONE_PARENT, so that it is the caller's
//! child as a one-stage start's is (new pid namespace: it is pid 1 there). We report its pid on
//! the report pipe and exit; it goes on as `child::main` would.

use std::io::{self, Write};
use std::os::fd::FromRawFd;

use crate::report::{SetupError, Stage};
use crate::wire::{self, ERROR_FD};

/// Runs the first stage from pyrt-child's arguments (fd, clone flags, parent-death signal).
/// Returns in the second stage only; the first exits.
pub fn run(args: &[String]) {
    if let Err(e) = split(args) {
        // SAFETY: ERROR_FD is ours.
        let mut pipe = unsafe { std::fs::File::from_raw_fd(ERROR_FD) };
        let _ = pipe.write_all(&e.encode());
        std::process::exit(127);
    }
}

fn split(args: &[String]) -> Result<(), SetupError> {
    let bad = || SetupError::new(Stage::Plan, libc::EINVAL, format!("first stage: {args:?}"));
    let [fd, flags, pdeath] = args else {
        return Err(bad());
    };
    let fd: i32 = fd.parse().map_err(|_| bad())?;
    let flags: u64 = flags.parse().map_err(|_| bad())?;
    let step = |what: &str| {
        let e = io::Error::last_os_error();
        SetupError::io(Stage::Namespaces, what, &e)
    };
    // SAFETY: raw syscalls on a descriptor we were handed and on integers; this process is
    // single-threaded, so the fork-like clone below is safe to continue from in both copies.
    unsafe {
        if libc::setns(fd, libc::CLONE_NEWUSER) != 0 {
            return Err(step("joining the container's user namespace"));
        }
        libc::close(fd);
        // Its root, when mapped (our uid may mean someone else there, or nobody): the files
        // made during setup are then root's, as in a user namespace of the container's own.
        if libc::getuid() != 0 {
            let deny = matches!(std::fs::read_to_string("/proc/self/setgroups"),
                                Ok(s) if s.trim() == "deny");
            if libc::setresgid(0, 0, 0) != 0
                || (!deny && libc::setgroups(0, std::ptr::null()) != 0)
                || libc::setresuid(0, 0, 0) != 0
            {
                return Err(step("becoming root of the joined user namespace"));
            }
        }
        let newpid = libc::CLONE_NEWPID as u64;
        let rest = flags & !(newpid | libc::CLONE_NEWUSER as u64);
        if rest != 0 && libc::unshare(rest as libc::c_int) != 0 {
            return Err(step("unshare of the container's namespaces"));
        }
        // Exit signal 0, as the spawner's own children: only a __WALL wait sees it.
        let clone_flags = libc::CLONE_PARENT as u64 | (flags & newpid);
        let pid = libc::syscall(libc::SYS_clone, clone_flags, 0usize, 0usize, 0usize, 0usize);
        if pid < 0 {
            return Err(step("clone of the container's process"));
        }
        if pid == 0 {
            if pdeath == "1" {
                libc::prctl(
                    libc::PR_SET_PDEATHSIG,
                    libc::SIGKILL as libc::c_ulong,
                    0,
                    0,
                    0,
                );
            }
            return Ok(());
        }
        let rec = wire::stage_pid_record(pid as i32);
        libc::write(ERROR_FD, rec.as_ptr() as *const libc::c_void, rec.len());
        libc::_exit(0);
    }
}
