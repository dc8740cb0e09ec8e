//! The child: what runs inside the new namespaces, between the parent's `clone` and the
//! container command's `execve`.
//!
//! This code runs in `pyrt-child`, a fresh single-threaded process image executed from a sealed
//! memfd (see `spawn`), never inside the Python interpreter, so it may allocate and format error
//! messages freely. Descriptors on entry:
//!
//! | fd | what |
//! | -- | ---- |
//! | 0, 1, 2 | the container's stdio |
//! | 3 | the plan: a little-endian u32 length, then the plan's JSON; afterwards the parent keeps the write end open as a lifeline |
//! | 4 | the error pipe: a `SetupError` record on failure; closed by a successful execve |
//! | 5 | the status pipe: with `init`, pid 1 writes the command's raw wait status here |
//!
//! The order of the steps matters and is the one below (bubblewrap's `main()` is the model).

mod cgroupfs;
mod console;
mod devices;
mod init;
pub mod network;
mod process;
pub mod rootfs;

use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, FromRawFd};

use std::path::PathBuf;

use crate::plan::{ExecPlan, Plan, Process, Request, RootSource};
use crate::report::{SetupError, Stage};
use crate::seccomp::Program;
use crate::syscall;

pub const PLAN_FD: i32 = 3;
pub const ERROR_FD: i32 = 4;

/// Entry point of `pyrt-child`. Never returns: it becomes the container's command or exits.
pub fn main() -> ! {
    // Nothing but our five descriptors may reach the container, whatever the parent held open.
    let _ = syscall::close_from(6);
    for fd in [PLAN_FD, ERROR_FD, init::STATUS_FD] {
        // SAFETY: fcntl on a descriptor number; failure is harmless here.
        unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
    }
    // Setup creates files and device nodes with exactly the modes it names (0666 for /dev/null);
    // the command's own umask is set later, from the spec (022 when it names none).
    nix::sys::stat::umask(nix::sys::stat::Mode::empty());
    let result = read_request().and_then(|request| match request {
        Request::Create(plan) => run(&plan),
        Request::Exec(plan) => run_exec(&plan),
    });
    let err = match result {
        Ok(never) => match never {},
        Err(e) => e,
    };
    // SAFETY: ERROR_FD is ours; the record is written whole or not at all (well under PIPE_BUF
    // in practice; a short write only truncates the message).
    let mut pipe = unsafe { std::fs::File::from_raw_fd(ERROR_FD) };
    let _ = pipe.write_all(&err.encode());
    std::process::exit(127)
}

fn read_request() -> Result<Request, SetupError> {
    // SAFETY: PLAN_FD is ours; ManuallyDrop keeps it open as the lifeline after reading.
    let mut f = std::mem::ManuallyDrop::new(unsafe { std::fs::File::from_raw_fd(PLAN_FD) });
    let bad = |e: io::Error| SetupError::io(Stage::Plan, "reading the plan from the parent", &e);
    let mut len = [0u8; 4];
    f.read_exact(&mut len).map_err(bad)?;
    let mut buf = vec![0u8; u32::from_le_bytes(len) as usize];
    f.read_exact(&mut buf).map_err(bad)?;
    serde_json::from_slice(&buf)
        .map_err(|e| SetupError::new(Stage::Plan, libc::EINVAL, format!("decoding the plan: {e}")))
}

