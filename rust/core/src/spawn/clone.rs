//! The clone itself: the spawner thread, the job it runs (step into cgroups and namespaces,
//! clone, step back), and `child_fn`, the few raw syscalls between clone and `execveat`.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::mpsc;
use std::sync::{Mutex, OnceLock};

use crate::wire::{self, ERROR_FD};

/// What `child_fn` needs, prepared before clone: plain integers and pointers into memory that
/// stays alive until the child has executed (the parent thread sleeps until then).
#[repr(C)]
pub(super) struct ChildArgs {
    /// Sources for fds 0..=5, each >= FD_FLOOR so dup2 into 0..=5 cannot clobber a later source.
    pub(super) fds: [RawFd; 6],
    pub(super) exe_fd: RawFd,
    pub(super) argv: *const *const libc::c_char,
    pub(super) envp: *const *const libc::c_char,
    /// Where a failure of execveat itself is reported (the child's copy of the error pipe).
    pub(super) report_fd: RawFd,
    /// Die with the parent (not for a container that must outlive `pyrt-runc create`).
    pub(super) pdeathsig: bool,
    /// With a user namespace whose root is not the caller (a root caller mapping the container
    /// to a subordinate range): a pipe to wait on until the maps are written, then become the
    /// namespace's root before executing (see `needs_setid`). -1 otherwise.
    pub(super) setid_fd: RawFd,
    /// Descriptors handed down beyond the six (`Plan::inherited_fds`): the child clears their
    /// close-on-exec flag in its own descriptor table. Each is >= FD_FLOOR.
    pub(super) keep: *const RawFd,
    pub(super) keep_len: usize,
}

/// Every descriptor the child reads is at or above this, so that its dup2s into 0..=5 (and a
/// re-execution's plan in 6) cannot clobber one.
const FD_FLOOR: RawFd = 10;

/// The clone child. Raw syscalls only: no allocation, no locks, no Rust std I/O.
extern "C" fn child_fn(arg: *mut libc::c_void) -> libc::c_int {
    // SAFETY: `arg` points at the ChildArgs the parent thread keeps alive while it sleeps.
    let a = unsafe { &*(arg as *const ChildArgs) };
    unsafe {
        if a.pdeathsig {
            libc::prctl(
                libc::PR_SET_PDEATHSIG,
                libc::SIGKILL as libc::c_ulong,
                0,
                0,
                0,
            );
        }
        if a.setid_fd >= 0 {
            // Our uid is the caller's, which means nobody in the new namespace: executing now
            // would drop every capability. Once the parent has written the maps (it says so by
            // closing the pipe), becoming 0 makes us the namespace's root, and the execution
            // below keeps its capabilities. Raw syscalls: glibc's setresuid would signal the
            // threads of the parent, whose memory we share.
            let mut b = 0u8;
            libc::read(a.setid_fd, &mut b as *mut u8 as *mut libc::c_void, 1);
            if b != b'1'
                || libc::syscall(libc::SYS_setresgid, 0, 0, 0) != 0
                || libc::syscall(libc::SYS_setgroups, 0, std::ptr::null::<libc::gid_t>()) != 0
                || libc::syscall(libc::SYS_setresuid, 0, 0, 0) != 0
            {
                return fail(a.report_fd);
            }
        }
        for (target, src) in a.fds.iter().enumerate() {
            if libc::dup2(*src, target as RawFd) < 0 {
                return fail(a.report_fd);
            }
        }
        for i in 0..a.keep_len {
            if libc::fcntl(*a.keep.add(i), libc::F_SETFD, 0) < 0 {
                return fail(a.report_fd);
            }
        }
        libc::syscall(
            libc::SYS_execveat,
            a.exe_fd,
            c"".as_ptr(),
            a.argv,
            a.envp,
            libc::AT_EMPTY_PATH,
        );
        fail(ERROR_FD)
    }
}

/// Reports errno as `wire`'s exec-failure record and exits; used before execveat.
unsafe fn fail(fd: RawFd) -> libc::c_int {
    let rec = wire::exec_failed_record(*libc::__errno_location());
    libc::write(fd, rec.as_ptr() as *const libc::c_void, rec.len());
    libc::syscall(libc::SYS_exit, 127);
    127
}

