//! Container operations, written once for both front doors (the PyO3 module and pyrt-runc):
//! creating a container with its cgroup, starting a process inside a running one, signalling
//! it (its first process or all), listing its processes and removing its cgroup. Each
//! door adds only what is its own (Python's held start and fault points; runc's hooks, state
//! records and console sockets).

use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::PathBuf;

use crate::cgroups::{self, Cgroup, CgroupError};
use crate::plan::{ExecPlan, ForwardPlan, Plan, Request};
use crate::report::{SetupError, Stage};
use crate::spawn::{self, Child, ChildImage, Pending, Placement};

/// A container's first process, with its cgroup, and (when created held) what `release`
/// needs to let it go on.
pub struct Created {
    pub child: Child,
    pub cgroup: Option<Cgroup>,
    pub pending: Option<Pending>,
}

/// Creates the container's cgroup (when the plan names one), then its first process: running
/// its command on return, or with `hold` stopped before its plan until `spawn::release`. If
/// the process cannot be made, the cgroup is removed again: a failed create leaves nothing.
/// `after_cgroup` runs between the two (the Python door's fault points use it). `gate` is
/// `pyrt-runc create`'s listening start socket, handed to the child.
pub fn create(
    image: &ChildImage,
    mut plan: Plan,
    stdio: [RawFd; 3],
    hold: bool,
    gate: Option<&OwnedFd>,
    after_cgroup: impl FnOnce(),
) -> Result<Created, SetupError> {
    // A pid namespace given by path is joined by the spawner before the clone, as for an exec:
    // setns(CLONE_NEWPID) moves only the caller's future children, so the child joining it
    // itself would run the command in the namespace it was born in.
    let pidns = spawn::take_join(&mut plan, libc::CLONE_NEWPID as u64)?;
    // (Not for a mount namespace joined by path, whose table is not ours; and unreadable
    // here, the child reads it itself.)
    let joins_mounts = plan
        .join
        .iter()
        .any(|(ns, _)| ns & libc::CLONE_NEWNS as u64 != 0);
    if plan.host_cgroups.is_none()
        && !joins_mounts
        && plan.mounts.iter().any(crate::plan::Mount::is_cgroup_layout)
    {
        plan.host_cgroups = crate::host::mountinfo::current()
            .ok()
            .map(|t| crate::child::cgroupfs::hierarchies(&t));
    }
    let cgroup = match &plan.cgroup {
        None => None,
        Some(cp) => Some(
            cgroups::layout()
                .and_then(|l| Cgroup::create(l, cp))
                .map_err(|e| SetupError::new(Stage::Cgroup, e.errno(), e.to_string()))?,
        ),
    };
    after_cgroup();
    let place = Placement {
        cgroup: cgroup.as_ref(),
        pidns: pidns.as_ref(),
        gate,
    };
    let request = Request::Create(plan);
    let spawned = if hold {
        spawn::spawn_held(image, &request, stdio, place).map(|(c, p)| (c, Some(p)))
    } else {
        spawn::spawn(image, &request, stdio, place).map(|c| (c, None))
    };
    match spawned {
        Ok((child, pending)) => Ok(Created {
            child,
            cgroup,
            pending,
        }),
        Err(e) => {
            if let Some(c) = cgroup {
                let _ = c.destroy();
            }
            Err(e)
        }
    }
}

/// The cgroup of a running container, from the directories recorded when it was created
/// (none: a container without one).
pub fn cgroup_of(paths: &[PathBuf]) -> Option<Cgroup> {
    if paths.is_empty() {
        return None;
    }
    Cgroup::from_paths(cgroups::layout().ok()?, paths)
}

