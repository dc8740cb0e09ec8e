//! A container's mount namespace is torn down by a thread of ours, after its end is reported,
//! instead of in its last process's exit.
//!
//! When a namespace's last process exits, the kernel unmounts its whole tree in that exit
//! (`put_mnt_ns`): every mount of the container, an RCU grace period, and the superblocks
//! that go with them (its overlay, the tmpfs of a scratch layer and its pages, procfs, sysfs).
//! The exit is reported to the waiting parent only after that. A thread of ours that has
//! joined the namespace from the start (`Hold`) makes the container's exit drop a reference
//! instead of the last one; once the container is reaped the thread is let go, and its own
//! exit does the unmounting, after the caller has been told.
//!
//! A thread, not a descriptor: a descriptor would sit in the caller's table until the
//! unmounting is done, and a caller that counts its descriptors right after a run would see
//! one more than before. The namespace's descriptor is open only while the thread joins it.
//! Nothing outlives the caller: its threads go with it whatever way it ends, and a child it
//! forks has none of them. Joining a mount namespace needs CAP_SYS_ADMIN in our own user
//! namespace: a caller without it (rootless) holds nothing, and its containers' exits unmount
//! as before.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::mpsc;

/// `PIDFD_GET_MNT_NAMESPACE`, `_IO(0xFF, 3)` (<linux/pidfd.h>; Linux 6.11).
const PIDFD_GET_MNT_NAMESPACE: libc::c_ulong = 0xFF03;

/// A holder thread's stack: it only joins, waits and exits.
const STACK: usize = 64 * 1024;

/// A thread in a container's mount namespace; dropping this lets it go (and end the namespace,
/// if it was the last in it).
#[derive(Debug)]
pub(super) struct Hold {
    release: Option<mpsc::Sender<()>>,
    /// Told once the thread has joined (or failed to) and closed the namespace's descriptor.
    joined: mpsc::Receiver<bool>,
}

impl Drop for Hold {
    fn drop(&mut self) {
        // The starting thread did not wait for the join (a new thread may sit behind the
        // container's own setup on a busy CPU for milliseconds): the container has ended by
        // now, and this waits, if ever, only until the namespace's descriptor is closed, so
        // that none is left in the caller's table after the container.
        let _ = self.joined.recv();
        drop(self.release.take());
    }
}

/// Holds the mount namespace of process `pid` (its pidfd `pidfd`), or None when it cannot be
/// (no privilege to join it, the process gone, no thread to be had): an optimisation only.
/// The descriptor taken here holds the namespace from this moment; the thread joins it in its
/// own time, and the caller goes on at once.
pub(super) fn hold_mount_ns(pid: i32, pidfd: &OwnedFd) -> Option<Hold> {
    // SAFETY: geteuid cannot fail. (A rootless caller cannot join: see the module comment.)
    if unsafe { libc::geteuid() } != 0 {
        return None;
    }
    let ns = mount_ns(pid, pidfd)?;
    let (release, released) = mpsc::channel::<()>();
    let (joined_tx, joined) = mpsc::sync_channel::<bool>(1);
    std::thread::Builder::new()
        .name("pyrt-teardown".into())
        .stack_size(STACK)
        .spawn(move || {
            crate::host::background::yield_on_wakeup();
            // A root and working directory of our own first (threads share them), which the
            // join then moves into the container's namespace.
            // SAFETY: unshare and setns on this thread only, with a descriptor we own.
            let ok = unsafe {
                libc::unshare(libc::CLONE_FS) == 0
                    && libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNS) == 0
            };
            drop(ns);
            let _ = joined_tx.send(ok);
            if ok {
                // Until the `Hold` is dropped (an Err: the sender is gone).
                let _ = released.recv();
            }
        })
        .ok()?;
    Some(Hold {
        release: Some(release),
        joined,
    })
}

/// A descriptor of the mount namespace of process `pid`, or None (the process has gone).
fn mount_ns(pid: i32, pidfd: &OwnedFd) -> Option<OwnedFd> {
    // SAFETY: an ioctl without an argument on our own pidfd.
    let fd = unsafe { libc::ioctl(pidfd.as_raw_fd(), PIDFD_GET_MNT_NAMESPACE as _, 0) };
    if fd >= 0 {
        // SAFETY: the kernel just gave us this (close-on-exec) descriptor.
        return Some(unsafe { OwnedFd::from_raw_fd(fd) });
    }
    // Before Linux 6.11 (ENOTTY, or EINVAL from an older pidfd): by path.
    std::fs::File::open(format!("/proc/{pid}/ns/mnt"))
        .ok()
        .map(OwnedFd::from)
}