pub(super) struct Job {
    pub(super) flags: libc::c_int,
    pub(super) args: *const ChildArgs,
    /// cgroup v1 `tasks` files to enter before clone and to return to after it.
    pub(super) enter: Vec<RawFd>,
    pub(super) leave: Vec<RawFd>,
    /// For an exec: the container's pid namespace, which the child must be born in.
    pub(super) pidns: Option<RawFd>,
    /// A network namespace the child must be born in (`prejoin_net`).
    pub(super) netns: Option<RawFd>,
    /// Without CLONE_VFORK (a child that waits for its maps): EOF here once the child has
    /// executed or died, until when its stack must not be reused.
    pub(super) exec_wait: Option<OwnedFd>,
    pub(super) reply: mpsc::SyncSender<io::Result<(i32, OwnedFd)>>,
}
// SAFETY: the pointer is only dereferenced by the clone child while the sending thread waits for
// the reply, so the memory it points to is alive and not mutated.
unsafe impl Send for Job {}

fn setns(fd: RawFd, kind: libc::c_int) -> io::Result<()> {
    // SAFETY: setns on a descriptor the job owns.
    if unsafe { libc::setns(fd, kind) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Everything the spawner thread does for one job, in order: step into the cgroups and the pid
/// namespace the child must be born in, clone, step back out.
fn run_job(job: &Job, stack: &mut [u8], home_pidns: RawFd) -> io::Result<(i32, OwnedFd)> {
    // Our network namespace is opened per job, not held: an open one would look like a
    // network kept alive.
    let home_net = match job.netns {
        Some(_) => Some(std::fs::File::open("/proc/thread-self/ns/net").map(OwnedFd::from)?),
        None => None,
    };
    let home = Home {
        pidns: home_pidns,
        netns: home_net.as_ref().map_or(-1, |f| f.as_raw_fd()),
    };
    let home = &home;
    move_self(&job.enter)?;
    if let Some(ns) = job.pidns {
        // Only pid_for_children changes; our own pid namespace stays what it was, so the way
        // back below is always allowed.
        setns(ns, libc::CLONE_NEWPID)?;
    }
    if let Some(ns) = job.netns {
        if let Err(e) = setns(ns, libc::CLONE_NEWNET) {
            let _ = back_home(job, home);
            return Err(e);
        }
    }
    let top = stack.as_mut_ptr().wrapping_add(stack.len()) as *mut libc::c_void;
    let mut pidfd: libc::c_int = -1;
    // SAFETY: see the module comment; child_fn only uses what `args` points at.
    let pid = unsafe {
        libc::clone(
            child_fn,
            top,
            job.flags,
            job.args as *mut libc::c_void,
            &mut pidfd as *mut libc::c_int,
        )
    };
    let clone_err = io::Error::last_os_error();
    let back = back_home(job, home);
    if pid < 0 {
        return Err(clone_err);
    }
    // SAFETY: CLONE_PIDFD stored a new descriptor for the child in `pidfd`.
    let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd) };
    back.map(|_| (pid, pidfd))
}

/// The spawner thread's own namespaces, to return to after a clone in someone else's.
struct Home {
    pub(super) pidns: RawFd,
    pub(super) netns: RawFd,
}

/// Back home. A failure here would start later containers in this one's cgroups or
/// namespaces, so it fails the job loudly rather than going unnoticed.
fn back_home(job: &Job, home: &Home) -> io::Result<()> {
    let pid = match job.pidns {
        Some(_) => setns(home.pidns, libc::CLONE_NEWPID),
        None => Ok(()),
    };
    let net = match job.netns {
        Some(_) => setns(home.netns, libc::CLONE_NEWNET),
        None => Ok(()),
    };
    let cg = move_self(&job.leave);
    pid.and(net).and(cg)
}

/// Runs a job on the calling thread, which must be the process's main thread (a parent-death
/// signal follows the thread that cloned, and only the main thread lives as long as the
/// process), for a child cloned with CLONE_VFORK: it has executed (or died) by the time clone
/// returns, so the stack is free again at once. This spares the two
/// hand-offs between threads that going through the spawner costs (each a wake-up of a thread
/// that may sleep on another CPU, which in a VM can be an interrupt to a halted vCPU). The
/// calling thread steps into the container's cgroups and namespaces exactly as the spawner
/// does, with every signal blocked meanwhile: nothing of Python's may run in a child that
/// shares our memory. Before Linux 6.2 a cpuset's attach overwrote a thread's CPU affinity
/// (later kernels keep what the thread asked for), so the caller's is put back after a cgroup
/// move.
pub(super) fn run_here(job: &Job) -> io::Result<(i32, OwnedFd)> {
    use nix::sys::signal::{pthread_sigmask, SigSet, SigmaskHow};
    thread_local! {
        static STACK: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
    }
    let home_pidns = own_pidns();
    if job.pidns.is_some() && home_pidns.is_none() {
        return Err(io::Error::other("cannot open our own pid namespace"));
    }
    let mut old = SigSet::empty();
    pthread_sigmask(
        SigmaskHow::SIG_SETMASK,
        Some(&SigSet::all()),
        Some(&mut old),
    )?;
    let affinity = if job.enter.is_empty() {
        None
    } else {
        nix::sched::sched_getaffinity(nix::unistd::Pid::from_raw(0)).ok()
    };
    let r = STACK.with_borrow_mut(|stack| {
        if stack.is_empty() {
            stack.resize(CHILD_STACK, 0);
        }
        run_job(job, stack, home_pidns.unwrap_or(-1))
    });
    if r.is_err() {
        let _ = move_self(&job.leave);
    }
    if let Some(set) = affinity {
        let _ = nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set);
    }
    let _ = pthread_sigmask(SigmaskHow::SIG_SETMASK, Some(&old), None);
    r
}