fn run(plan: &Plan) -> Result<std::convert::Infallible, SetupError> {
    // 0. A session of our own: a container given the caller's terminal as stdio has it as no
    //    controlling terminal, so it cannot push keystrokes into the caller's shell with TIOCSTI
    //    (CVE-2017-5226, bubblewrap's --new-session).
    new_session()?;
    // 1. Join the namespaces given by path (the new ones were made by clone); a new cgroup
    //    namespace now, when we are inside the container's cgroup, so that it is its root.
    join_namespaces(plan)?;
    if plan.new_cgroupns {
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWCGROUP).map_err(|e| {
            SetupError::io(
                Stage::Namespaces,
                "unshare(CLONE_NEWCGROUP)",
                &io::Error::from(e),
            )
        })?;
    }
    // 2. Nothing we mount may propagate to the host.
    rootfs::make_private()?;
    // 3. The root: a bind of the image directory, an overlay of its layers, or the host's "/".
    let root = rootfs::mount_root(&plan.root)?;
    rootfs::refuse_special_symlinks(&root)?;
    // 4. The spec's mounts in order (/proc, /dev, /dev/pts, ..., binds, tmpfs), each target
    //    resolved inside the root.
    for m in &plan.mounts {
        rootfs::mount_one(&root, m)?;
    }
    // 5. Device nodes and symlinks of a fresh /dev, while the host's nodes are still reachable.
    if plan.default_devices {
        devices::populate(&root)?;
    }
    // 5b. A missing working directory is made inside the root (Docker's rule). A failure (a
    //     read-only root, a path through a file) is left for step 10, whose chdir error names it.
    if plan.create_cwd {
        let _ = rootfs::ensure_in_root(&root, &plan.process.cwd, false);
    }
    // 6. Masked and read-only paths, in the container's /proc and /sys mounted above.
    rootfs::mask_and_protect(&root, &plan.masked_paths, &plan.readonly_paths)?;
    // 7. Swap roots; the host's tree is detached and unreachable from here on.
    rootfs::pivot(&root)?;
    drop(root);
    // 7b. A terminal: the pty from the container's own /dev/pts, its master to the parent.
    if plan.process.terminal {
        console::setup(0)?;
    }
    // 8. A read-only root, once every mount point in it exists. A host root was made read-only
    //    recursively in step 3 already.
    if plan.root.readonly && !matches!(plan.root.source, RootSource::Bind(_)) {
        rootfs::readonly_root()?;
    }
    // 9. Hostname, loopback, sysctls: namespaced state, set while we still have every capability.
    if let Some(h) = &plan.hostname {
        nix::unistd::sethostname(h).map_err(|e| {
            SetupError::io(
                Stage::Hostname,
                format!("sethostname {h:?}"),
                &io::Error::from(e),
            )
        })?;
    }
    if plan.loopback {
        network::loopback_up()?;
    }
    for (k, v) in &plan.sysctl {
        let path = format!("/proc/sys/{}", k.replace('.', "/"));
        process::write_proc(&path, v).map_err(|e| match e.raw_os_error() {
            Some(libc::EXDEV) => SetupError::new(
                Stage::Sysctl,
                libc::EXDEV,
                format!("sysctl {k}: {path} is not on a procfs (something is mounted over it); refusing to write it"),
            ),
            _ => SetupError::io(Stage::Sysctl, format!("sysctl {k}={v}"), &e),
        })?;
    }
    // 10-14: the process itself, shared with exec.
    Err(become_command(
        &plan.process,
        plan.seccomp.as_ref(),
        plan.init,
    ))
}

/// The last steps, for a container's command and an exec alike; returns only on failure.
fn become_command(p: &Process, seccomp: Option<&Program>, init: bool) -> SetupError {
    match prepare_command(p, seccomp, init) {
        Ok(exe) => process::exec(p, &exe),
        Err(e) => e,
    }
}

fn prepare_command(
    p: &Process,
    seccomp: Option<&Program>,
    init: bool,
) -> Result<PathBuf, SetupError> {
    // 10. Process attributes: rlimits, then user and capabilities, then the working directory
    //     (as the user, so its permissions apply), then the executable's lookup.
    process::rlimits(p)?;
    process::switch_user(p, setgroups_allowed())?;
    process::enter_cwd(p)?;
    let exe = process::lookup(p)?;
    // 11. no_new_privs.
    process::no_new_privs(p)?;
    // 12. Signals as after boot; then make sure we die with the parent: a change of credentials
    //     cleared the parent-death signal that clone's child set, so it is set again here and
    //     the lifeline checked after, which closes the window in which the parent may have
    //     died. Then the seccomp filter, after the last setup syscall.
    process::reset_signals();
    rearm_parent_death()?;
    install_seccomp(seccomp)?;
    // 13. With init, fork: the child becomes the command, we stay as pid 1. Our copy of the
    //     error pipe is closed so that the parent's EOF still means "the command runs".
    if init {
        // SAFETY: we are single-threaded; the child only goes on to execve.
        match unsafe { nix::unistd::fork() } {
            Ok(nix::unistd::ForkResult::Parent { child }) => {
                let _ = nix::unistd::close(unsafe { std::os::fd::OwnedFd::from_raw_fd(ERROR_FD) });
                init::run(child)
            }
            Ok(nix::unistd::ForkResult::Child) => {}
            Err(e) => {
                return Err(SetupError::io(
                    Stage::Exec,
                    "fork for init",
                    &io::Error::from(e),
                ))
            }
        }
    }
    // 14. execve (the caller).
    Ok(exe)
}

