//! The parent side of starting a container.
//!
//! # Design
//!
//! The caller is a live, multithreaded Python interpreter, so the process that `clone` makes must
//! not allocate, take a lock or touch Python before it executes something else, and what it
//! executes must never be the host's interpreter (CVE-2019-5736: a container that can reach
//! `/proc/self/exe` of a process running the host's binary can overwrite that binary).
//!
//! 1. A dedicated, long-lived *spawner thread* makes every container. `PR_SET_PDEATHSIG` fires
//!    when the parent *thread* exits, so cloning from whatever Python thread called us would kill
//!    a detached container as soon as, say, a thread pool's worker went away. The spawner thread
//!    lives as long as the process and keeps every signal blocked, so no signal handler of the
//!    interpreter can run in the clone child while it shares the parent's memory.
//! 2. It calls glibc's `clone` with `CLONE_VM | CLONE_VFORK` on a separate stack, plus the
//!    `CLONE_NEW*` flags of the plan and `CLONE_PIDFD`: no page tables are copied (a plain fork
//!    of a large interpreter costs ~20 ms) and the parent thread sleeps until the child execs.
//! 3. The child runs `child_fn`: only raw syscalls on memory prepared beforehand (set the parent
//!    death signal, dup2 six descriptors into place, `execveat`). It executes `pyrt-child`
//!    from a *sealed memfd*: a copy of the small static binary embedded in the extension, sealed
//!    against writes, growing and shrinking. Through `/proc/self/exe` the container can only ever
//!    reach that memfd, which cannot be written.
//! 4. `pyrt-child` is a fresh, single-threaded process image: it reads the plan from a pipe, sets
//!    the container up (`child::run`) and executes the command. Failures come back as a record on
//!    a close-on-exec pipe; EOF with no record means the command is running.
//!
//! The exit signal is 0, not SIGCHLD: only a wait with `__WALL` sees these children, so a Python
//! program's own `os.wait()` or a subprocess reaper cannot steal a container's exit status.

use std::borrow::Cow;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::mpsc;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use crate::cgroups::{Cgroup, CgroupError};
use crate::plan::{Plan, Request};
use crate::report::{strerror, SetupError, Stage};
use crate::wire::{self, ERROR_FD, SYNC_RECORD};

/// The `pyrt-child` binary, in a sealed memfd that every container is started from.
pub struct ChildImage {
    fd: OwnedFd,
}

const MFD_EXEC: libc::c_uint = 0x10;
const F_SEAL_EXEC: libc::c_int = 0x20;

impl ChildImage {
    pub fn from_bytes(bytes: &[u8]) -> io::Result<ChildImage> {
        let name = c"pyrt-child";
        let base = libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING;
        // MFD_EXEC (Linux 6.3) asks for an executable memfd explicitly, which a system with
        // vm.memfd_noexec=1 would otherwise refuse; older kernels reject the flag: retry without.
        // The raw syscall, not glibc's wrapper (glibc 2.27): the wheel promises glibc 2.17.
        let memfd = |flags: libc::c_uint| -> i32 {
            // SAFETY: memfd_create with a valid NUL-terminated name.
            unsafe { libc::syscall(libc::SYS_memfd_create, name.as_ptr(), flags) as i32 }
        };
        let mut fd = memfd(base | MFD_EXEC);
        if fd < 0 {
            fd = memfd(base);
        }
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: the kernel just gave us this descriptor.
        let mut file = unsafe { std::fs::File::from_raw_fd(fd) };
        file.write_all(bytes)?;
        let seals =
            libc::F_SEAL_SEAL | libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_WRITE;
        // SAFETY: fcntl on our descriptor.
        if unsafe { libc::fcntl(file.as_raw_fd(), libc::F_ADD_SEALS, seals | F_SEAL_EXEC) } != 0
            && unsafe { libc::fcntl(file.as_raw_fd(), libc::F_ADD_SEALS, seals) } != 0
        {
            return Err(io::Error::last_os_error());
        }
        // Above FD_FLOOR, like every descriptor the clone child reads: its dup2 into 0..=5 must
        // not overwrite the image it is about to execute.
        let fd = dup_high(file.as_raw_fd())?;
        Ok(ChildImage { fd })
    }