/// The size of a clone child's stack: only child_fn and the libc wrappers it calls run on it.
const CHILD_STACK: usize = 256 * 1024;

/// Our process's own pid namespace, to return to after an exec's clone; opened once.
fn own_pidns() -> Option<RawFd> {
    static OWN: OnceLock<Option<OwnedFd>> = OnceLock::new();
    OWN.get_or_init(|| {
        std::fs::File::open("/proc/self/ns/pid")
            .map(OwnedFd::from)
            .ok()
    })
    .as_ref()
    .map(|f| f.as_raw_fd())
}

pub(super) fn spawner() -> &'static Mutex<mpsc::Sender<Job>> {
    static SPAWNER: OnceLock<Mutex<mpsc::Sender<Job>>> = OnceLock::new();
    SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("pyrt-spawner".into())
            .spawn(move || {
                let all = nix::sys::signal::SigSet::all();
                let _ = nix::sys::signal::pthread_sigmask(
                    nix::sys::signal::SigmaskHow::SIG_BLOCK,
                    Some(&all),
                    None,
                );
                // Our own pid namespace, to return to after an exec's clone.
                let home_pidns = std::fs::File::open("/proc/thread-self/ns/pid_for_children")
                    .or_else(|_| std::fs::File::open("/proc/thread-self/ns/pid"))
                    .map(OwnedFd::from)
                    .ok();
                let mut stack = vec![0u8; CHILD_STACK];
                for job in rx {
                    let r = match (&job.pidns, &home_pidns) {
                        (Some(_), None) => {
                            Err(io::Error::other("cannot open our own pid namespace"))
                        }
                        _ => run_job(
                            &job,
                            &mut stack,
                            home_pidns.as_ref().map_or(-1, |f| f.as_raw_fd()),
                        ),
                    };
                    if r.is_err() {
                        let _ = move_self(&job.leave);
                    }
                    let cloned = r.is_ok();
                    let _ = job.reply.send(r);
                    if let (true, Some(fd)) = (cloned, &job.exec_wait) {
                        wait_eof(fd.as_raw_fd());
                    }
                }
            })
            .expect("spawning the pyrt-spawner thread");
        Mutex::new(tx)
    })
}

/// Blocks until the other end of the pipe is closed everywhere (a close-on-exec end held by a
/// child: until it executed or died).
pub(super) fn wait_eof(fd: RawFd) {
    let mut buf = [0u8; 16];
    loop {
        // SAFETY: reading into a local buffer from a descriptor we own.
        let n = unsafe { libc::read(fd, buf.as_mut_ptr() as *mut libc::c_void, buf.len()) };
        if n == 0 || (n < 0 && io::Error::last_os_error().raw_os_error() != Some(libc::EINTR)) {
            return;
        }
    }
}

/// Writes "0" into each cgroup v1 `tasks` file: moves the calling thread alone, which skips the
/// thread-group lock (and its RCU wait) that moving a whole process takes.
pub(super) fn move_self(files: &[RawFd]) -> io::Result<()> {
    for fd in files {
        // SAFETY: writing two bytes from a static buffer to a descriptor the job owns.
        if unsafe { libc::write(*fd, b"0\n".as_ptr() as *const libc::c_void, 2) } < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

pub(crate) fn dup_high(fd: RawFd) -> io::Result<OwnedFd> {
    // SAFETY: F_DUPFD_CLOEXEC returns a new descriptor or -1.
    let r = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, FD_FLOOR) };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        // SAFETY: just created.
        Ok(unsafe { OwnedFd::from_raw_fd(r) })
    }
}
