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
//!
//! Here: `spawn`, `spawn_held` and `release`; `prepare.rs` adjusts a request before the clone
//! (namespaces to be born in, descriptors handed down), `clone.rs` is the spawner thread and
//! `child_fn`, `image.rs` the sealed memfd, `process.rs` the started process (`Child`),
//! `teardown.rs` the end of its mount namespace off the waiter's path.

mod clone;
mod image;
mod prepare;
mod process;
mod server;
mod teardown;

use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::mpsc;

pub(crate) use clone::dup_high;
pub use image::ChildImage;
pub(crate) use prepare::take_join;
pub use process::Child;
pub use server::ExecServer;

use clone::{run_here, spawner, wait_eof, ChildArgs, Job};
use prepare::{hand_down, needs_setid, prejoin_net, two_stage};

use crate::cgroups::{Cgroup, CgroupError};
use crate::plan::Request;
use crate::report::{strerror, SetupError, Stage};
use crate::wire::{self, SYNC_RECORD};

fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(io::Error::from)
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
    let (child, pending) = clone_child(image, request, stdio, place, false)?;
    release(&child, pending)?;
    Ok(child)
}

/// The request as the child reads it: a little-endian u32 length, then the JSON.
fn encode(request: &Request) -> Result<Vec<u8>, SetupError> {
    let json = serde_json::to_vec(request).map_err(|e| {
        SetupError::new(Stage::Plan, libc::EINVAL, format!("encoding the plan: {e}"))
    })?;
    let mut bytes = Vec::with_capacity(4 + json.len());
    bytes.extend_from_slice(&(json.len() as u32).to_le_bytes());
    bytes.extend_from_slice(&json);
    Ok(bytes)
}

/// A new process's plan, error and status pipes (its fds 3, 4 and 5: the read, write and
/// write ends); the status pipe's read end does not block (read once the process is reaped).
struct Pipes {
    plan_r: OwnedFd,
    plan_w: OwnedFd,
    err_r: OwnedFd,
    err_w: OwnedFd,
    status_r: OwnedFd,
    status_w: OwnedFd,
}

impl Pipes {
    fn new() -> Result<Pipes, SetupError> {
        let (plan_r, plan_w) = pipe().map_err(|e| spawn_err("pipe", e))?;
        let (err_r, err_w) = pipe().map_err(|e| spawn_err("pipe", e))?;
        let (status_r, status_w) = pipe().map_err(|e| spawn_err("pipe", e))?;
        // SAFETY: fcntl on our own descriptor.
        unsafe { libc::fcntl(status_r.as_raw_fd(), libc::F_SETFL, libc::O_NONBLOCK) };
        Ok(Pipes {
            plan_r,
            plan_w,
            err_r,
            err_w,
            status_r,
            status_w,
        })
    }
}

/// What becomes a new process's fds 0-5, in that order: its stdio, then its ends of the plan,
/// error and status pipes (the module's table in `child`).
fn child_fds(
    stdio: [RawFd; 3],
    plan_r: &OwnedFd,
    err_w: &OwnedFd,
    status_w: &OwnedFd,
) -> [RawFd; 6] {
    [
        stdio[0],
        stdio[1],
        stdio[2],
        plan_r.as_raw_fd(),
        err_w.as_raw_fd(),
        status_w.as_raw_fd(),
    ]
}

/// What `release` still has to send and read.
#[derive(Debug)]
pub struct Pending {
    /// The plan as the child reads it (a little-endian u32 length, then the JSON), of which
    /// the first `sent` bytes are in the pipe already.
    request: Vec<u8>,
    sent: usize,
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
    clone_child(image, request, stdio, place, true)
}

