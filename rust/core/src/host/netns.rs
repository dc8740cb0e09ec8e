//! Network namespaces made ahead of a container: for `network="private"` (the user-mode network
//! stack, slirp4netns, has to be attached and configured before the container's command runs,
//! so the container joins a namespace that is ready instead of making its own), and the next
//! start's empty one (`take_ready`).

use std::io;
use std::os::fd::OwnedFd;

/// A new network namespace with `lo` up, as a descriptor (`/proc/thread-self/ns/net` of a
/// short-lived thread that unshared it: unshare(CLONE_NEWNET) changes only the calling thread,
/// so the process's own namespace is untouched).
pub fn create() -> io::Result<OwnedFd> {
    std::thread::Builder::new()
        .name("pyrt-netns".into())
        .spawn(|| -> io::Result<OwnedFd> {
            enter_new()?;
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

/// Moves the calling thread (only) into a new network namespace and brings its `lo` up.
fn enter_new() -> io::Result<()> {
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)
        .map_err(|e| io::Error::from_raw_os_error(e as i32))?;
    crate::child::network::loopback_up().map_err(|e| io::Error::other(e.to_string()))
}

static POOL_ENABLED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Lets `take_ready` hand out the namespace made ahead (the maker starts at the first take).
pub fn enable_pool() {
    POOL_ENABLED.store(true, std::sync::atomic::Ordering::Relaxed);
}

struct Maker {
    /// The process it belongs to: a forked child has no maker thread (and must not use one).
    owner: u32,
    /// The maker thread's id while it sits in a new namespace nobody has taken yet.
    ready: std::sync::Mutex<Option<libc::pid_t>>,
    taken: std::sync::Condvar,
}

/// A network namespace made ahead (`lo` up), for a container that would make its own at clone;
/// None when none is ready (the clone then makes one) or this does not apply here.
///
/// Making a network namespace is the single largest step of a start (~0.45 ms measured here,
/// most of it `copy_net_ns` under the clone). A thread of its own makes the next one in the
/// background while a container runs: it unshares a new namespace and sits in it until a start
/// takes it (by opening the thread's `ns/net`), then makes another. Nothing of it can outlive
/// the process, and the process holds no descriptor to it: only that thread is in it. Only for
/// root: the namespace belongs to the caller's user namespace, which a rootless container (in
/// a user namespace of its own) has no power over. Off until `enable_pool` (the Python
/// extension, a long-lived process, turns it on; a short-lived `pyrt-runc create` would make a
/// namespace it never uses), and `PYRT_NETNS_POOL=0` keeps it off.
pub fn take_ready() -> Option<OwnedFd> {
    static MAKER: std::sync::OnceLock<Option<&'static Maker>> = std::sync::OnceLock::new();
    if !POOL_ENABLED.load(std::sync::atomic::Ordering::Relaxed) {
        return None;
    }
    let maker = (*MAKER.get_or_init(start_maker))?;
    if maker.owner != std::process::id() {
        return None;
    }
    let mut ready = maker.ready.lock().ok()?;
    let tid = ready.take()?;
    let fd = std::fs::File::open(format!("/proc/self/task/{tid}/ns/net")).ok();
    drop(ready);
    maker.taken.notify_one();
    fd.map(OwnedFd::from)
}

fn start_maker() -> Option<&'static Maker> {
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } != 0 || std::env::var("PYRT_NETNS_POOL").is_ok_and(|v| v == "0") {
        return None;
    }
    let maker: &'static Maker = Box::leak(Box::new(Maker {
        owner: std::process::id(),
        ready: std::sync::Mutex::new(None),
        taken: std::sync::Condvar::new(),
    }));
    std::thread::Builder::new()
        .name("pyrt-netns-next".into())
        .spawn(move || make_ahead(maker))
        .ok()?;
    Some(maker)
}

/// The maker thread: each unshare moves this thread (only) into a new namespace, and the one it
/// leaves lives on only if a container took it. It stops at the first failure (a kernel without
/// network namespaces, a limit reached): containers then make their own.
fn make_ahead(maker: &Maker) {
    // Signals go to the interpreter's threads, never here.
    let all = nix::sys::signal::SigSet::all();
    let _ = nix::sys::signal::pthread_sigmask(
        nix::sys::signal::SigmaskHow::SIG_BLOCK,
        Some(&all),
        None,
    );
    own_descriptor_table();
    super::background::yield_on_wakeup();
    // The raw syscall: glibc's gettid wrapper is newer (2.30) than the wheel's promise (2.17).
    // SAFETY: gettid cannot fail.
    let tid = unsafe { libc::syscall(libc::SYS_gettid) } as libc::pid_t;
    loop {
        if enter_new().is_err() {
            return;
        }
        let Ok(mut ready) = maker.ready.lock() else {
            return;
        };
        *ready = Some(tid);
        while ready.is_some() {
            ready = match maker.taken.wait(ready) {
                Ok(r) => r,
                Err(_) => return,
            };
        }
    }
}

/// Gives the calling thread an empty descriptor table of its own. The socket that brings each
/// new namespace's `lo` up would otherwise be one more descriptor of the process's for a moment,
/// at any moment, and a caller counting its descriptors saw it (the test suite's leak checks).
/// Only where `close_range` exists (Linux 5.9): the unshared table starts as a copy of the
/// process's, whose references must not outlive the moment (a pipe another thread closes
/// would not see its EOF).
fn own_descriptor_table() {
    // SAFETY: close_range and unshare on this thread's own table; the first closes nothing
    // (an empty range beyond any descriptor) and only tells whether the call exists.
    unsafe {
        if libc::syscall(libc::SYS_close_range, u32::MAX, u32::MAX, 0) == 0
            && libc::unshare(libc::CLONE_FILES) == 0
        {
            libc::syscall(libc::SYS_close_range, 0u32, u32::MAX, 0);
        }
    }
}
