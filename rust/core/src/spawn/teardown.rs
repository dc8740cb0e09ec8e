//! A container's mount namespace is torn down by our own thread, after its end is reported,
//! instead of in its last process's exit.
//!
//! When a namespace's last process exits, the kernel unmounts its whole tree in that exit
//! (`put_mnt_ns`): every mount of the container, an RCU grace period, and the superblocks
//! that go with them (its overlay, the tmpfs of a scratch layer and its pages, procfs, sysfs).
//! The exit is reported to the waiting parent only after that. Holding a descriptor of the
//! namespace from the start makes the container's exit drop a reference instead of the
//! last one, and the unmounting happens when that descriptor is closed: here, by a thread of
//! ours, after the caller has been told. Nothing outlives the caller: its descriptors, and so
//! the namespace, go with it whatever way it ends (close-on-exec, they do not reach what it
//! executes; a child it forks without executing, which has no teardown thread, keeps its copies
//! until it exits or executes, as it keeps every other descriptor).

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::mpsc;
use std::sync::{Mutex, OnceLock};

/// `PIDFD_GET_MNT_NAMESPACE`, `_IO(0xFF, 3)` (<linux/pidfd.h>; Linux 6.11).
const PIDFD_GET_MNT_NAMESPACE: libc::c_ulong = 0xFF03;

/// A descriptor of the mount namespace of process `pid` (its pidfd `pidfd`), or None when it
/// cannot be had (the process has gone): holding it is an optimisation only.
pub(super) fn mount_ns(pid: i32, pidfd: &OwnedFd) -> Option<OwnedFd> {
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

/// Closes `ns` on the teardown thread (started at first use); in place if there is none.
pub(super) fn close_later(ns: OwnedFd) {
    static CLOSER: OnceLock<Option<Mutex<mpsc::Sender<OwnedFd>>>> = OnceLock::new();
    let closer = CLOSER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<OwnedFd>();
        std::thread::Builder::new()
            .name("pyrt-teardown".into())
            .spawn(move || rx.into_iter().for_each(drop))
            .ok()
            .map(|_| Mutex::new(tx))
    });
    let sent = match closer {
        Some(tx) => match tx.lock() {
            Ok(tx) => tx.send(ns).map_err(|e| e.0),
            Err(_) => Err(ns),
        },
        None => Err(ns),
    };
    drop(sent);
}
