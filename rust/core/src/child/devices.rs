//! The standard device nodes and symlinks of a fresh /dev (runtime-spec config-linux.md, "Default
//! Devices"). Made with mknod where we may; in a user namespace, where mknod is refused, the host's
//! node is bind mounted onto an empty file instead (as runc and bubblewrap do).

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;

use crate::plan::Device;
use crate::report::{SetupError, Stage};
use crate::syscall::{self, cstring, fd_path, open_in_root};

const NODES: [(&str, u32, u32); 6] = [
    ("null", 1, 3),
    ("zero", 1, 5),
    ("full", 1, 7),
    ("random", 1, 8),
    ("urandom", 1, 9),
    ("tty", 5, 0),
];

const LINKS: [(&str, &str); 6] = [
    ("fd", "/proc/self/fd"),
    ("stdin", "/proc/self/fd/0"),
    ("stdout", "/proc/self/fd/1"),
    ("stderr", "/proc/self/fd/2"),
    ("ptmx", "pts/ptmx"),
    ("core", "/proc/kcore"),
];

fn err(what: String) -> impl FnOnce(io::Error) -> SetupError {
    move |e| SetupError::io(Stage::Devices, what, &e)
}

/// Populates the root's /dev (resolved inside `root`). Runs before pivot_root, while the host's
/// own nodes are still reachable for the bind fallback.
pub fn populate(root: &OwnedFd) -> Result<(), SetupError> {
    let dev = open_in_root(
        root.as_raw_fd(),
        Path::new("dev"),
        libc::O_PATH | libc::O_DIRECTORY,
    )
    .map_err(err("opening /dev in the root".into()))?;
    // Refused once (a user namespace), mknod is refused for every node: the rest are bound
    // without asking again.
    let mut refused = false;
    for (name, major, minor) in NODES {
        if refused {
            bind_host_node(root, name)?;
            continue;
        }
        let c = cstring(name).map_err(err(name.into()))?;
        // SAFETY: plain syscall on a valid descriptor and string.
        let r = unsafe {
            libc::mknodat(
                dev.as_raw_fd(),
                c.as_ptr(),
                libc::S_IFCHR | 0o666,
                libc::makedev(major, minor),
            )
        };
        if r == 0 {
            continue;
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EEXIST) => continue,
            Some(libc::EPERM) => {
                refused = true;
                bind_host_node(root, name)?;
            }
            _ => {
                return Err(SetupError::io(
                    Stage::Devices,
                    format!("mknod /dev/{name}"),
                    &e,
                ))
            }
        }
    }
    for (name, target) in LINKS {
        let n = cstring(name).map_err(err(name.into()))?;
        let t = cstring(target).map_err(err(target.into()))?;
        // SAFETY: as above.
        if unsafe { libc::symlinkat(t.as_ptr(), dev.as_raw_fd(), n.as_ptr()) } != 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EEXIST) {
                return Err(SetupError::io(
                    Stage::Devices,
                    format!("symlink /dev/{name}"),
                    &e,
                ));
            }
        }
    }
    Ok(())
}

/// The nodes `linux.devices` names, with their owners. In a user namespace (mknod refused) the
/// host's node at the same path is bound instead, as runc does.
pub fn create(root: &OwnedFd, devices: &[Device]) -> Result<(), SetupError> {
    for d in devices {
        let rel = d.path.strip_prefix("/").unwrap_or(&d.path);
        let parent = rel.parent().unwrap_or(Path::new(""));
        let shown = d.path.display().to_string();
        let dir = super::inroot::ensure_in_root(root, &Path::new("/").join(parent), false)
            .map_err(err(format!("the directory of {shown}")))?;
        let name = rel.file_name().map(|n| n.as_encoded_bytes()).unwrap_or(b"");
        let c = cstring(name).map_err(err(shown.clone()))?;
        // SAFETY: unlinking and making a node relative to a directory descriptor we hold.
        unsafe { libc::unlinkat(dir.as_raw_fd(), c.as_ptr(), 0) };
        let dev = libc::makedev(d.major as u32, d.minor as u32);
        // SAFETY: as above.
        let r = unsafe { libc::mknodat(dir.as_raw_fd(), c.as_ptr(), d.kind | d.mode, dev) };
        if r != 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EPERM) {
                return Err(SetupError::io(Stage::Devices, format!("mknod {shown}"), &e));
            }
            let target = super::inroot::ensure_in_root(root, &d.path, true)
                .map_err(err(format!("creating {shown}")))?;
            let src = syscall::cpath(&d.path).map_err(err(shown.clone()))?;
            syscall::mount(Some(&src), &fd_path(&target), None, libc::MS_BIND, None)
                .map_err(err(format!("bind mounting the host's {shown}")))?;
            continue;
        }
        // mknod applies the umask (0 here) but not the set-id bits: chmod for the whole mode.
        let uid = d.uid.map_or(u32::MAX, |u| u);
        let gid = d.gid.map_or(u32::MAX, |g| g);
        // SAFETY: as above.
        unsafe {
            if libc::fchmodat(dir.as_raw_fd(), c.as_ptr(), d.mode, 0) != 0
                || libc::fchownat(
                    dir.as_raw_fd(),
                    c.as_ptr(),
                    uid,
                    gid,
                    libc::AT_SYMLINK_NOFOLLOW,
                ) != 0
            {
                let e = io::Error::last_os_error();
                return Err(SetupError::io(
                    Stage::Devices,
                    format!("owner and mode of {shown}"),
                    &e,
                ));
            }
        }
    }
    Ok(())
}

fn bind_host_node(root: &OwnedFd, name: &str) -> Result<(), SetupError> {
    let dest = Path::new("/dev").join(name);
    let target = super::inroot::ensure_in_root(root, &dest, true)
        .map_err(err(format!("creating /dev/{name}")))?;
    let src = cstring(format!("/dev/{name}")).map_err(err(name.into()))?;
    syscall::mount(Some(&src), &fd_path(&target), None, libc::MS_BIND, None)
        .map_err(err(format!("bind mounting the host's /dev/{name}")))
}