/// The clone and what must come before the plan; `held`: the plan is not sent before
/// `release` in any case.
fn clone_child(
    image: &ChildImage,
    request: &Request,
    stdio: [RawFd; 3],
    place: Placement,
    held: bool,
) -> Result<(Child, Pending), SetupError> {
    let cg_err = |e: CgroupError| SetupError::new(Stage::Cgroup, e.errno(), e.to_string());
    let (enter, leave) = match place.cgroup {
        Some(c) => (
            c.tasks_files(false).map_err(cg_err)?,
            c.tasks_files(true).map_err(cg_err)?,
        ),
        None => (Vec::new(), Vec::new()),
    };
    let (staged, first_stage) = two_stage(request)?;
    let (request, netns) = prejoin_net(staged.as_ref())?;
    let (request, handed) = hand_down(request, place.gate)?;
    let request = request.as_ref();
    let mut keep: Vec<RawFd> = handed.iter().map(|f| f.as_raw_fd()).collect();
    match request {
        Request::Forward(f) => keep.extend(f.fds()),
        Request::Serve(f) => keep.extend(f.fds()),
        Request::Exec(e) => keep.extend(e.pidfd),
        Request::Create(_) => {}
    }
    if let Some(first) = &first_stage {
        keep.push(first.userns.as_raw_fd());
        keep.extend(first.joins.iter().map(|f| f.as_raw_fd()));
    }
    let request_bytes = encode(request)?;
    let pipes = Pipes::new()?;
    let (plan_r, plan_w, err_r) = (pipes.plan_r, pipes.plan_w, pipes.err_r);
    let (err_w, status_r, status_w) = (pipes.err_w, pipes.status_r, pipes.status_w);
    // A child that is not held, is born in its cgroup (v1) or has none, and gets no user
    // namespace maps has nothing to wait for between clone and its plan: the plan goes into
    // the pipe now, and the child reads it as soon as it runs instead of waiting for this
    // thread to hear back from the spawner. (v2 moves the child into the cgroup after clone,
    // the maps are written then, and a first stage acts before it reads: the child must not
    // go on before.) What the pipe does not take, `release` sends.
    let no_maps = !matches!(request, Request::Create(p) if p.id_maps.is_some());
    let early = !held
        && no_maps
        && first_stage.is_none()
        && !needs_setid(request)
        && place.cgroup.map_or(true, Cgroup::born_inside);
    let sent_early = if early {
        write_available(&plan_w, &request_bytes)
    } else {
        0
    };
    let mut sources = Vec::with_capacity(6);
    for fd in child_fds(stdio, &plan_r, &err_w, &status_w) {
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
    let detached = match request {
        Request::Create(p) => p.detached,
        Request::Exec(e) => e.detached,
        Request::Forward(_) | Request::Serve(_) => false,
    };
    // A first stage learns what to do from its arguments: it acts before it reads the plan.
    let stage_args: Vec<std::ffi::CString> = match &first_stage {
        Some(first) => [
            crate::child::FIRST_STAGE_ARG.to_string(),
            first.userns.as_raw_fd().to_string(),
            first.flags.to_string(),
            u8::from(!detached).to_string(),
        ]
        .into_iter()
        .map(|a| std::ffi::CString::new(a).expect("no NUL in numbers"))
        .collect(),
        None => Vec::new(),
    };
    let mut argv: Vec<*const libc::c_char> = vec![c"pyrt-child".as_ptr()];
    argv.extend(stage_args.iter().map(|a| a.as_ptr()));
    argv.push(std::ptr::null());
    let envp: [*const libc::c_char; 1] = [std::ptr::null()];
    let args = ChildArgs {
        fds: [0, 1, 2, 3, 4, 5].map(|i| sources[i].as_raw_fd()),
        exe_fd: image.raw_fd(),
        argv: argv.as_ptr(),
        envp: envp.as_ptr(),
        report_fd: sources[4].as_raw_fd(),
        pdeathsig: !detached,
        setid_fd: setid.as_ref().map_or(-1, |s| s.0.as_raw_fd()),
        keep: keep.as_ptr(),
        keep_len: keep.len(),
    };
    let clone_flags = match request {
        Request::Create(_) if first_stage.is_some() => 0,
        Request::Create(p) => p.clone_flags,
        Request::Exec(_) | Request::Forward(_) | Request::Serve(_) => 0,
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
    // From the process's main thread, a vfork child is cloned right here (`run_here`). Not
    // from another thread: a parent-death signal follows the thread that cloned, and the
    // container must outlive a thread that started it; nor a child that waits for its maps,
    // whose stack the spawner keeps until it has executed.
    let gone = || io::Error::other("the pyrt-spawner thread is gone");
    // SAFETY: gettid and getpid cannot fail.
    let main_thread = unsafe { libc::syscall(libc::SYS_gettid) == libc::getpid() as libc::c_long };
    let cloned = if job.exec_wait.is_none() && main_thread {
        run_here(&job)
    } else if spawner()
        .lock()
        .map(|tx| tx.send(job).is_ok())
        .unwrap_or(false)
    {
        reply_rx.recv().unwrap_or_else(|_| Err(gone()))
    } else {
        Err(gone())
    };
    // The child has executed pyrt-child (or died), or, waiting for its maps, has its own copies
    // of the descriptors: ours can go.
    drop(sources);
    drop(handed);
    let two_stages = first_stage.is_some();
    drop(first_stage);
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
    let (pid, pidfd, err_r) = if two_stages {
        second_stage(pid, pidfd, err_r)?
    } else {
        (pid, pidfd, err_r)
    };
    let child = Child::new(pid, pidfd, plan_w, status_r);
    // Its mount namespace is then unmounted after its end is reported, not before (0.2-0.3 ms
    // of a run here): see `teardown`.
    if matches!(request, Request::Create(p) if p.clone_flags & libc::CLONE_NEWNS as u64 != 0) {
        child.hold_mount_ns();
    }
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
            sent: sent_early,
            report: err_r,
        },
    ))
}