/// An exec: we were born in the container's pid namespace (the spawner saw to that) and in its
/// cgroup; join the rest of its namespaces, then become the command as a container's first
/// process would. setns into the mount namespace also moves our root and working directory to
/// the container's root, so there is nothing to pivot.
fn run_exec(plan: &ExecPlan) -> Result<std::convert::Infallible, SetupError> {
    // The user namespace first (it owns the others), the mount namespace last of all: after it,
    // /proc/<target> of the host is out of reach.
    let kinds = [
        ("user", libc::CLONE_NEWUSER),
        ("cgroup", libc::CLONE_NEWCGROUP),
        ("ipc", libc::CLONE_NEWIPC),
        ("uts", libc::CLONE_NEWUTS),
        ("net", libc::CLONE_NEWNET),
        ("mnt", libc::CLONE_NEWNS),
    ];
    let mut files = Vec::new();
    for (name, kind) in kinds {
        let theirs = format!("/proc/{}/ns/{name}", plan.target);
        let ours = format!("/proc/self/ns/{name}");
        let same = match (std::fs::metadata(&theirs), std::fs::metadata(&ours)) {
            (Ok(a), Ok(b)) => {
                use std::os::unix::fs::MetadataExt;
                a.ino() == b.ino() && a.dev() == b.dev()
            }
            (Err(e), _) => {
                return Err(SetupError::io(
                    Stage::Namespaces,
                    format!("the container's {name} namespace ({theirs}; has it exited?)"),
                    &e,
                ))
            }
            _ => false,
        };
        if !same {
            let f = std::fs::File::open(&theirs)
                .map_err(|e| SetupError::io(Stage::Namespaces, format!("opening {theirs}"), &e))?;
            files.push((f, kind, theirs));
        }
    }
    for (f, kind, path) in &files {
        // SAFETY: setns on a descriptor we own.
        if unsafe { libc::setns(f.as_raw_fd(), *kind) } != 0 {
            let e = io::Error::last_os_error();
            return Err(SetupError::io(
                Stage::Namespaces,
                format!("joining {path}"),
                &e,
            ));
        }
    }
    drop(files);
    new_session()?;
    if plan.process.terminal {
        console::setup(0)?;
    }
    Err(become_command(&plan.process, plan.seccomp.as_ref(), false))
}

/// The seccomp filter, last of all: nothing of the setup is filtered, only the command (and,
/// with init, pyrt's init, which needs only wait, kill and exit).
fn install_seccomp(p: Option<&Program>) -> Result<(), SetupError> {
    match p {
        Some(p) => crate::seccomp::install(p)
            .map_err(|e| SetupError::io(Stage::Seccomp, "installing the seccomp filter", &e)),
        None => Ok(()),
    }
}

fn join_namespaces(plan: &Plan) -> Result<(), SetupError> {
    for (bit, path) in &plan.join {
        let f = std::fs::File::open(path).map_err(|e| {
            SetupError::io(
                Stage::Namespaces,
                format!("opening namespace {}", path.display()),
                &e,
            )
        })?;
        // SAFETY: setns on a descriptor we own.
        if unsafe { libc::setns(f.as_raw_fd(), *bit as libc::c_int) } != 0 {
            let e = io::Error::last_os_error();
            return Err(SetupError::io(
                Stage::Namespaces,
                format!("joining namespace {}", path.display()),
                &e,
            ));
        }
    }
    Ok(())
}

fn new_session() -> Result<(), SetupError> {
    nix::unistd::setsid()
        .map(|_| ())
        .map_err(|e| SetupError::io(Stage::Namespaces, "setsid", &io::Error::from(e)))
}

/// setgroups(2) is refused in a user namespace whose setgroups file says "deny".
fn setgroups_allowed() -> bool {
    !matches!(std::fs::read_to_string("/proc/self/setgroups"), Ok(s) if s.trim() == "deny")
}

fn rearm_parent_death() -> Result<(), SetupError> {
    nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)
        .map_err(|e| SetupError::io(Stage::Exec, "PR_SET_PDEATHSIG", &io::Error::from(e)))?;
    // SAFETY: PLAN_FD stays open for our lifetime; borrowed only for the poll.
    let lifeline = unsafe { std::os::fd::BorrowedFd::borrow_raw(PLAN_FD) };
    let mut fds = [nix::poll::PollFd::new(
        lifeline.as_fd(),
        nix::poll::PollFlags::POLLIN,
    )];
    let _ = nix::poll::poll(&mut fds, nix::poll::PollTimeout::ZERO);
    let hung_up = fds[0].revents().is_some_and(|r| {
        r.intersects(nix::poll::PollFlags::POLLHUP | nix::poll::PollFlags::POLLERR)
    });
    if hung_up {
        // The parent is gone: the container must not outlive it.
        std::process::exit(137);
    }
    Ok(())
}
