//! `/sys/fs/cgroup` inside the container: the host's layout, read-only, seen through the
//! container's cgroup namespace (so its own cgroup is the root it sees). A cgroup2 host gets a
//! cgroup2 mount; a v1 (or hybrid) host a tmpfs with each v1 hierarchy, and the unified tree if
//! there is one, mounted inside, as runc and Docker lay it out.

use std::ffi::CString;

use serde::{Deserialize, Serialize};
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

/// One of the host's cgroup hierarchies: its name under /sys/fs/cgroup ("" for the mount
/// itself), its file system type and the options that select it ("cpu,cpuacct").
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Hierarchy {
    pub name: String,
    pub fstype: String,
    pub options: String,
}

/// The host's hierarchies in a mount table (/proc/self/mountinfo's text).
pub fn hierarchies(mountinfo: &str) -> Vec<Hierarchy> {
    let mut out = Vec::new();
    for line in mountinfo.lines() {
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
        out.push(Hierarchy {
            name: name.trim_start_matches('/').to_string(),
            fstype: fstype.to_string(),
            options: keep.join(","),
        });
    }
    out
}

/// The host's hierarchies read here, when the parent did not send them (`Plan::host_cgroups`).
fn read_hierarchies() -> Vec<Hierarchy> {
    // Read into a buffer that usually holds it all: read_to_string starts small and doubles,
    // a system call (and a seq_file restart) per step.
    let mut info = String::with_capacity(64 * 1024);
    let _ = std::fs::File::open("/proc/self/mountinfo")
        .and_then(|mut f| std::io::Read::read_to_string(&mut f, &mut info));
    hierarchies(&info)
}

/// The host's layout on `dest`; `known`: its hierarchies as the parent read them, and `tree`
/// the layout the parent made of them (`host::cgrouptree`), attached if it can be.
pub fn mount(
    root: &OwnedFd,
    dest: &Path,
    known: Option<&[Hierarchy]>,
    tree: Option<OwnedFd>,
) -> Result<(), SetupError> {
    let shown = dest.display().to_string();
    let target = ensure_in_root(root, dest, false).map_err(err(format!("creating {shown}")))?;
    // (Should the attach fail, the layout is made here as without one.)
    if let Some(tree) = tree {
        if syscall::move_mount_to(&tree, &target).is_ok() {
            return Ok(());
        }
    }
    let read;
    let hier = match known {
        Some(h) => h,
        None => {
            read = read_hierarchies();
            &read[..]
        }
    };
    if hier
        .iter()
        .any(|h| h.name.is_empty() && h.fstype == "cgroup2")
    {
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
    // The tmpfs's root, reopened (the descriptor above names the directory under it). The
    // tmpfs is ours and empty, and nothing of the container runs yet: its mount points are
    // made and opened from here, one component each, without a walk from the root for each.
    let top = ensure_in_root(root, dest, false).map_err(err(format!("reopening {shown}")))?;
    for Hierarchy {
        name,
        fstype,
        options: opts,
    } in hier
        .iter()
        .filter(|h| !h.name.is_empty() && !h.name.contains('/'))
    {
        let sub = dest.join(name);
        let t = mount_point(&top, name).map_err(err(format!("creating {}", sub.display())))?;
        let ty: CString = cstring(fstype.as_bytes()).map_err(err(fstype.clone()))?;
        let data = (!opts.is_empty())
            .then(|| cstring(opts.as_bytes()))
            .transpose()
            .map_err(err(opts.clone()))?;
        let what = format!("mounting the {name} hierarchy on {}", sub.display());
        match syscall::mount(Some(&ty), &fd_path(&t), Some(&ty), RO, data.as_deref()) {
            // A v1 hierarchy cannot be mounted from a user namespace: the container's own
            // directory of it is bound instead, as runc and crun do.
            Err(e) if e.raw_os_error() == Some(libc::EPERM) => bind_own(
                root,
                &sub,
                &t,
                name,
                if fstype == "cgroup2" { "" } else { opts },
            )
            .map_err(|b| err(format!("{what} ({e}); binding ours: {b}"))(b))?,
            r => r.map_err(err(what))?,
        }
    }
    // The tmpfs itself read-only too, now that its mount points exist.
    syscall::mount(
        None,
        &fd_path(&top),
        None,
        libc::MS_REMOUNT | RO,
        Some(c"mode=755"),
    )
    .map_err(err(format!("making {shown} read-only")))
}

/// A new directory `name` in the directory `dir`, opened as a path (not followed, were it a
/// link).
fn mount_point(dir: &OwnedFd, name: &str) -> std::io::Result<OwnedFd> {
    use std::os::fd::{AsRawFd, FromRawFd};
    let cname = cstring(name.as_bytes())?;
    // SAFETY: plain syscalls on a valid descriptor and a NUL-terminated name; the descriptor
    // openat returns is new and ours.
    unsafe {
        if libc::mkdirat(dir.as_raw_fd(), cname.as_ptr(), 0o755) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        let flags = libc::O_PATH | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC;
        let fd = libc::openat(dir.as_raw_fd(), cname.as_ptr(), flags);
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(OwnedFd::from_raw_fd(fd))
    }
}

/// The container's own cgroup paths, (controllers or "name=..." of a hierarchy, path), as
/// /proc/self/cgroup gave them before the child made its cgroup namespace (inside it, each
/// reads "/"). Read only for a container with a user namespace, whose v1 hierarchies are bound.
static OWN: std::sync::OnceLock<Vec<(String, String)>> = std::sync::OnceLock::new();

pub fn remember_own_cgroups() {
    let text = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
    let _ = OWN.set(own_cgroups(&text));
}

/// The lines of a /proc/PID/cgroup file as (controllers or "name=..." of a hierarchy, path).
pub fn own_cgroups(text: &str) -> Vec<(String, String)> {
    text.lines()
        .filter_map(|l| {
            let mut f = l.splitn(3, ':');
            let (_, ctrl, path) = (f.next()?, f.next()?, f.next()?);
            Some((ctrl.to_string(), path.to_string()))
        })
        .collect()
}

/// The path in `own` (`own_cgroups`) of the hierarchy that `opts` select (its controllers or
/// name=, in any order; "" for the cgroup2 tree).
pub fn own_path<'a>(own: &'a [(String, String)], opts: &str) -> Option<&'a str> {
    let words = |s: &str| {
        let mut w: Vec<String> = s
            .split(',')
            .filter(|o| !o.is_empty())
            .map(str::to_string)
            .collect();
        w.sort_unstable();
        w
    };
    let want = words(opts);
    own.iter()
        .find(|(ctrl, _)| words(ctrl) == want)
        .map(|(_, p)| p.as_str())
}

