//! Paths inside the container's root, made where missing: a mount target, a device node's
//! directory, the working directory. Everything is resolved through a descriptor of the root
//! with `RESOLVE_IN_ROOT` and created one component at a time from a resolved parent, so an
//! image's symlinks can never place anything outside the root. Used by `rootfs`, `cgroupfs`
//! and `devices`.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use crate::syscall::{self, cstring, open_in_root};

/// Opens `path` (absolute, inside the root), creating what is missing: directories along the way,
/// and the last component as a directory or, with `file`, an empty file (a bind target for a
/// file source). A dangling symlink on the way is followed inside the root, as the kernel would
/// once the root is `/`: the target is created where the link points, within the root.
pub fn ensure_in_root(root: &OwnedFd, path: &Path, file: bool) -> io::Result<OwnedFd> {
    ensure_depth(root, path, file, 0)
}

const MAX_LINKS: u32 = 40;

fn ensure_depth(root: &OwnedFd, path: &Path, file: bool, depth: u32) -> io::Result<OwnedFd> {
    if depth > MAX_LINKS {
        return Err(io::Error::from_raw_os_error(libc::ELOOP));
    }
    let rel = path.strip_prefix("/").unwrap_or(path);
    if rel.as_os_str().is_empty() {
        return syscall::openat2(root.as_raw_fd(), Path::new("."), libc::O_PATH, 0, 0);
    }
    match open_in_root(root.as_raw_fd(), rel, libc::O_PATH) {
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
        r => return r,
    }
    let parent_path = Path::new("/").join(rel.parent().unwrap_or(Path::new("")));
    let parent = ensure_depth(root, &parent_path, false, depth + 1)?;
    let name = rel
        .file_name()
        .ok_or_else(|| io::Error::from_raw_os_error(libc::EINVAL))?;
    let cname = cstring(std::os::unix::ffi::OsStrExt::as_bytes(name))?;
    // The parent was resolved inside the root and `name` is one component: mkdirat and openat
    // with O_NOFOLLOW cannot be redirected out of the root from here.
    // SAFETY: plain syscalls on a valid descriptor and string.
    let r = unsafe {
        if file {
            let fd = libc::openat(
                parent.as_raw_fd(),
                cname.as_ptr(),
                libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_WRONLY,
                0o644,
            );
            if fd >= 0 {
                libc::close(fd);
            }
            fd
        } else {
            libc::mkdirat(parent.as_raw_fd(), cname.as_ptr(), 0o755)
        }
    };
    if r < 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EEXIST) {
            return Err(e);
        }
        // Something is there but did not open: a dangling symlink. Create what it points to.
        if let Ok(target) = nix::fcntl::readlinkat(&parent, name) {
            let target = PathBuf::from(target);
            let next = if target.is_absolute() {
                target
            } else {
                parent_path.join(target)
            };
            return ensure_depth(root, &next, file, depth + 1);
        }
    }
    open_in_root(root.as_raw_fd(), rel, libc::O_PATH)
}