    pub fn raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

/// What `child_fn` needs, prepared before clone: plain integers and pointers into memory that
/// stays alive until the child has executed (the parent thread sleeps until then).
#[repr(C)]
struct ChildArgs {
    /// Sources for fds 0..=5, each >= FD_FLOOR so dup2 into 0..=5 cannot clobber a later source.
    fds: [RawFd; 6],
    exe_fd: RawFd,
    argv: *const *const libc::c_char,
    envp: *const *const libc::c_char,
    /// Where a failure of execveat itself is reported (the child's copy of the error pipe).
    report_fd: RawFd,
    /// Die with the parent (not for a container that must outlive `pyrt-runc create`).
    pdeathsig: bool,
    /// With a user namespace whose root is not the caller (a root caller mapping the container
    /// to a subordinate range): a pipe to wait on until the maps are written, then become the
    /// namespace's root before executing (see `needs_setid`). -1 otherwise.
    setid_fd: RawFd,
    /// Descriptors handed down beyond the six (`Plan::inherited_fds`): the child clears their
    /// close-on-exec flag in its own descriptor table. Each is >= FD_FLOOR.
    keep: *const RawFd,
    keep_len: usize,
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

struct Job {
    flags: libc::c_int,
    args: *const ChildArgs,
    /// cgroup v1 `tasks` files to enter before clone and to return to after it.
    enter: Vec<RawFd>,
    leave: Vec<RawFd>,
    /// For an exec: the container's pid namespace, which the child must be born in.
    pidns: Option<RawFd>,
    /// A network namespace the child must be born in (`prejoin_net`).
    netns: Option<RawFd>,
    /// Without CLONE_VFORK (a child that waits for its maps): EOF here once the child has
    /// executed or died, until when its stack must not be reused.
    exec_wait: Option<OwnedFd>,
    reply: mpsc::SyncSender<io::Result<(i32, OwnedFd)>>,
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
    pidns: RawFd,
    netns: RawFd,
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

fn spawner() -> &'static Mutex<mpsc::Sender<Job>> {
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
                // The child's stack: only child_fn and the libc wrappers it calls run on it.
                let mut stack = vec![0u8; 256 * 1024];
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
fn wait_eof(fd: RawFd) {
    let mut buf = [0u8; 16];
    loop {
        // SAFETY: reading into a local buffer from a descriptor we own.
        let n = unsafe { libc::read(fd, buf.as_mut_ptr() as *mut libc::c_void, buf.len()) };
        if n == 0 || (n < 0 && io::Error::last_os_error().raw_os_error() != Some(libc::EINTR)) {
            return;
        }
    }
}

/// The network namespace the spawner thread steps into for the clone, so that the child is
/// born in it, and the request adjusted for that:
///
/// - A child in a new user namespace has no capability over a network namespace of the host's
///   user namespace, so it cannot join one (a root caller's sandboxed container sharing another
///   container's network): the join is taken out of the plan and done this way instead.
/// - A plan that makes a new network namespace (and no user namespace) gets a ready one from
///   the pool (`host::netns::take_ready`) when there is one: its `lo` is up already.
fn prejoin_net(request: &Request) -> Result<(Cow<'_, Request>, Option<OwnedFd>), SetupError> {
    let newuser = libc::CLONE_NEWUSER as u64;
    let newnet = libc::CLONE_NEWNET as u64;
    let Request::Create(p) = request else {
        return Ok((Cow::Borrowed(request), None));
    };
    if p.clone_flags & newnet != 0 && p.clone_flags & newuser == 0 {
        let Some(ns) = crate::host::netns::take_ready() else {
            return Ok((Cow::Borrowed(request), None));
        };
        let mut p = p.clone();
        p.clone_flags &= !newnet;
        p.loopback = false;
        return Ok((Cow::Owned(Request::Create(p)), Some(ns)));
    }
    if !p.join.iter().any(|(bit, _)| *bit == newnet) || p.clone_flags & newuser == 0 {
        return Ok((Cow::Borrowed(request), None));
    }
    let mut p = p.clone();
    let ns = take_join(&mut p, newnet)?;
    Ok((Cow::Owned(Request::Create(p)), ns))
}

/// Takes the namespace of type `bit` out of the plan's joins, opened, for the spawner to step
/// into before the clone (None: the plan joins no such namespace).
pub(crate) fn take_join(plan: &mut Plan, bit: u64) -> Result<Option<OwnedFd>, SetupError> {
    let Some(i) = plan.join.iter().position(|(b, _)| *b == bit) else {
        return Ok(None);
    };
    let (_, path) = plan.join.remove(i);
    let f = std::fs::File::open(&path).map_err(|e| {
        SetupError::io(
            Stage::Namespaces,
            format!("opening namespace {}", path.display()),
            &e,
        )
    })?;
    Ok(Some(OwnedFd::from(f)))
}

/// Descriptors the child inherits, put in the plan (`Plan::inherited_fds`): `pyrt-runc
/// create`'s start gate, and each idmapped bind mount, made here detached (`host::idmount`).
fn hand_down<'r>(
    request: Cow<'r, Request>,
    gate: Option<&OwnedFd>,
) -> Result<(Cow<'r, Request>, Vec<OwnedFd>), SetupError> {
    let needs = match request.as_ref() {
        Request::Create(p) => gate.is_some() || p.mounts.iter().any(|m| m.idmap.is_some()),
        Request::Exec(_) => false,
    };
    if !needs {
        return Ok((request, Vec::new()));
    }
    let mut request = request.into_owned();
    let Request::Create(p) = &mut request else {
        unreachable!("only a create hands descriptors down")
    };
    let mut held = Vec::new();
    if let Some(g) = gate {
        let fd = dup_high(g.as_raw_fd()).map_err(|e| spawn_err("dup of the start gate", e))?;
        p.gate_fd = Some(fd.as_raw_fd());
        held.push(fd);
    }
    // One user namespace per distinct mapping, for as long as the mounts are being made.
    let mut namespaces: Vec<(crate::plan::IdMaps, OwnedFd)> = Vec::new();
    for (i, m) in p.mounts.iter_mut().enumerate() {
        let (Some(idmap), crate::plan::MountKind::Bind { source, recursive }) =
            (m.idmap.as_mut(), &m.kind)
        else {
            continue;
        };
        let what = |e: io::Error| {
            SetupError::new(
                Stage::Mount,
                e.raw_os_error().unwrap_or(libc::EINVAL),
                format!("mounts[{i}] ({}): {e}", m.destination.display()),
            )
        };
        let ns = match namespaces.iter().position(|(maps, _)| *maps == idmap.maps) {
            Some(k) => k,
            None => {
                let ns = crate::host::idmount::userns_with(&idmap.maps).map_err(|e| {
                    what(io::Error::new(
                        e.kind(),
                        format!("a user namespace for the mapping: {e}"),
                    ))
                })?;
                namespaces.push((idmap.maps.clone(), ns));
                namespaces.len() - 1
            }
        };
        let fd = crate::host::idmount::detached(source, *recursive, idmap, &namespaces[ns].1)
            .and_then(|tree| dup_high(tree.as_raw_fd()))
            .map_err(what)?;
        idmap.fd = Some(fd.as_raw_fd());
        held.push(fd);
    }
    Ok((Cow::Owned(request), held))
}

/// Whether the child must become its user namespace's root itself: a caller whose map gives
/// the namespace's 0 to another id (root mapping the container to a subordinate range, or a
/// user to one of theirs through newuidmap). A caller mapped as 0 is that root already.
fn needs_setid(request: &Request) -> bool {
    let Request::Create(p) = request else {
        return false;
    };
    let Some(maps) = &p.id_maps else { return false };
    // SAFETY: geteuid cannot fail.
    let euid = unsafe { libc::geteuid() };
    let root_of = |r: &[(u32, u32, u32)]| r.iter().find(|(i, _, _)| *i == 0).map(|(_, o, _)| *o);
    matches!(root_of(&maps.uid), Some(r) if r != euid)
}

/// Writes "0" into each cgroup v1 `tasks` file: moves the calling thread alone, which skips the
/// thread-group lock (and its RCU wait) that moving a whole process takes.
fn move_self(files: &[RawFd]) -> io::Result<()> {
    for fd in files {
        // SAFETY: writing two bytes from a static buffer to a descriptor the job owns.
        if unsafe { libc::write(*fd, b"0\n".as_ptr() as *const libc::c_void, 2) } < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// A started process: a container's first process, or one exec'd into a container.
#[derive(Debug)]
pub struct Child {
    pub pid: i32,
    pub pidfd: OwnedFd,
    /// The write end of the plan pipe, kept open: the child checks it to learn whether we died.
    _lifeline: OwnedFd,
    /// Where an init (pid 1) reports the command's real wait status.
    status_pipe: OwnedFd,
    /// The return code once reaped. Behind a lock, so that a `Child` can be waited for,
    /// signalled and asked from several threads at once (the reap itself is made under it).
    status: std::sync::Mutex<Option<i32>>,
}

fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(io::Error::from)
}

fn dup_high(fd: RawFd) -> io::Result<OwnedFd> {
    // SAFETY: F_DUPFD_CLOEXEC returns a new descriptor or -1.
    let r = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, FD_FLOOR) };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        // SAFETY: just created.
        Ok(unsafe { OwnedFd::from_raw_fd(r) })
    }
}

