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

pub mod cgroupfs;
mod console;
mod devices;
pub mod gate;
mod init;
mod inroot;
mod join;
pub mod network;
mod process;
pub mod rootfs;
mod serve;
mod stage1;

use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};

use std::path::PathBuf;

use crate::plan::{ExecPlan, Plan, Process, Request, RootSource};
use crate::report::{SetupError, Stage};
use crate::seccomp::Program;
use crate::syscall;

use crate::wire::{ERROR_FD, PLAN_FD};
/// The start gate's socket name in a `pyrt-runc` container's state directory.
pub const GATE_SOCKET: &str = gate::SOCKET_NAME;

/// Entry point of `pyrt-child`. Never returns: it becomes the container's command or exits.
/// Where a re-executed pyrt-child finds its plan (see `reexec_in_userns`).
const REEXEC_PLAN_FD: i32 = 6;
const REEXEC_ARG: &str = "--plan-in-fd-6";

/// pyrt-child's first argument when it is a first stage (`stage1`), followed by its own.
pub const FIRST_STAGE_ARG: &str = "--first-stage";

pub fn main() -> ! {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some(FIRST_STAGE_ARG) {
        stage1::run(&args[2..]);
    }
    let reexeced = args.get(1).map(String::as_str) == Some(REEXEC_ARG);
    handle(reexeced)
}

