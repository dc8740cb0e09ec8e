//! `/sys/fs/cgroup` inside the container: the host's layout, read-only, seen through the
//! container's cgroup namespace (so its own cgroup is the root it sees). A cgroup2 host gets a
//! cgroup2 mount; a v1 (or hybrid) host a tmpfs with each v1 hierarchy, and the unified tree if
//! there is one, mounted inside, as runc and Docker lay it out.

use std::ffi::CString;
use std::os::fd::OwnedFd;
use std::path::Path;

use super::inroot::ensure_in_root;
use crate::report::{SetupError, Stage};
use crate::syscall::{self, cstring, fd_path};

const RO: u64 =
    libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC | libc::MS_RELATIME;

fn err(what: String) -> impl FnOnce(std::io::Error) -> SetupError {
    move |e| SetupError::io(Stage::Mount, what, &e)
}

/// (name under /sys/fs/cgroup, filesystem type, mount options) of the host's hierarchies.
fn host_hierarchies() -> Vec<(String, String, String)> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut out = Vec::new();
    for line in info.lines() {
        let Some((pre, post)) = line.split_once(" - ") else {
            continue;
        };
        let mount = pre.split_whitespace().nth(4).unwrap_or("");
        let mut post = post.split_whitespace();
        let fstype = post.next().unwrap_or("");
        let opts = post.nth(1).unwrap_or("");
        if fstype != "cgroup" && fstype != "cgroup2" {
            continue;
        }
        let Some(name) = mount.strip_prefix("/sys/fs/cgroup") else {
            continue;
        };
        // Only the options that select the hierarchy; rw/ro and the like are ours to set.
        let keep: Vec<&str> = opts
            .split(',')
            .filter(|o| !matches!(*o, "rw" | "ro" | "nosuid" | "nodev" | "noexec" | "relatime"))
            .collect();
        out.push((
            name.trim_start_matches('/').to_string(),
            fstype.to_string(),
            keep.join(","),
        ));
    }
    out
}

pub fn mount(root: &OwnedFd, dest: &Path) -> Result<(), SetupError> {
    let shown = dest.display().to_string();
    let target = ensure_in_root(root, dest, false).map_err(err(format!("creating {shown}")))?;
    let hier = host_hierarchies();
    if hier.iter().any(|(n, t, _)| n.is_empty() && t == "cgroup2") {
        return syscall::mount(
            Some(c"cgroup2"),
            &fd_path(&target),
            Some(c"cgroup2"),
            RO,
            None,
        )
        .map_err(err(format!("mounting cgroup2 on {shown}")));
    }
    syscall::mount(
        Some(c"tmpfs"),
        &fd_path(&target),
        Some(c"tmpfs"),
        RO & !libc::MS_RDONLY,
        Some(c"mode=755"),
    )
    .map_err(err(format!("mounting a tmpfs on {shown}")))?;
    for (name, fstype, opts) in hier
        .iter()
        .filter(|(n, _, _)| !n.is_empty() && !n.contains('/'))
    {
        let sub = dest.join(name);
        let t = ensure_in_root(root, &sub, false)
            .map_err(err(format!("creating {}", sub.display())))?;
        let ty: CString = cstring(fstype.as_bytes()).map_err(err(fstype.clone()))?;
        let data = (!opts.is_empty())
            .then(|| cstring(opts.as_bytes()))
            .transpose()
            .map_err(err(opts.clone()))?;
        syscall::mount(Some(&ty), &fd_path(&t), Some(&ty), RO, data.as_deref()).map_err(err(
            format!("mounting the {name} hierarchy on {}", sub.display()),
        ))?;
    }
    // The tmpfs itself read-only too, now that its mount points exist.
    let top = ensure_in_root(root, dest, false).map_err(err(format!("reopening {shown}")))?;
    syscall::mount(
        None,
        &fd_path(&top),
        None,
        libc::MS_REMOUNT | RO,
        Some(c"mode=755"),
    )
    .map_err(err(format!("making {shown} read-only")))
}