fn spawn_err(what: &str, e: io::Error) -> SetupError {
    SetupError::io(Stage::Spawn, what, &e)
}

/// Where the new process goes: its cgroup (not owned: the caller creates and destroys it) and,
/// for an exec, the pid namespace of the container it joins.
#[derive(Default)]
pub struct Placement<'a> {
    pub cgroup: Option<&'a Cgroup>,
    pub pidns: Option<&'a OwnedFd>,
    /// `pyrt-runc create`: the listening socket `start` connects to, handed to the child.
    pub gate: Option<&'a OwnedFd>,
}

/// Starts a new container (`Request::Create`) or a process in a running one
/// (`Request::Exec`), with the given stdio descriptors (which stay the caller's). Returns once
/// the command is running, or the setup error with its stage and errno.
pub fn spawn(
    image: &ChildImage,
    request: &Request,
    stdio: [RawFd; 3],
    place: Placement,
) -> Result<Child, SetupError> {
    let (child, pending) = spawn_held(image, request, stdio, place)?;
    release(&child, pending)?;
    Ok(child)
}

/// What `release` still has to send and read.
#[derive(Debug)]
pub struct Pending {
    request: Vec<u8>,
    report: OwnedFd,
}

/// Like `spawn`, but stops before the plan is sent: the process exists, in its namespaces (and
/// its user namespace's maps are written), and waits. The caller may prepare what must exist
/// before the command runs (a rootless container's network, attached to its namespace), then
/// calls `release`.
pub fn spawn_held(
    image: &ChildImage,
    request: &Request,
    stdio: [RawFd; 3],
    place: Placement,
) -> Result<(Child, Pending), SetupError> {
    let cg_err = |e: CgroupError| SetupError::new(Stage::Cgroup, e.errno(), e.to_string());
    let (enter, leave) = match place.cgroup {
        Some(c) => (
            c.tasks_files(false).map_err(cg_err)?,
            c.tasks_files(true).map_err(cg_err)?,
        ),
        None => (Vec::new(), Vec::new()),
    };
    let (request, netns) = prejoin_net(request)?;
    let (request, handed) = hand_down(request, place.gate)?;
    let request = request.as_ref();
    let keep: Vec<RawFd> = handed.iter().map(|f| f.as_raw_fd()).collect();
    let request_bytes = serde_json::to_vec(request).map_err(|e| {
        SetupError::new(Stage::Plan, libc::EINVAL, format!("encoding the plan: {e}"))
    })?;
    let (plan_r, plan_w) = pipe().map_err(|e| spawn_err("pipe", e))?;
    let (err_r, err_w) = pipe().map_err(|e| spawn_err("pipe", e))?;
    let (status_r, status_w) = pipe().map_err(|e| spawn_err("pipe", e))?;
    // SAFETY: fcntl on our own descriptor; the parent reads it only after the child is reaped.
    unsafe { libc::fcntl(status_r.as_raw_fd(), libc::F_SETFL, libc::O_NONBLOCK) };
    let mut sources = Vec::with_capacity(6);
    for fd in [
        stdio[0],
        stdio[1],
        stdio[2],
        plan_r.as_raw_fd(),
        err_w.as_raw_fd(),
        status_w.as_raw_fd(),
    ] {
        sources.push(dup_high(fd).map_err(|e| spawn_err("dup of a stdio descriptor", e))?);
    }
    drop((plan_r, err_w, status_w));
    // A child that becomes its namespace's root waits on `setid` for its maps; the parent
    // learns that it executed from `exec_done` (both close-on-exec in the child).
    let setid = if needs_setid(request) {
        let (go_r, go_w) = pipe().map_err(|e| spawn_err("pipe", e))?;
        let (done_r, done_w) = pipe().map_err(|e| spawn_err("pipe", e))?;
        let done_r2 = done_r
            .try_clone()
            .map_err(|e| spawn_err("dup of a pipe", e))?;
        Some((go_r, go_w, done_r, done_r2, done_w))
    } else {
        None
    };
    let argv: [*const libc::c_char; 2] = [c"pyrt-child".as_ptr(), std::ptr::null()];
    let envp: [*const libc::c_char; 1] = [std::ptr::null()];
    let args = ChildArgs {
        fds: [0, 1, 2, 3, 4, 5].map(|i| sources[i].as_raw_fd()),
        exe_fd: image.raw_fd(),
        argv: argv.as_ptr(),
        envp: envp.as_ptr(),
        report_fd: sources[4].as_raw_fd(),
        pdeathsig: match request {
            Request::Create(p) => !p.detached,
            Request::Exec(e) => !e.detached,
        },
        setid_fd: setid.as_ref().map_or(-1, |s| s.0.as_raw_fd()),
        keep: keep.as_ptr(),
        keep_len: keep.len(),
    };
    let clone_flags = match request {
        Request::Create(p) => p.clone_flags,
        Request::Exec(_) => 0,
    };
    // CLONE_VFORK would sleep the spawner until the child executes, and a child waiting for
    // its maps executes only after the parent has written them.
    let vfork = if setid.is_some() {
        0
    } else {
        libc::CLONE_VFORK
    };
    let flags = (clone_flags as libc::c_int) | libc::CLONE_VM | vfork | libc::CLONE_PIDFD;
    let (reply_tx, reply_rx) = mpsc::sync_channel(1);
    // The child gets its copies of these at clone; the pipe ends that are its own are closed
    // here after the reply (`setid_rest`).
    let (exec_done, setid_rest) = match setid {
        Some((go_r, go_w, done_r, done_r2, done_w)) => {
            (Some(done_r), Some((go_r, done_w, go_w, done_r2)))
        }
        None => (None, None),
    };
    let job = Job {
        flags,
        args: &args,
        enter: enter.iter().map(|f| f.as_raw_fd()).collect(),
        leave: leave.iter().map(|f| f.as_raw_fd()).collect(),
        pidns: place.pidns.map(|f| f.as_raw_fd()),
        netns: netns.as_ref().map(|f| f.as_raw_fd()),
        exec_wait: exec_done,
        reply: reply_tx,
    };
    let sent = spawner()
        .lock()
        .map(|tx| tx.send(job).is_ok())
        .unwrap_or(false);
    let gone = || io::Error::other("the pyrt-spawner thread is gone");
    let cloned = if sent {
        reply_rx.recv().unwrap_or_else(|_| Err(gone()))
    } else {
        Err(gone())
    };
    // The child has executed pyrt-child (or died), or, waiting for its maps, has its own copies
    // of the descriptors: ours can go.
    drop(sources);
    drop(handed);
    let setid_rest = setid_rest.map(|(go_r, done_w, go_w, done_r)| {
        drop((go_r, done_w));
        (go_w, done_r)
    });
    let (pid, pidfd) = cloned.map_err(|e| {
        let errno = e.raw_os_error().unwrap_or(libc::EIO);
        let hint = match errno {
            libc::EPERM => " (creating these namespaces needs privilege, or a user namespace)",
            libc::ENOSPC => " (a namespace limit in /proc/sys/user was reached)",
            libc::EINVAL => " (the kernel does not support one of the requested namespaces)",
            libc::ENOMEM if place.pidns.is_some() => " (the container's init has exited)",
            _ => "",
        };
        SetupError::new(
            Stage::Namespaces,
            errno,
            format!("clone: {}{hint}", strerror(errno)),
        )
    })?;
    let child = Child {
        pid,
        pidfd,
        _lifeline: plan_w,
        status_pipe: status_r,
        status: std::sync::Mutex::new(None),
    };
    // v2: into the cgroup before the child has its plan, so before the command's first
    // instruction. (v1: it was born there.)
    if let Some(cg) = place.cgroup {
        if let Err(e) = cg.place(pid) {
            let _ = child.kill(libc::SIGKILL);
            let _ = child.wait(None);
            return Err(cg_err(e));
        }
    }

    // A user namespace's maps, before the child has its plan (and so before it does anything).
    if let Request::Create(p) = request {
        if let Some(maps) = &p.id_maps {
            if let Err(e) = crate::idmap::write(pid, maps) {
                let _ = child.kill(libc::SIGKILL);
                let _ = child.wait(None);
                return Err(SetupError::new(
                    Stage::Namespaces,
                    e.raw_os_error().unwrap_or(libc::EPERM),
                    format!("user namespace: {e}"),
                ));
            }
        }
    }
    if let Some((go_w, done_r)) = setid_rest {
        // The maps are there: the child may become root and execute. It reads `args` (on our
        // stack) until it has, so we wait for that before returning.
        // SAFETY: a one-byte write to our own pipe.
        unsafe { libc::write(go_w.as_raw_fd(), b"1".as_ptr() as *const libc::c_void, 1) };
        drop(go_w);
        wait_eof(done_r.as_raw_fd());
    }

    Ok((
        child,
        Pending {
            request: request_bytes,
            report: err_r,
        },
    ))
}