/// Starts the process of `plan` inside the running container whose first process is
/// `plan.target`, in its cgroup when given. The pid namespace is joined by the spawner, except
/// for a container in a user namespace of its own: a multi-threaded process may not enter
/// that, so the child joins the user namespace, then the pid namespace, and forks
/// (`ExecPlan::fork_into_pidns`).
pub fn exec_into(
    image: &ChildImage,
    plan: ExecPlan,
    stdio: [RawFd; 3],
    cgroup: Option<&Cgroup>,
) -> Result<Child, SetupError> {
    let mut plan = plan;
    let target = plan.target;
    // A pidfd serves the spawner (setns of pid_for_children) and the child (every namespace at
    // once); without one (a kernel before 5.3), /proc.
    let pidfd = crate::syscall::pidfd_open(target)
        .and_then(|fd| spawn::dup_high(fd.as_raw_fd()))
        .ok();
    plan.pidfd = pidfd.as_ref().map(AsRawFd::as_raw_fd);
    let pidns = match pidfd {
        Some(fd) => fd,
        None => std::fs::File::open(format!("/proc/{target}/ns/pid"))
            .map(OwnedFd::from)
            .map_err(|e| {
                SetupError::io(
                    Stage::Namespaces,
                    format!("the container's pid namespace (pid {target})"),
                    &e,
                )
            })?,
    };
    let place = Placement {
        cgroup,
        pidns: (!plan.fork_into_pidns).then_some(&pidns),
        gate: None,
    };
    spawn::spawn(image, &Request::Exec(plan), stdio, place)
}

/// A rootless container's published TCP port: a listener on `addr`:`port` (0: a free port) in
/// the caller's network namespace, and a process that relays its connections to
/// 127.0.0.1:`target` in `netns`, from inside `userns` (`host::portfwd::run_helper`). Returns
/// the process (killing it stops the forward) and the port.
pub fn forwarder(
    image: &ChildImage,
    userns: RawFd,
    netns: RawFd,
    addr: std::net::Ipv4Addr,
    port: u16,
    target: u16,
) -> Result<(Child, u16), SetupError> {
    let io_err = |what: &str, e: std::io::Error| SetupError::io(Stage::Spawn, what, &e);
    let listener = std::net::TcpListener::bind((addr, port))
        .map_err(|e| io_err(&format!("binding {addr}:{port}"), e))?;
    let bound = listener
        .local_addr()
        .map_err(|e| io_err("the listener's address", e))?
        .port();
    let high = |fd: RawFd| spawn::dup_high(fd).map_err(|e| io_err("dup of a descriptor", e));
    let (u, n, l) = (high(userns)?, high(netns)?, high(listener.as_raw_fd())?);
    let null = std::fs::File::open("/dev/null").map_err(|e| io_err("/dev/null", e))?;
    let plan = ForwardPlan {
        userns: u.as_raw_fd(),
        netns: n.as_raw_fd(),
        listener: l.as_raw_fd(),
        target,
    };
    let stdio = [null.as_raw_fd(); 3];
    let child = spawn::spawn(image, &Request::Forward(plan), stdio, Placement::default())?;
    Ok((child, bound))
}

/// A process's state letter and start time (clock ticks after boot) from `/proc/PID/stat`.
fn stat_of(pid: i32) -> Option<(char, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces and parentheses: fields count from the last ')'.
    let rest = stat.get(stat.rfind(')')? + 2..)?;
    let mut fields = rest.split(' ');
    let state = fields.next()?.chars().next()?;
    Some((state, fields.nth(18)?.parse().ok()?))
}

/// The start time of process `pid` (any state, zombies too): a pid plus this names one
/// process, never a later one that reused the number. This is what creators record.
pub fn start_time(pid: i32) -> Option<u64> {
    stat_of(pid).map(|(_, t)| t)
}

/// Whether the process recorded as (`pid`, `start`) still runs (is not a zombie).
pub fn alive(pid: i32, start: u64) -> bool {
    pid > 0 && matches!(stat_of(pid), Some((s, t)) if t == start && s != 'Z' && s != 'X')
}