/// Binds `/sys/fs/cgroup/<name><own path>` (the host's hierarchy, still reachable before
/// pivot_root) on `target` (`sub` in the root), read-only. `opts` select the hierarchy (its
/// controllers or name=, "" for the cgroup2 tree).
fn bind_own(
    root: &OwnedFd,
    sub: &Path,
    target: &OwnedFd,
    name: &str,
    opts: &str,
) -> std::io::Result<()> {
    let path = OWN
        .get()
        .and_then(|own| own_path(own, opts))
        .ok_or_else(|| std::io::Error::from_raw_os_error(libc::ENOENT))?;
    let src = cstring(format!("/sys/fs/cgroup/{name}{path}"))?;
    syscall::mount(
        Some(&src),
        &fd_path(target),
        None,
        libc::MS_BIND | libc::MS_REC,
        None,
    )?;
    // The descriptor names the directory under the new mount: reopen to reach the mount.
    let top = ensure_in_root(root, sub, false)?;
    syscall::mount(
        None,
        &fd_path(&top),
        None,
        libc::MS_REMOUNT | libc::MS_BIND | RO,
        None,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_paths_by_the_options_that_select_a_hierarchy() {
        let own = own_cgroups("12:cpu,cpuacct:/a\n4:memory:/b/c\n1:name=systemd:/\n0::/d\n");
        assert_eq!(own_path(&own, "cpuacct,cpu"), Some("/a"));
        assert_eq!(own_path(&own, "memory"), Some("/b/c"));
        assert_eq!(own_path(&own, "name=systemd"), Some("/"));
        assert_eq!(own_path(&own, ""), Some("/d"));
        assert_eq!(own_path(&own, "cpu"), None);
        assert_eq!(own_path(&own, "pids"), None);
    }

    #[test]
    fn hierarchies_of_a_hybrid_table() {
        let table = "\
22 1 252:0 / / rw,relatime - ext4 /dev/vda rw
30 22 0:26 / /sys/fs/cgroup ro,nosuid,nodev,noexec - tmpfs tmpfs ro,mode=755
31 30 0:27 / /sys/fs/cgroup/unified rw,nosuid,nodev,noexec,relatime - cgroup2 cgroup2 rw
32 30 0:28 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid,nodev,noexec,relatime - cgroup cgroup rw,cpu,cpuacct
33 22 0:29 / /mnt/cg rw - cgroup cgroup rw,memory
";
        let h = hierarchies(table);
        let got: Vec<(&str, &str, &str)> = h
            .iter()
            .map(|h| (h.name.as_str(), h.fstype.as_str(), h.options.as_str()))
            .collect();
        assert_eq!(
            got,
            [
                ("unified", "cgroup2", ""),
                ("cpu,cpuacct", "cgroup", "cpu,cpuacct")
            ]
        );
    }
}
