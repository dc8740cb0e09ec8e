//! A container's `/sys/fs/cgroup` on a v1 (or hybrid) host, laid out once by the parent as a
//! detached tree and cloned for each start.
//!
//! The child lays the layout out with a tmpfs and a mount of each hierarchy in it
//! (`child::cgroupfs`): a dozen mounts, 0.15-0.2 ms of every start on this kind of host. But a
//! container that stays in its caller's cgroups, in a cgroup namespace of its own, sees the
//! same tree as every other such container (a `pyrt.run` without limits): in each hierarchy,
//! the caller's cgroup as the root. So the parent makes that tree once (a tmpfs holding a bind
//! of the caller's cgroup directory of each hierarchy, all read-only, `nosuid`, `nodev` and
//! `noexec`), and at each start clones it whole (`open_tree`, ~20 us) and hands the clone down;
//! the child attaches it with one `move_mount` (~6 us).
//!
//! The tree is made at a process's second such start (one start alone would not repay it),
//! and again when the caller's cgroups or the host's hierarchies change, and after a fork (a
//! clone is only made in the mount namespace the tree was made in). It is a detached one: in
//! no mount table, and it goes with the process (its descriptor is close-on-exec).

use std::ffi::CString;
use std::io::{self, Read};
use std::os::fd::OwnedFd;
use std::sync::Mutex;

use crate::child::cgroupfs::{own_cgroups, own_path, Hierarchy};
use crate::mountopts::attr;
use crate::syscall;

/// What a tree is kept for: the process, its cgroups (/proc/thread-self/cgroup's text) and
/// the host's hierarchies.
struct Kept {
    pid: u32,
    own: String,
    hierarchies: Vec<Hierarchy>,
    tree: Tree,
}

/// The tree of this process, with what it was made for.
static KEPT: Mutex<Option<Kept>> = Mutex::new(None);

enum Tree {
    /// One start has asked: the tree is made at the second. A process that starts one
    /// container (`pyrt-runc create`, the command line's `pyrt run`) would pay more to make it
    /// (~0.3 ms) than its start saves.
    Asked,
    Made(OwnedFd),
    /// It could not be made (a caller without the privilege to clone mounts, a hierarchy whose
    /// directory for the caller is not found): not tried again at every start.
    Failed,
}

/// A clone of the layout for a container that stays in the calling thread's cgroups (whose
/// children it will be born in) and makes a cgroup namespace of its own; None when there is
/// none to give (a cgroup2 host, whose layout is one mount; the process's first such start;
/// a tree that could not be made; another start using it at this moment), and the child lays
/// it out itself.
pub fn clone_for(hierarchies: &[Hierarchy]) -> Option<OwnedFd> {
    if hierarchies.iter().any(|h| h.name.is_empty()) {
        return None;
    }
    let own = read_own().ok()?;
    let pid = std::process::id();
    // Never waited for: a start that finds it taken (another thread's start, or a fork's
    // copy of a lock that a thread of the parent held) lays the layout out in the child
    // instead of waiting, or hanging for ever in a forked child.
    let mut kept = match KEPT.try_lock() {
        Ok(k) => k,
        Err(std::sync::TryLockError::Poisoned(e)) => e.into_inner(),
        Err(std::sync::TryLockError::WouldBlock) => return None,
    };
    let same =
        matches!(&*kept, Some(k) if k.pid == pid && k.own == own && k.hierarchies == hierarchies);
    if !same {
        *kept = Some(Kept {
            pid,
            own,
            hierarchies: hierarchies.to_vec(),
            tree: Tree::Asked,
        });
        return None;
    }
    let k = kept.as_mut()?;
    if matches!(k.tree, Tree::Asked) {
        k.tree = match make(hierarchies, &k.own, pid) {
            Ok(t) => Tree::Made(t),
            Err(_) => Tree::Failed,
        };
    }
    match &k.tree {
        Tree::Made(t) => syscall::open_tree_clone_fd(t, true).ok(),
        Tree::Asked | Tree::Failed => None,
    }
}

/// The calling thread's cgroups (v1 places threads, not processes). The container is cloned
/// by this thread or by the spawner thread, which share their cgroups unless one of them was
/// moved alone (through a `tasks` file): a container of such a process could see the other
/// thread's cgroup as its own.
fn read_own() -> io::Result<String> {
    let mut text = String::with_capacity(512);
    std::fs::File::open("/proc/thread-self/cgroup")?.read_to_string(&mut text)?;
    Ok(text)
}

/// The layout as a detached tree: a tmpfs with, for each hierarchy, a directory and on it a
/// bind of the caller's cgroup of that hierarchy; then all of it read-only.
fn make(hierarchies: &[Hierarchy], own_text: &str, pid: u32) -> io::Result<OwnedFd> {
    let fs = syscall::fs_open(c"tmpfs")?;
    syscall::fs_set(&fs, c"source", Some(c"tmpfs"))?;
    syscall::fs_set(&fs, c"mode", Some(c"755"))?;
    let tree = syscall::fs_mount(&fs, attr::NOSUID | attr::NODEV | attr::NOEXEC)?;
    let own = own_cgroups(own_text);
    for h in hierarchies.iter().filter(|h| !h.name.contains('/')) {
        let opts = if h.fstype == "cgroup2" {
            ""
        } else {
            &h.options
        };
        let path = own_path(&own, opts).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                format!("no cgroup of ours in {}", h.name),
            )
        })?;
        let dir = format!("/sys/fs/cgroup/{}{path}", h.name);
        // The host's mount of the hierarchy could be of a part of it only, and our path is
        // relative to our cgroup namespace's root: the directory is ours only if it lists us.
        if !lists(&dir, pid) {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("{dir} does not list this process"),
            ));
        }
        let name = CString::new(h.name.as_str())?;
        // SAFETY: mkdirat on a descriptor we own, with a NUL-terminated name.
        if unsafe { libc::mkdirat(std::os::fd::AsRawFd::as_raw_fd(&tree), name.as_ptr(), 0o755) }
            != 0
        {
            return Err(io::Error::last_os_error());
        }
        let bind = syscall::open_tree_clone(dir.as_ref(), false)?;
        syscall::move_mount_onto(&bind, Some(&tree), &name)?;
    }
    let ro = attr::RDONLY | attr::NOSUID | attr::NODEV | attr::NOEXEC;
    syscall::mount_setattr(&tree, ro, 0, true)?;
    // (The tmpfs itself too, as the child's remount makes it.)
    syscall::fs_make_readonly(&tree)?;
    Ok(tree)
}

/// Whether the cgroup directory `dir` lists process `pid` in its `cgroup.procs`.
fn lists(dir: &str, pid: u32) -> bool {
    let procs = std::path::Path::new(dir).join("cgroup.procs");
    i32::try_from(pid).is_ok_and(|p| crate::cgroups::read_pids(&procs).contains(&p))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cgroup2_host_gets_no_tree() {
        let h = [Hierarchy {
            name: String::new(),
            fstype: "cgroup2".into(),
            options: String::new(),
        }];
        assert!(clone_for(&h).is_none());
    }

    #[test]
    fn a_start_that_finds_the_tree_in_use_does_not_wait() {
        let h = [Hierarchy {
            name: "pids".into(),
            fstype: "cgroup".into(),
            options: "pids".into(),
        }];
        // (Held as a thread of a forked parent would have left it: waiting would hang.)
        let _held = KEPT.lock().unwrap_or_else(|e| e.into_inner());
        assert!(clone_for(&h).is_none());
    }
}
