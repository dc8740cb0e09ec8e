//! An exec joins the namespaces of the running container it goes into: those that are not
//! already ours, through the container's pidfd (all at once, Linux 5.8) or else one by one
//! through `/proc/<pid>/ns`.

use std::io;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use crate::plan::ExecPlan;
use crate::report::{SetupError, Stage};

/// Joins the container's namespaces; the handed-down pidfd is closed after.
pub(super) fn container_namespaces(plan: &ExecPlan) -> Result<(), SetupError> {
    join_container(plan.target, plan.pidfd, plan.fork_into_pidns)?;
    if let Some(fd) = plan.pidfd {
        // Handed down without close-on-exec: the command must not get it.
        // SAFETY: closing the descriptor we were handed, used no more.
        unsafe { libc::close(fd) };
    }
    Ok(())
}

/// Joins the namespaces of the container whose first process is `target` that are not ours,
/// through `pidfd` when given; with `with_pid`, its pid namespace too (as the one our children
/// are born in).
pub(super) fn join_container(
    target: i32,
    pidfd: Option<i32>,
    with_pid: bool,
) -> Result<(), SetupError> {
    let differ = differing_namespaces(target, with_pid)?;
    let by_pidfd = match pidfd {
        Some(fd) => join_by_pidfd(fd, &differ)?,
        None => false,
    };
    if !by_pidfd {
        join_by_proc(target, &differ)?;
    }
    Ok(())
}

/// The container's namespaces an exec joins, those that are not ours already (a container
/// may share the host's network or uts namespace, and joining one of ours can be refused:
/// the user namespace always, the others once inside the container's user namespace). Two
/// directory descriptors, so that each comparison is one short lookup.
fn differing_namespaces(
    target: i32,
    with_pid: bool,
) -> Result<Vec<(&'static str, libc::c_int)>, SetupError> {
    use nix::fcntl::AtFlags;
    let pid = if with_pid { libc::CLONE_NEWPID } else { 0 };
    // The user namespace first (it owns the others), the mount namespace last of all.
    let kinds = [
        ("user", libc::CLONE_NEWUSER),
        ("pid", pid),
        ("cgroup", libc::CLONE_NEWCGROUP),
        ("ipc", libc::CLONE_NEWIPC),
        ("uts", libc::CLONE_NEWUTS),
        ("net", libc::CLONE_NEWNET),
        ("mnt", libc::CLONE_NEWNS),
    ];
    let dir = format!("/proc/{target}/ns");
    let gone = |what: &str, path: &str, e: io::Error| {
        SetupError::io(
            Stage::Namespaces,
            format!("the container's {what} ({path}; has it exited?)"),
            &e,
        )
    };
    let theirs = std::fs::File::open(&dir).map_err(|e| gone("namespaces", &dir, e))?;
    let ours = std::fs::File::open("/proc/self/ns").ok();
    let mut differ = Vec::new();
    for (name, kind) in kinds {
        if kind == 0 {
            continue;
        }
        let t = nix::sys::stat::fstatat(&theirs, name, AtFlags::empty()).map_err(|e| {
            let what = format!("{name} namespace");
            gone(&what, &format!("{dir}/{name}"), io::Error::from(e))
        })?;
        let same = ours
            .as_ref()
            .and_then(|o| nix::sys::stat::fstatat(o, name, AtFlags::empty()).ok())
            .is_some_and(|o| o.st_ino == t.st_ino && o.st_dev == t.st_dev);
        if !same {
            differ.push((name, kind));
        }
    }
    Ok(differ)
}

/// The order of the joins: a root caller joins the user namespace last: inside it, root has
/// no privilege over namespaces that host root made and the container only joined (a
/// sandboxed container on a shared network), while from outside it may enter them all. An
/// unprivileged caller has its privilege only inside, so it goes in first.
fn user_last() -> bool {
    // SAFETY: geteuid cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Joins `differ` through the container's pidfd: the user namespace and the rest, each group
/// in one setns. False when this kernel cannot (before 5.8: EINVAL), to go through /proc.
fn join_by_pidfd(pidfd: i32, differ: &[(&str, libc::c_int)]) -> Result<bool, SetupError> {
    let user = differ
        .iter()
        .any(|(_, k)| *k == libc::CLONE_NEWUSER)
        .then_some(libc::CLONE_NEWUSER);
    let rest = differ
        .iter()
        .filter(|(_, k)| *k != libc::CLONE_NEWUSER)
        .fold(0, |m, (_, k)| m | k);
    let rest = (rest != 0).then_some(rest);
    let order = if user_last() {
        [rest, user]
    } else {
        [user, rest]
    };
    for (i, flags) in order.into_iter().flatten().enumerate() {
        // SAFETY: setns on the descriptor we were handed.
        if unsafe { libc::setns(pidfd, flags) } == 0 {
            continue;
        }
        let e = io::Error::last_os_error();
        if i == 0 && e.raw_os_error() == Some(libc::EINVAL) {
            return Ok(false);
        }
        let names: Vec<&str> = differ
            .iter()
            .filter(|(_, k)| flags & k != 0)
            .map(|(n, _)| *n)
            .collect();
        return Err(SetupError::io(
            Stage::Namespaces,
            format!("joining the container's {} namespaces", names.join(", ")),
            &e,
        ));
    }
    Ok(true)
}

/// Joins `differ` one by one through `/proc/<target>/ns`.
fn join_by_proc(target: i32, differ: &[(&str, libc::c_int)]) -> Result<(), SetupError> {
    let mut paths: Vec<(libc::c_int, PathBuf)> = differ
        .iter()
        .map(|(name, kind)| (*kind, PathBuf::from(format!("/proc/{target}/ns/{name}"))))
        .collect();
    if user_last() {
        paths.sort_by_key(|(kind, _)| *kind == libc::CLONE_NEWUSER);
    }
    let paths: Vec<(libc::c_int, &Path)> = paths.iter().map(|(k, p)| (*k, p.as_path())).collect();
    by_paths(&paths)
}

/// Joins the namespaces at `paths` (kind, path), in that order: a container's namespaces given
/// by path, and an exec's without a pidfd. All are opened first: once inside a user
/// namespace, another process's `/proc/<pid>/ns` may be out of reach.
pub(super) fn by_paths(paths: &[(libc::c_int, &Path)]) -> Result<(), SetupError> {
    let mut files = Vec::with_capacity(paths.len());
    for (kind, path) in paths {
        let f = std::fs::File::open(path).map_err(|e| {
            SetupError::io(
                Stage::Namespaces,
                format!("opening namespace {}", path.display()),
                &e,
            )
        })?;
        files.push((f, *kind, path));
    }
    for (f, kind, path) in &files {
        // SAFETY: setns on a descriptor we own.
        if unsafe { libc::setns(f.as_raw_fd(), *kind) } != 0 {
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