/// What pyrt-child does with its descriptors in place (fds 0-5, as the module says): read the
/// request and carry it out. Also the way on of an exec server's fork (`serve`).
fn handle(reexeced: bool) -> ! {
    for fd in [PLAN_FD, ERROR_FD, crate::wire::STATUS_FD] {
        // SAFETY: fcntl on a descriptor number; failure is harmless here.
        unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
    }
    // Setup creates files and device nodes with exactly the modes it names (0666 for /dev/null);
    // the command's own umask is set later, from the spec (022 when it names none).
    nix::sys::stat::umask(nix::sys::stat::Mode::empty());
    let result = read_request(if reexeced { REEXEC_PLAN_FD } else { PLAN_FD });
    if let Ok((request, _)) = &result {
        // Nothing but our descriptors, and those the plan says were handed down, may reach the
        // container, whatever the parent held open.
        let handed = match request {
            Request::Create(plan) => plan.inherited_fds(),
            Request::Exec(plan) => plan.pidfd.into_iter().collect(),
            Request::Forward(f) => f.fds(),
            Request::Serve(f) => f.fds(),
        };
        let _ = syscall::close_from_except(6, &handed);
    }
    let result = result.and_then(|(request, bytes)| match request {
        Request::Create(plan) if plan.id_maps.is_some() && !reexeced && !namespace_root() => {
            reexec_in_userns(&bytes)
        }
        Request::Create(plan) => run(&plan),
        Request::Exec(plan) => run_exec(&plan),
        Request::Forward(f) => crate::host::portfwd::run_helper(&f),
        Request::Serve(f) => serve::run(&f),
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

/// The request, and its bytes as they came (length prefix included).
fn read_request(fd: i32) -> Result<(Request, Vec<u8>), SetupError> {
    // SAFETY: the descriptor is ours; ManuallyDrop keeps PLAN_FD open as the lifeline after
    // reading (a re-executed child closes its plan memfd below).
    let mut f = std::mem::ManuallyDrop::new(unsafe { std::fs::File::from_raw_fd(fd) });
    let bad = |e: io::Error| SetupError::io(Stage::Plan, "reading the plan from the parent", &e);
    let mut len = [0u8; 4];
    f.read_exact(&mut len).map_err(bad)?;
    let mut buf = vec![0u8; u32::from_le_bytes(len) as usize];
    f.read_exact(&mut buf).map_err(bad)?;
    if fd != PLAN_FD {
        // SAFETY: the re-exec's plan memfd, read and no longer needed.
        unsafe { libc::close(fd) };
    }
    let request = serde_json::from_slice(&buf).map_err(|e| {
        SetupError::new(Stage::Plan, libc::EINVAL, format!("decoding the plan: {e}"))
    })?;
    let mut bytes = len.to_vec();
    bytes.extend_from_slice(&buf);
    Ok((request, bytes))
}

/// Whether this process executed as its user namespace's root with every capability: a root
/// caller's child waits for its maps and becomes 0 before it executes (`spawn`'s setid), so
/// only a child executed before its maps (a rootless caller's) must execute again.
fn namespace_root() -> bool {
    caps::has_cap(
        None,
        caps::CapSet::Effective,
        caps::Capability::CAP_SYS_ADMIN,
    )
    .unwrap_or(false)
}

/// In a new user namespace, pyrt-child was executed before the parent wrote the id maps, when
/// its uid meant nobody there: execve gave it no capabilities. Now that the maps are in place
/// (the parent writes them before the plan), executing itself again makes it root of the
/// namespace with every capability, as a process that never exec'd after clone would be. The
/// plan goes along in a memfd; /proc/self/exe is the same sealed memfd as before.
fn reexec_in_userns(bytes: &[u8]) -> Result<std::convert::Infallible, SetupError> {
    let err = |what: &str, e: io::Error| SetupError::io(Stage::Namespaces, what, &e);
    // SAFETY: a valid name; the result is checked.
    let fd = unsafe { libc::syscall(libc::SYS_memfd_create, c"pyrt-plan".as_ptr(), 0) };
    if fd < 0 {
        return Err(err("memfd for the plan", io::Error::last_os_error()));
    }
    let fd = fd as i32;
    // SAFETY: our new descriptor, wrapped without closing it.
    let mut f = std::mem::ManuallyDrop::new(unsafe { std::fs::File::from_raw_fd(fd) });
    f.write_all(bytes)
        .map_err(|e| err("writing the plan to its memfd", e))?;
    // SAFETY: plain descriptor calls on our own descriptors.
    unsafe {
        // The protocol's descriptors must survive this exec (main made them close-on-exec).
        for keep in [PLAN_FD, ERROR_FD, crate::wire::STATUS_FD] {
            libc::fcntl(keep, libc::F_SETFD, 0);
        }
        libc::lseek(fd, 0, libc::SEEK_SET);
        if fd != REEXEC_PLAN_FD {
            if libc::dup2(fd, REEXEC_PLAN_FD) < 0 {
                return Err(err("dup2 of the plan memfd", io::Error::last_os_error()));
            }
            libc::close(fd);
        }
    }
    let argv = [
        c"pyrt-child".as_ptr(),
        c"--plan-in-fd-6".as_ptr(),
        std::ptr::null(),
    ];
    let envp: [*const libc::c_char; 1] = [std::ptr::null()];
    // SAFETY: valid NUL-terminated arrays; on success this does not return.
    unsafe { libc::execve(c"/proc/self/exe".as_ptr(), argv.as_ptr(), envp.as_ptr()) };
    Err(err(
        "executing pyrt-child again in its user namespace",
        io::Error::last_os_error(),
    ))
}

fn run(plan: &Plan) -> Result<std::convert::Infallible, SetupError> {
    // What was handed down is used before pivot_root and must never reach the command.
    for fd in plan.inherited_fds() {
        // SAFETY: fcntl on a descriptor the parent handed down.
        unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
    }
    // 0. A session of our own: a container given the caller's terminal as stdio has it as no
    //    controlling terminal, so it cannot push keystrokes into the caller's shell with TIOCSTI
    //    (CVE-2017-5226, bubblewrap's --new-session).
    new_session()?;
    // 0b. In a user namespace, v1 cgroup hierarchies are bound rather than mounted (step 4):
    //     note where ours are while /proc/self/cgroup still names them.
    if plan.in_user_namespace() {
        cgroupfs::remember_own_cgroups();
    }
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
    // 2. Nothing we mount may propagate to the host. A root or mount that asks to receive the
    //    host's mounts (slave or shared propagation) gets a namespace that is the host's slave.
    rootfs::make_private(plan.receives_host_mounts())?;
    // 3. The root: a bind of the image directory, an overlay of its layers, or the host's "/".
    let root = rootfs::mount_root(&plan.root)?;
    rootfs::refuse_special_symlinks(&root)?;
    // 4. The spec's mounts in order (/proc, /dev, /dev/pts, ..., binds, tmpfs), each target
    //    resolved inside the root.
    // SAFETY: the detached tree the parent handed down for the cgroup mount, ours alone.
    let mut cgroup_tree = plan
        .cgroup_tree_fd
        .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) });
    for m in &plan.mounts {
        rootfs::mount_one(&root, m, plan.host_cgroups.as_deref(), &mut cgroup_tree)?;
    }
    // (Closed if no mount took it: nothing handed down may reach the command.)
    drop(cgroup_tree);
    // 5. Device nodes and symlinks of a fresh /dev, while the host's nodes are still reachable.
    if plan.default_devices {
        devices::populate(&root)?;
    }
    devices::create(&root, &plan.devices)?;
    // 5b. A missing working directory is made inside the root (Docker's rule). A failure (a
    //     read-only root, a path through a file) is left for step 10, whose chdir error names it.
    if plan.create_cwd {
        let _ = inroot::ensure_in_root(&root, &plan.process.cwd, false);
    }
    // 5c. Sysctls, before /proc/sys may be made read-only below: the files of the namespaced
    //     ones act on the namespaces of the writer, which are the container's already.
    //     Written through the container's own /proc (inside the root), so that a mount
    //     shadowing the file there is refused rather than written (CVE-2025-52881).
    for (k, v) in &plan.sysctl {
        let path = format!("/proc/sys/{}", k.replace('.', "/"));
        let inside = format!("/proc/self/fd/{}{path}", root.as_raw_fd());
        process::write_proc(&inside, v).map_err(|e| match e.raw_os_error() {
            Some(libc::EXDEV) => SetupError::new(
                Stage::Sysctl,
                libc::EXDEV,
                format!("sysctl {k}: {path} is not on a procfs (something is mounted over it); refusing to write it"),
            ),
            _ => SetupError::io(Stage::Sysctl, format!("sysctl {k}={v}"), &e),
        })?;
    }
    // 6. Masked and read-only paths, in the container's /proc and /sys mounted above.
    rootfs::mask_and_protect(&root, &plan.masked_paths, &plan.readonly_paths)?;
    // 6b. pyrt-runc: the start gate's listening socket, which the parent bound; then, with
    //     hooks, stop for the parent's createRuntime/prestart hooks and run the createContainer
    //     hooks here, in the container's namespaces, before pivot_root.
    // SAFETY: the listening socket the parent handed down (`Plan::gate_fd`), ours alone now.
    let gate = plan.gate_fd.map(|fd| unsafe { OwnedFd::from_raw_fd(fd) });
    let state = if plan.hooks.sync {
        sync_with_parent()?
    } else {
        String::new()
    };
    crate::hooks::run_all(&plan.hooks.create_container, &state)
        .map_err(|e| SetupError::new(Stage::Hooks, libc::EIO, format!("createContainer {e}")))?;
    // 7. Swap roots; the host's tree is detached and unreachable from here on.
    rootfs::pivot(&root)?;
    drop(root);
    // 7a. The root's propagation, as the spec asks (made private in step 2, it can now only
    //     be shared with mounts of this namespace, never with the host's).
    if plan.root_propagation != 0 {
        rootfs::set_root_propagation(plan.root_propagation)?;
    }
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
    // 10-14: the process itself, shared with exec.
    let how = Finish {
        seccomp: plan.seccomp.as_ref(),
        init: plan.init,
        idle: plan.init && plan.idle,
        detached: plan.detached,
        gate: gate
            .as_ref()
            .map(|g| (g, plan.hooks.start_container.as_slice(), state.as_str())),
    };
    Err(become_command(&plan.process, how))
}