/// Sends the plan to a held child and waits for its report: Ok once the command runs.
pub fn release(child: &Child, pending: Pending) -> Result<(), SetupError> {
    release_with(child, pending, |_| Ok("{}".into()))
}

/// `release`, with `on_sync` run when the child stops before pivot_root: it runs the runtime
/// namespace's hooks and returns the state JSON the child's own hooks get.
pub fn release_with(
    child: &Child,
    pending: Pending,
    mut on_sync: impl FnMut(i32) -> Result<String, SetupError>,
) -> Result<(), SetupError> {
    let Pending {
        request: request_bytes,
        report: err_r,
    } = pending;
    // Send the plan. A child that died early makes this fail with EPIPE; its report says why.
    let mut w = std::fs::File::from(
        child
            ._lifeline
            .try_clone()
            .map_err(|e| spawn_err("dup", e))?,
    );
    let _ = w
        .write_all(&(request_bytes.len() as u32).to_le_bytes())
        .and_then(|_| w.write_all(&request_bytes));

    let mut err_r = std::fs::File::from(err_r);
    let mut report = Vec::new();
    let mut head = [0u8; 8];
    let mut got = 0;
    while got < head.len() {
        match err_r.read(&mut head[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    if &head == SYNC_RECORD {
        match on_sync(child.pid) {
            Ok(state) => {
                let _ = w
                    .write_all(&(state.len() as u32).to_le_bytes())
                    .and_then(|_| w.write_all(state.as_bytes()));
            }
            Err(e) => {
                let _ = child.kill(libc::SIGKILL);
                let _ = child.wait(None);
                return Err(e);
            }
        }
    } else {
        report.extend_from_slice(&head[..got]);
    }
    drop(w);
    let _ = err_r.read_to_end(&mut report);
    if report.is_empty() {
        return Ok(());
    }
    let err = if let Some(errno) = wire::exec_failed_errno(&report) {
        SetupError::new(
            Stage::Spawn,
            errno,
            format!("executing pyrt-child from its memfd: {}", strerror(errno)),
        )
    } else {
        SetupError::decode(&report)
    };
    let _ = child.wait(None);
    Err(err)
}

impl Child {
    /// Waits for the process to end, at most `timeout`. Returns its return code (the exit status,
    /// or -SIGNUM when a signal ended it), or None when the time ran out.
    pub fn wait(&self, timeout: Option<Duration>) -> io::Result<Option<i32>> {
        if let Some(s) = self.returncode() {
            return Ok(Some(s));
        }
        let deadline = timeout.and_then(|t| Instant::now().checked_add(t));
        loop {
            let left = match deadline {
                None => -1,
                Some(d) => {
                    let now = Instant::now();
                    if now >= d {
                        0
                    } else {
                        (d - now).as_millis().min(i32::MAX as u128).max(1) as i32
                    }
                }
            };
            let mut pfd = [nix::poll::PollFd::new(
                self.pidfd.as_fd(),
                nix::poll::PollFlags::POLLIN,
            )];
            let t = if left < 0 {
                nix::poll::PollTimeout::NONE
            } else {
                nix::poll::PollTimeout::try_from(left).unwrap_or(nix::poll::PollTimeout::MAX)
            };
            match nix::poll::poll(&mut pfd, t) {
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => return Err(e.into()),
                Ok(0) if left == 0 => return Ok(None),
                Ok(0) => continue,
                Ok(_) => {}
            }
            if let Some(s) = self.try_reap()? {
                return Ok(Some(s));
            }
        }
    }

    fn try_reap(&self) -> io::Result<Option<i32>> {
        let mut done = self.status.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(s) = *done {
            // Another thread reaped it while this one polled.
            return Ok(Some(s));
        }
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        // SAFETY: waitid on our pidfd with a valid out-parameter.
        let r = unsafe {
            libc::waitid(
                libc::P_PIDFD,
                self.pidfd.as_raw_fd() as libc::id_t,
                &mut info,
                libc::WEXITED | libc::WNOHANG | libc::__WALL,
            )
        };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: si_pid/si_status are valid for a CLD_* siginfo; 0 pid means "not yet".
        let (pid, status) = unsafe { (info.si_pid(), info.si_status()) };
        if pid == 0 {
            return Ok(None);
        }
        let mut code = match info.si_code {
            libc::CLD_EXITED => status,
            _ => -status,
        };
        // An init reports the command's own status: prefer it to its exit code.
        let mut raw = [0u8; 4];
        // SAFETY: reading into a local buffer; the writer is gone, so this cannot block long.
        let n = unsafe { libc::read(self.status_pipe.as_raw_fd(), raw.as_mut_ptr().cast(), 4) };
        if n == 4 {
            let w = i32::from_ne_bytes(raw);
            code = if libc::WIFEXITED(w) {
                libc::WEXITSTATUS(w)
            } else {
                -libc::WTERMSIG(w)
            };
        }
        *done = Some(code);
        Ok(Some(code))
    }

    /// Sends a signal through the pidfd: never to a recycled pid.
    pub fn kill(&self, sig: i32) -> io::Result<()> {
        if self.returncode().is_some() {
            return Ok(());
        }
        // SAFETY: pidfd_send_signal with no siginfo.
        let r = unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                self.pidfd.as_raw_fd(),
                sig,
                std::ptr::null::<libc::siginfo_t>(),
                0,
            )
        };
        if r < 0 {
            let e = io::Error::last_os_error();
            // ESRCH: it has exited and not been reaped yet; nothing to signal.
            if e.raw_os_error() != Some(libc::ESRCH) {
                return Err(e);
            }
        }
        Ok(())
    }

    pub fn returncode(&self) -> Option<i32> {
        *self.status.lock().unwrap_or_else(|e| e.into_inner())
    }
}
