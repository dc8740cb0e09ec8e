//! The few file system calls the unpacker makes, relative to directory descriptors and never
//! following a symlink in the last component: thin, checked wrappers over libc.

use std::ffi::{CStr, CString, OsStr};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use pyrt_core::syscall::{openat2, RESOLVE_IN_ROOT, RESOLVE_NO_MAGICLINKS};

/// A name as the kernel takes it (EINVAL for one holding a NUL).
pub fn c(name: &[u8]) -> io::Result<CString> {
    pyrt_core::syscall::cstring(name)
}

fn check(r: libc::c_int) -> io::Result<libc::c_int> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// `rel` (components joined by "/", or ".") opened as a directory inside `root`: `..`, absolute
/// and relative symlinks all resolve as if `root` were "/".
pub fn open_in_root(root: RawFd, rel: &[u8]) -> io::Result<OwnedFd> {
    openat2(
        root,
        Path::new(OsStr::from_bytes(rel)),
        libc::O_PATH | libc::O_DIRECTORY,
        0,
        RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS,
    )
}

pub fn open_path(path: &Path) -> io::Result<OwnedFd> {
    let p = c(path.as_os_str().as_bytes())?;
    // SAFETY: a valid C string; the result is checked.
    let fd = check(unsafe {
        libc::open(
            p.as_ptr(),
            libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
    })?;
    // SAFETY: a fresh descriptor we own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

pub fn lstat_at(dir: RawFd, name: &CStr) -> io::Result<Option<libc::stat>> {
    // SAFETY: zeroed stat is a valid out-parameter.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: valid descriptor, C string and out-parameter.
    let r = unsafe { libc::fstatat(dir, name.as_ptr(), &mut st, libc::AT_SYMLINK_NOFOLLOW) };
    if r < 0 {
        let e = io::Error::last_os_error();
        return if e.raw_os_error() == Some(libc::ENOENT) {
            Ok(None)
        } else {
            Err(e)
        };
    }
    Ok(Some(st))
}

pub fn fstat(fd: RawFd) -> io::Result<libc::stat> {
    // SAFETY: as above.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: empty path with AT_EMPTY_PATH stats the descriptor itself (O_PATH ones too).
    check(unsafe { libc::fstatat(fd, c"".as_ptr(), &mut st, libc::AT_EMPTY_PATH) })?;
    Ok(st)
}

pub fn is_dir(st: &libc::stat) -> bool {
    st.st_mode & libc::S_IFMT == libc::S_IFDIR
}

pub fn mkdir_at(dir: RawFd, name: &CStr, mode: u32) -> io::Result<()> {
    // SAFETY: valid descriptor and C string.
    check(unsafe { libc::mkdirat(dir, name.as_ptr(), mode) }).map(drop)
}

pub fn readlink_at(dir: RawFd, name: &CStr) -> Option<Vec<u8>> {
    let mut buf = vec![0u8; libc::PATH_MAX as usize];
    // SAFETY: the buffer is as long as we say.
    let n = unsafe { libc::readlinkat(dir, name.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    if n < 0 {
        return None;
    }
    buf.truncate(n as usize);
    Some(buf)
}

pub fn open_at(dir: RawFd, name: &CStr, flags: i32, mode: u32) -> io::Result<OwnedFd> {
    // SAFETY: valid descriptor and C string; the result is checked.
    let fd = check(unsafe {
        libc::openat(
            dir,
            name.as_ptr(),
            flags | libc::O_NOFOLLOW | libc::O_CLOEXEC,
            mode,
        )
    })?;
    // SAFETY: a fresh descriptor we own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

pub fn chown_at(dir: RawFd, name: &CStr, uid: u32, gid: u32) -> io::Result<()> {
    // SAFETY: valid descriptor and C string.
    check(unsafe { libc::fchownat(dir, name.as_ptr(), uid, gid, libc::AT_SYMLINK_NOFOLLOW) })
        .map(drop)
}

/// chmod of a name that is not a symlink (fchmodat cannot refuse to follow one on older
/// kernels; the callers made or checked the entry just before).
pub fn chmod_at(dir: RawFd, name: &CStr, mode: u32) -> io::Result<()> {
    // SAFETY: valid descriptor and C string.
    check(unsafe { libc::fchmodat(dir, name.as_ptr(), mode, 0) }).map(drop)
}

pub fn fchown(fd: RawFd, uid: u32, gid: u32) -> io::Result<()> {
    // SAFETY: a valid descriptor.
    check(unsafe { libc::fchown(fd, uid, gid) }).map(drop)
}

pub fn fchmod(fd: RawFd, mode: u32) -> io::Result<()> {
    // SAFETY: a valid descriptor.
    check(unsafe { libc::fchmod(fd, mode) }).map(drop)
}

fn times(ns: i128) -> [libc::timespec; 2] {
    let t = libc::timespec {
        tv_sec: ns.div_euclid(1_000_000_000) as libc::time_t,
        tv_nsec: ns.rem_euclid(1_000_000_000) as libc::c_long,
    };
    [t, t]
}

pub fn futimens(fd: RawFd, ns: i128) -> io::Result<()> {
    // SAFETY: a valid descriptor and two timespecs.
    check(unsafe { libc::futimens(fd, times(ns).as_ptr()) }).map(drop)
}

/// Sets the times of `name` itself (a symlink's own times).
pub fn utimens_at(dir: RawFd, name: &CStr, ns: i128) -> io::Result<()> {
    // SAFETY: valid descriptor, C string and two timespecs.
    check(unsafe {
        libc::utimensat(
            dir,
            name.as_ptr(),
            times(ns).as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    })
    .map(drop)
}

/// The times of the directory behind an O_PATH descriptor (futimens refuses those).
pub fn utimens_fd_path(fd: &OwnedFd, ns: i128) -> io::Result<()> {
    let p = c(format!("/proc/self/fd/{}", fd.as_raw_fd()).as_bytes())?;
    // SAFETY: a valid C string and two timespecs.
    check(unsafe { libc::utimensat(libc::AT_FDCWD, p.as_ptr(), times(ns).as_ptr(), 0) }).map(drop)
}

pub fn symlink_at(target: &CStr, dir: RawFd, name: &CStr) -> io::Result<()> {
    // SAFETY: valid C strings and descriptor.
    check(unsafe { libc::symlinkat(target.as_ptr(), dir, name.as_ptr()) }).map(drop)
}

pub fn link_at(from_dir: RawFd, from: &CStr, to_dir: RawFd, to: &CStr) -> io::Result<()> {
    // SAFETY: valid C strings and descriptors; flags 0: a symlink is linked, not followed.
    check(unsafe { libc::linkat(from_dir, from.as_ptr(), to_dir, to.as_ptr(), 0) }).map(drop)
}

pub fn mknod_at(dir: RawFd, name: &CStr, mode: u32, dev: libc::dev_t) -> io::Result<()> {
    // SAFETY: valid descriptor and C string.
    check(unsafe { libc::mknodat(dir, name.as_ptr(), mode, dev) }).map(drop)
}

pub fn fsetxattr(fd: RawFd, name: &CStr, value: &[u8]) -> io::Result<()> {
    // SAFETY: the value slice is as long as we say.
    check(unsafe { libc::fsetxattr(fd, name.as_ptr(), value.as_ptr().cast(), value.len(), 0) })
        .map(drop)
}

/// Xattrs of the directory behind an O_PATH descriptor, through its /proc path.
pub fn setxattr_dir(dir: &OwnedFd, name: &CStr, value: &[u8]) -> io::Result<()> {
    let p = c(format!("/proc/self/fd/{}", dir.as_raw_fd()).as_bytes())?;
    // SAFETY: valid C strings; the value slice is as long as we say.
    check(unsafe {
        libc::setxattr(
            p.as_ptr(),
            name.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    })
    .map(drop)
}

pub fn getxattr_dir(dir: &OwnedFd, name: &CStr) -> Option<Vec<u8>> {
    let p = c(format!("/proc/self/fd/{}", dir.as_raw_fd()).as_bytes()).ok()?;
    let mut buf = [0u8; 16];
    // SAFETY: the buffer is as long as we say.
    let n = unsafe {
        libc::getxattr(
            p.as_ptr(),
            name.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    (n >= 0).then(|| buf[..n as usize].to_vec())
}

/// The names in the directory behind `dir` (an O_PATH descriptor is reopened for reading).
pub fn list_dir(dir: RawFd, name: &CStr) -> io::Result<Vec<CString>> {
    let fd = open_at(dir, name, libc::O_RDONLY | libc::O_DIRECTORY, 0)?;
    // SAFETY: fdopendir takes over the descriptor we give up.
    let d = unsafe { libc::fdopendir(std::os::fd::IntoRawFd::into_raw_fd(fd)) };
    if d.is_null() {
        return Err(io::Error::last_os_error());
    }
    let mut out = Vec::new();
    loop {
        // SAFETY: d is an open DIR*; the entry stays valid until the next readdir.
        let e = unsafe { libc::readdir(d) };
        if e.is_null() {
            break;
        }
        // SAFETY: d_name is a NUL-terminated name inside the entry.
        let n = unsafe { CStr::from_ptr((*e).d_name.as_ptr()) };
        if n.to_bytes() != b"." && n.to_bytes() != b".." {
            out.push(n.to_owned());
        }
    }
    // SAFETY: closes the DIR* (and its descriptor) once.
    unsafe { libc::closedir(d) };
    Ok(out)
}

/// Removes whatever is at `name` under `dir`, a whole tree for a directory, never following a
/// symlink.
pub fn remove_at(dir: RawFd, name: &CStr) -> io::Result<()> {
    let Some(st) = lstat_at(dir, name)? else {
        return Ok(());
    };
    if is_dir(&st) {
        let sub = open_at(dir, name, libc::O_PATH | libc::O_DIRECTORY, 0)?;
        for child in list_dir(dir, name)? {
            remove_at(sub.as_raw_fd(), &child)?;
        }
        // SAFETY: valid descriptor and C string.
        check(unsafe { libc::unlinkat(dir, name.as_ptr(), libc::AT_REMOVEDIR) }).map(drop)
    } else {
        // SAFETY: valid descriptor and C string.
        check(unsafe { libc::unlinkat(dir, name.as_ptr(), 0) }).map(drop)
    }
}