/// Sends `sig` to a container's first process known by the pid and start time its creator
/// recorded (another process may have created it): through a pidfd opened and then checked,
/// so never to a later process that reused the number. ESRCH once it is gone.
pub fn signal_recorded(pid: i32, start: u64, sig: i32) -> std::io::Result<()> {
    if pid <= 0 {
        return Err(std::io::Error::from_raw_os_error(libc::ESRCH));
    }
    let fd = crate::syscall::pidfd_open(pid)?;
    if !alive(pid, start) {
        return Err(std::io::Error::from_raw_os_error(libc::ESRCH));
    }
    // SAFETY: pidfd_send_signal on our descriptor, with no siginfo.
    let r = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            fd.as_raw_fd(),
            sig,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Every process of a container, sorted: its cgroup's, or the first process alone (`init`,
/// when it still runs) for one without a cgroup.
pub fn pids(cgroup: Option<&Cgroup>, init: Option<i32>) -> Vec<i32> {
    let mut out = cgroup.map(Cgroup::pids).unwrap_or_default();
    if out.is_empty() {
        out.extend(init);
    }
    out.sort_unstable();
    out
}

/// Sends `sig` to every process of a container (`kill --all`).
pub fn signal_all(cgroup: Option<&Cgroup>, init: Option<i32>, sig: i32) {
    for pid in pids(cgroup, init) {
        // SAFETY: kill(2) has no memory arguments; the pids are the container's own.
        unsafe { libc::kill(pid, sig) };
    }
}

/// Kills what is left in a container's cgroup (frozen or not) and removes its directories,
/// given as its creator recorded them; the ones already gone are skipped. Used when the
/// creator is gone (a stale container) or is another process (`pyrt rm`).
pub fn remove_cgroup(paths: &[PathBuf]) -> Result<(), CgroupError> {
    let paths: Vec<PathBuf> = paths.iter().filter(|p| p.is_dir()).cloned().collect();
    if paths.is_empty() {
        return Ok(());
    }
    match cgroup_of(&paths) {
        Some(cg) => cg.destroy(),
        None => Err(CgroupError::Unknown {
            path: paths[0].clone(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_recorded_process_is_signalled_and_a_reused_pid_is_not() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let pid = child.id() as i32;
        let start = start_time(pid).unwrap();
        assert!(alive(pid, start));
        // Another start time names another process: refused, and the sleep lives on.
        let err = signal_recorded(pid, start + 1, libc::SIGKILL).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::ESRCH));
        assert!(alive(pid, start));
        signal_recorded(pid, start, libc::SIGKILL).unwrap();
        let status = child.wait().unwrap();
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(status.signal(), Some(libc::SIGKILL));
        assert!(!alive(pid, start));
        assert!(signal_recorded(pid, start, 0).is_err());
        assert!(signal_recorded(-1, start, 0).is_err());
    }

    #[test]
    fn a_zombie_has_a_start_time_but_is_not_alive() {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id() as i32;
        let start = start_time(pid).unwrap();
        // Not reaped yet: a zombie once it has exited.
        while stat_of(pid).map(|(s, _)| s) != Some('Z') {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        assert_eq!(start_time(pid), Some(start));
        assert!(!alive(pid, start));
        child.wait().unwrap();
        assert_eq!(start_time(pid), None);
    }

    #[test]
    fn pids_without_a_cgroup_are_the_init_alone() {
        assert_eq!(pids(None, Some(7)), vec![7]);
        assert!(pids(None, None).is_empty());
        assert!(remove_cgroup(&[PathBuf::from("/nonexistent/pyrt-test")]).is_ok());
        let err = remove_cgroup(&[PathBuf::from("/tmp")]).unwrap_err();
        assert!(err.to_string().contains("/tmp"), "{err}");
        // A hierarchy's root holds every process of the machine: never a container's.
        if let Ok(layout) = cgroups::layout() {
            for root in layout_roots(layout) {
                assert!(
                    remove_cgroup(std::slice::from_ref(&root)).is_err(),
                    "{}",
                    root.display()
                );
                let climbing = root.join("..").join(root.file_name().unwrap());
                assert!(remove_cgroup(&[climbing]).is_err());
            }
        }
    }

    fn layout_roots(layout: &cgroups::Layout) -> Vec<PathBuf> {
        match layout {
            cgroups::Layout::V1(l) => l.controllers.iter().map(|c| c.mount.clone()).collect(),
            cgroups::Layout::V2 { mount, .. } => vec![mount.clone()],
        }
    }
}