/// A first stage's outcome: the container's process it cloned (our child too, by
/// CLONE_PARENT), once the first stage is reaped; or the first stage's error.
fn second_stage(
    first: i32,
    first_pidfd: OwnedFd,
    err_r: OwnedFd,
) -> Result<(i32, OwnedFd, OwnedFd), SetupError> {
    let mut report = std::fs::File::from(err_r);
    let mut head = [0u8; wire::STAGE_PID_LEN];
    let got = read_head(&mut report, &mut head);
    let mut status = 0;
    // SAFETY: waiting for our own child, which exits right after its record.
    while unsafe { libc::waitpid(first, &mut status, libc::__WALL) } < 0
        && io::Error::last_os_error().kind() == io::ErrorKind::Interrupted
    {}
    drop(first_pidfd);
    let Some(pid) = wire::stage_pid(&head[..got]) else {
        let mut rest = head[..got].to_vec();
        let _ = report.read_to_end(&mut rest);
        return Err(if rest.is_empty() {
            SetupError::new(
                Stage::Namespaces,
                libc::EIO,
                "the first stage ended without a report".to_string(),
            )
        } else {
            report_error(&rest)
        });
    };
    // Our own child, not reaped, so its pid cannot have been reused.
    let pidfd = crate::syscall::pidfd_open(pid).map_err(|e| {
        // SAFETY: the process waits for its plan and dies with the kill.
        unsafe {
            libc::kill(pid, libc::SIGKILL);
            libc::waitpid(pid, &mut status, libc::__WALL);
        }
        spawn_err("pidfd_open of the container's process", e)
    })?;
    Ok((pid, pidfd, OwnedFd::from(report)))
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
        sent,
        report: err_r,
    } = pending;
    // Send the plan. A child that died early makes this fail with EPIPE (or has no pipe left,
    // once reaped); its report says why.
    let mut w = match child.lifeline() {
        Ok(fd) => Some(std::fs::File::from(
            fd.try_clone().map_err(|e| spawn_err("dup", e))?,
        )),
        Err(_) => None,
    };
    let mut send = |bytes: &[u8]| w.as_mut().map(|w| w.write_all(bytes));
    let _ = send(&request_bytes[sent..]);

    let mut err_r = std::fs::File::from(err_r);
    let mut report = Vec::new();
    let mut head = [0u8; 8];
    let got = read_head(&mut err_r, &mut head);
    if &head == SYNC_RECORD {
        match on_sync(child.pid) {
            Ok(state) => {
                let _ = send(&(state.len() as u32).to_le_bytes());
                let _ = send(state.as_bytes());
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
    let err = report_error(&report);
    let _ = child.wait(None);
    Err(err)
}

/// Reads the report pipe until `head` is full or EOF; how much was read.
fn read_head(r: &mut std::fs::File, head: &mut [u8]) -> usize {
    let mut got = 0;
    while got < head.len() {
        match r.read(&mut head[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    got
}

/// The error a non-empty report carries: an exec-failure record, or a `SetupError`'s.
fn report_error(report: &[u8]) -> SetupError {
    match wire::exec_failed_errno(report) {
        Some(errno) => SetupError::new(
            Stage::Spawn,
            errno,
            format!("executing pyrt-child from its memfd: {}", strerror(errno)),
        ),
        None => SetupError::decode(report),
    }
}

/// Writes what the pipe takes of `bytes` without blocking (no reader exists yet); how much.
fn write_available(pipe: &OwnedFd, bytes: &[u8]) -> usize {
    let fd = pipe.as_raw_fd();
    // SAFETY: fcntl on our own descriptor; the flag is cleared again below, before anyone else
    // (the lifeline's users) writes to it.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    if flags < 0 || unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
        return 0;
    }
    let mut sent = 0;
    while sent < bytes.len() {
        // SAFETY: writing from a slice we hold to our own descriptor.
        let n = unsafe {
            libc::write(
                fd,
                bytes[sent..].as_ptr() as *const libc::c_void,
                bytes.len() - sent,
            )
        };
        if n > 0 {
            sent += n as usize;
        } else if n < 0 && io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
            continue;
        } else {
            break;
        }
    }
    // SAFETY: as above.
    unsafe { libc::fcntl(fd, libc::F_SETFL, flags) };
    sent
}
