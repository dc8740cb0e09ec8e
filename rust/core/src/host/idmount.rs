//! Idmapped bind mounts (`idmap`, `ridmap`, a mount's own `uidMappings`), made by the parent
//! before clone.
//!
//! mount_setattr(MOUNT_ATTR_IDMAP) needs CAP_SYS_ADMIN over the user namespace of the source's
//! filesystem (the host's, for a host directory), which the container's child, already in its
//! own user namespace, does not have. So the parent clones the source into a detached mount,
//! maps it, and hands the descriptor down; the child only attaches it with move_mount, inside
//! the root (runc and crun split the work the same way).
//!
//! The mapping comes from a user namespace that has it: a process is cloned into a new one,
//! its maps are written, the namespace is opened, and the process exits. The descriptor keeps
//! the namespace alive for as long as the mount needs it (the kernel takes its own reference).

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;

use crate::mountopts::attr;
use crate::plan::{IdMaps, MountIdmap};
use crate::syscall;

/// A user namespace with `maps`, held by a descriptor.
pub fn userns_with(maps: &IdMaps) -> io::Result<OwnedFd> {
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
    // SAFETY: the child runs `hold` on its own stack, which outlives it (we reap it below
    // before `stack` is dropped); it only makes raw syscalls on an integer argument. Exit
    // signal 0: only a __WALL wait sees it, so no reaper of the caller's can take it.
    let pid = unsafe {
        libc::clone(
            hold,
            top,
            libc::CLONE_NEWUSER | libc::CLONE_VM,
            ends as usize as *mut libc::c_void,
        )
    };
    let clone_err = io::Error::last_os_error();
    let _ = nix::sys::signal::pthread_sigmask(
        nix::sys::signal::SigmaskHow::SIG_SETMASK,
        Some(&old),
        None,
    );
    if pid < 0 {
        return Err(clone_err);
    }
    let opened = crate::idmap::write(pid, maps)
        .and_then(|_| std::fs::File::open(format!("/proc/{pid}/ns/user")).map(OwnedFd::from));
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

/// The holder of a new user namespace: blocks reading its pipe until killed, or until EOF when
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

/// A detached, idmapped copy of `source` (with `rbind`, of the mounts below it too), ready for
/// the child to attach. `userns` carries `idmap.maps` (`userns_with`).
pub fn detached(
    source: &Path,
    rbind: bool,
    idmap: &MountIdmap,
    userns: &OwnedFd,
) -> io::Result<OwnedFd> {
    let tree = syscall::open_tree_clone(source, rbind).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("cloning {} for an idmapped mount: {e}", source.display()),
        )
    })?;
    syscall::mount_setattr_userns(&tree, attr::IDMAP, 0, Some(userns), idmap.recursive).map_err(
        |e| {
            let why = match e.raw_os_error() {
                Some(libc::EPERM) => " (needs root: CAP_SYS_ADMIN over the source's filesystem)",
                Some(libc::EINVAL) => {
                    " (its filesystem, or one mounted below it with ridmap, cannot be idmapped)"
                }
                _ => "",
            };
            io::Error::new(
                e.kind(),
                format!("idmapping {}: {e}{why}", source.display()),
            )
        },
    )?;
    Ok(tree)
}