/// How a process ends its setup: its filter, whether an init stays, and for `pyrt-runc` whether
/// it outlives its parent and waits at the start gate first.
struct Finish<'a> {
    seccomp: Option<&'a Program>,
    init: bool,
    /// With `init`: no command; pid 1 idles (`init::idle`).
    idle: bool,
    detached: bool,
    gate: Option<(&'a std::os::fd::OwnedFd, &'a [crate::hooks::Hook], &'a str)>,
}

/// Stops before pivot_root: tells the parent (the sync record on the error pipe) and reads the
/// state JSON it answers with, once its own hooks have run. EOF: the parent gave up.
fn sync_with_parent() -> Result<String, SetupError> {
    // SAFETY: our descriptors, borrowed for a write and a read.
    let mut report = std::mem::ManuallyDrop::new(unsafe { std::fs::File::from_raw_fd(ERROR_FD) });
    let mut plan = std::mem::ManuallyDrop::new(unsafe { std::fs::File::from_raw_fd(PLAN_FD) });
    let bad = |e: io::Error| SetupError::io(Stage::Hooks, "waiting for the runtime's hooks", &e);
    report.write_all(crate::wire::SYNC_RECORD).map_err(bad)?;
    let mut len = [0u8; 4];
    if plan.read_exact(&mut len).is_err() {
        std::process::exit(127);
    }
    let mut buf = vec![0u8; u32::from_le_bytes(len) as usize];
    plan.read_exact(&mut buf).map_err(bad)?;
    Ok(String::from_utf8_lossy(&buf).into_owned())
}

