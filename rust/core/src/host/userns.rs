//! User namespaces made by the caller's process and held by descriptors: the mapping of an
//! idmapped mount (`host::idmount`), and a rootless `pyrt.Network`'s namespace, which its
//! members join (with the network's own network namespace, born in it).
//!
//! A process is cloned into the new namespaces, its maps are written, the namespaces are
//! opened, and the process is killed. The descriptors keep the namespaces alive.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};

use crate::plan::IdMaps;

/// A user namespace with `maps`, held by a descriptor.
pub fn with_maps(maps: &IdMaps) -> io::Result<OwnedFd> {
    make(maps, false).map(|(user, _)| user)
}

/// A user namespace with `maps`, and a network namespace that belongs to it (`lo` down).
pub fn with_netns(maps: &IdMaps) -> io::Result<(OwnedFd, OwnedFd)> {
    let (user, net) = make(maps, true)?;
    Ok((user, net.expect("asked for")))
}

fn make(maps: &IdMaps, net: bool) -> io::Result<(OwnedFd, Option<OwnedFd>)> {
    let (wait_r, wait_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
    let mut stack = vec![0u8; 16 * 1024];
    let top = stack.as_mut_ptr().wrapping_add(stack.len()) as *mut libc::c_void;
    // Both ends, packed in the argument: the holder closes its copy of the write end, so
    // that it reads EOF (and exits) if we die before we kill it.
    let ends = ((wait_w.as_raw_fd() as u64) << 32) | wait_r.as_raw_fd() as u32 as u64;
    // Every signal blocked across the clone: the child shares our memory, and a handler of the
    // interpreter's must never run on its stack. It inherits the mask.
    let all = nix::sys::signal::SigSet::all();
    let mut old = nix::sys::signal::SigSet::empty();
    nix::sys::signal::pthread_sigmask(
        nix::sys::signal::SigmaskHow::SIG_SETMASK,
        Some(&all),
        Some(&mut old),
    )?;
    let flags = libc::CLONE_NEWUSER | libc::CLONE_VM | if net { libc::CLONE_NEWNET } else { 0 };
    // SAFETY: the child runs `hold` on its own stack, which outlives it (we reap it below
    // before `stack` is dropped); it only makes raw syscalls on an integer argument. Exit
    // signal 0: only a __WALL wait sees it, so no reaper of the caller's can take it.
    let pid = unsafe { libc::clone(hold, top, flags, ends as usize as *mut libc::c_void) };
    let clone_err = io::Error::last_os_error();
    let _ = nix::sys::signal::pthread_sigmask(
        nix::sys::signal::SigmaskHow::SIG_SETMASK,
        Some(&old),
        None,
    );
    if pid < 0 {
        return Err(clone_err);
    }
    let open =
        |name: &str| std::fs::File::open(format!("/proc/{pid}/ns/{name}")).map(OwnedFd::from);
    let opened = crate::idmap::write(pid, maps).and_then(|_| {
        let user = open("user")?;
        let net = if net { Some(open("net")?) } else { None };
        Ok((user, net))
    });
    // Done with it: killed, and reaped before its stack goes.
    let mut status = 0;
    // SAFETY: signalling and waiting for our own child; a signal handler of the caller's may
    // interrupt the wait, which is then made again.
    unsafe {
        libc::kill(pid, libc::SIGKILL);
        while libc::waitpid(pid, &mut status, libc::__WALL) < 0
            && *libc::__errno_location() == libc::EINTR
        {}
    }
    drop(stack);
    drop((wait_r, wait_w));
    opened
}

/// The holder of the new namespaces: blocks reading its pipe until killed, or until EOF when
/// the process that made it died first (it closed its own copy of the write end).
extern "C" fn hold(arg: *mut libc::c_void) -> libc::c_int {
    let ends = arg as usize as u64;
    let (read_end, write_end) = (
        (ends & 0xffff_ffff) as libc::c_int,
        (ends >> 32) as libc::c_int,
    );
    let mut b = 0u8;
    // SAFETY: raw syscalls on integer descriptors (this process's own table) and a byte of our
    // own stack.
    unsafe {
        libc::close(write_end);
        libc::read(read_end, &mut b as *mut u8 as *mut libc::c_void, 1);
        libc::syscall(libc::SYS_exit, 0);
    }
    0
}
