//! Network namespaces made ahead of a container, for `network="private"`: the user-mode network
//! stack (slirp4netns) has to be attached and configured before the container's command runs,
//! so the container joins a namespace that is ready instead of making its own.

use std::io;
use std::os::fd::OwnedFd;

/// A new network namespace with `lo` up, as a descriptor (`/proc/thread-self/ns/net` of a
/// short-lived thread that unshared it: unshare(CLONE_NEWNET) changes only the calling thread,
/// so the process's own namespace is untouched).
pub fn create() -> io::Result<OwnedFd> {
    std::thread::Builder::new()
        .name("pyrt-netns".into())
        .spawn(|| -> io::Result<OwnedFd> {
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)
                .map_err(|e| io::Error::from_raw_os_error(e as i32))?;
            crate::child::network::loopback_up().map_err(|e| io::Error::other(e.to_string()))?;
            nix::fcntl::open(
                "/proc/thread-self/ns/net",
                nix::fcntl::OFlag::O_RDONLY | nix::fcntl::OFlag::O_CLOEXEC,
                nix::sys::stat::Mode::empty(),
            )
            .map_err(|e| io::Error::from_raw_os_error(e as i32))
        })?
        .join()
        .map_err(|_| io::Error::other("the netns thread panicked"))?
}