/// The last steps, for a container's command and an exec alike; returns only on failure.
fn become_command(p: &Process, how: Finish) -> SetupError {
    match prepare_command(p, how) {
        Ok(exe) => process::exec(p, &exe),
        Err(e) => e,
    }
}

fn prepare_command(p: &Process, how: Finish) -> Result<PathBuf, SetupError> {
    let Finish {
        seccomp,
        init,
        idle,
        detached,
        gate,
    } = how;
    // 10. Process attributes: rlimits, then user and capabilities, then the working directory
    //     (as the user, so its permissions apply), then the executable's lookup.
    process::rlimits(p)?;
    // Without no_new_privs, installing a filter needs CAP_SYS_ADMIN: do it now, before the
    // capabilities go (runc's order); with it, as late as possible (step 12).
    let seccomp_early = !p.no_new_privs;
    if seccomp_early {
        install_seccomp(seccomp)?;
    }
    process::switch_user(p, setgroups_allowed())?;
    process::enter_cwd(p)?;
    // An idle init executes nothing: the command need not exist in the image.
    let exe = if idle {
        PathBuf::new()
    } else {
        process::lookup(p)?
    };
    // 11. no_new_privs.
    process::no_new_privs(p)?;
    // 12. Signals as after boot; then make sure we die with the parent: a change of credentials
    //     cleared the parent-death signal that clone's child set, so it is set again here and
    //     the lifeline checked after, which closes the window in which the parent may have
    //     died. Then the seccomp filter, after the last setup syscall.
    process::reset_signals();
    if !detached {
        rearm_parent_death()?;
    }
    // 12b. pyrt-runc: wait for `start` (and run the startContainer hooks).
    if let Some((listener, hooks, state)) = gate {
        gate::wait(listener, hooks, state)?;
    }
    if !seccomp_early {
        install_seccomp(seccomp)?;
    }
    // 13. With init, fork: the child becomes the command, we stay as pid 1. Our copy of the
    //     error pipe is closed so that the parent's EOF still means "the command runs". An
    //     idle init forks nothing: the container is running once setup is done.
    if idle {
        // Signals blocked before the caller hears "running": a pid 1 drops a signal it has no
        // handler for unless it is blocked (then sigwait takes it), so a SIGTERM sent right
        // after start() returned would otherwise be lost.
        init::block_signals();
        let _ = nix::unistd::close(unsafe { std::os::fd::OwnedFd::from_raw_fd(ERROR_FD) });
        init::idle()
    }
    if init {
        // SAFETY: we are single-threaded; the child only goes on to execve.
        match unsafe { nix::unistd::fork() } {
            Ok(nix::unistd::ForkResult::Parent { child }) => {
                init::block_signals(); // (as above, for the signals init forwards)
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
    if !plan.joined {
        join::container_namespaces(plan)?;
    }
    new_session()?;
    if plan.process.terminal {
        console::setup(0)?;
    }
    // With the pid namespace joined here, fork: the command is born inside it, and we stay
    // outside to pass its wait status on (the init path does exactly that).
    Err(become_command(
        &plan.process,
        Finish {
            seccomp: plan.seccomp.as_ref(),
            init: plan.fork_into_pidns,
            idle: false,
            detached: plan.detached,
            gate: None,
        },
    ))
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
    let paths: Vec<(libc::c_int, &std::path::Path)> = plan
        .join
        .iter()
        .map(|(bit, path)| (*bit as libc::c_int, path.as_path()))
        .collect();
    join::by_paths(&paths)
}

fn new_session() -> Result<(), SetupError> {
    nix::unistd::setsid()
        .map(|_| ())
        .map_err(|e| SetupError::io(Stage::Namespaces, "setsid", &io::Error::from(e)))
}

/// setgroups(2) is refused in a user namespace whose setgroups file says "deny". Read once
/// per process: an exec server reads it when it has joined the container (its user namespace
/// is set up by then, and the answer cannot change), and its forks inherit the answer.
fn setgroups_allowed() -> bool {
    static ALLOWED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ALLOWED.get_or_init(
        || !matches!(std::fs::read_to_string("/proc/self/setgroups"), Ok(s) if s.trim() == "deny"),
    )
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
