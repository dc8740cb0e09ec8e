//! Thin, typed wrappers of the syscalls the core needs that `nix` does not cover the way we use
//! them: `openat2` with `RESOLVE_IN_ROOT`, `mount_setattr`, and mount(2) with raw flag words.
//! Each returns `std::io::Error` so that callers keep the errno for the Python exception.

use std::ffi::{CStr, CString};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

pub fn cstring(p: impl AsRef<[u8]>) -> io::Result<CString> {
    CString::new(p.as_ref()).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}

pub fn cpath(p: &Path) -> io::Result<CString> {
    cstring(p.as_os_str().as_bytes())
}

fn check(r: libc::c_long) -> io::Result<libc::c_long> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// mount(2). `source`, `fstype` and `data` may be absent.
pub fn mount(
    source: Option<&CStr>,
    target: &CStr,
    fstype: Option<&CStr>,
    flags: u64,
    data: Option<&CStr>,
) -> io::Result<()> {
    let p = |c: Option<&CStr>| c.map_or(std::ptr::null(), |c| c.as_ptr());
    // SAFETY: every pointer is a valid NUL-terminated string or null, as mount(2) allows.
    let r = unsafe {
        libc::mount(
            p(source),
            target.as_ptr(),
            p(fstype),
            flags as libc::c_ulong,
            p(data) as *const libc::c_void,
        )
    };
    check(r as libc::c_long).map(|_| ())
}

#[repr(C)]
struct OpenHow {
    flags: u64,
    mode: u64,
    resolve: u64,
}

pub const RESOLVE_NO_MAGICLINKS: u64 = 0x02;
pub const RESOLVE_NO_SYMLINKS: u64 = 0x04;
pub const RESOLVE_IN_ROOT: u64 = 0x10;

/// openat2(2): opens `path` relative to `dirfd` with the given resolve restrictions.
pub fn openat2(
    dirfd: RawFd,
    path: &Path,
    flags: i32,
    mode: u32,
    resolve: u64,
) -> io::Result<OwnedFd> {
    let c = cpath(path)?;
    let how = OpenHow {
        flags: (flags | libc::O_CLOEXEC) as u64,
        mode: mode as u64,
        resolve,
    };
    // SAFETY: `how` is a valid open_how of the size we pass; `c` outlives the call.
    let fd = check(unsafe {
        libc::syscall(
            libc::SYS_openat2,
            dirfd,
            c.as_ptr(),
            &how as *const OpenHow,
            std::mem::size_of::<OpenHow>(),
        )
    })?;
    // SAFETY: the kernel just returned this descriptor to us.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// Opens `path` inside the tree rooted at `root` the way the kernel would if `root` were `/`:
/// absolute symlinks and `..` cannot leave it, and /proc magic links are refused.
pub fn open_in_root(root: RawFd, path: &Path, flags: i32) -> io::Result<OwnedFd> {
    openat2(
        root,
        path,
        flags,
        0,
        RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS,
    )
}

#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

pub const MOUNT_ATTR_RDONLY: u64 = 0x1;

/// mount_setattr(2) on the mount that `fd` refers to and, with `recursive`, every mount below it.
pub fn mount_setattr(fd: &OwnedFd, set: u64, clear: u64, recursive: bool) -> io::Result<()> {
    mount_setattr_userns(fd, set, clear, None, recursive)
}

/// mount_setattr(2) with a user namespace, for MOUNT_ATTR_IDMAP.
pub fn mount_setattr_userns(
    fd: &OwnedFd,
    set: u64,
    clear: u64,
    userns: Option<&OwnedFd>,
    recursive: bool,
) -> io::Result<()> {
    let attr = MountAttr {
        attr_set: set,
        attr_clr: clear,
        propagation: 0,
        userns_fd: userns.map_or(0, |u| u.as_raw_fd() as u64),
    };
    let flags = libc::AT_EMPTY_PATH | if recursive { libc::AT_RECURSIVE } else { 0 };
    // SAFETY: the attr struct is valid for the size passed; "" with AT_EMPTY_PATH names `fd`.
    check(unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            fd.as_raw_fd(),
            c"".as_ptr(),
            flags,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    })
    .map(|_| ())
}

/// The /proc/self/fd path of a descriptor, through which mount(2) reaches exactly the file that
/// was opened, however the path to it changes afterwards (the runc approach to mount races).
pub fn fd_path(fd: &OwnedFd) -> CString {
    let s = format!("/proc/self/fd/{}", fd.as_raw_fd());
    CString::new(s).expect("no NUL in a formatted number")
}

/// Closes every descriptor from `first` up; descriptors the Python parent forgot to mark
/// close-on-exec must not reach the container.
pub fn close_from(first: u32) -> io::Result<()> {
    close_from_except(first, &[])
}

/// A pidfd of process `pid` (close-on-exec, as pidfds always are).
pub fn pidfd_open(pid: i32) -> io::Result<OwnedFd> {
    // SAFETY: pidfd_open with no flags.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel just gave us this descriptor.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// `close_from`, leaving open the descriptors in `keep` (those the parent handed down).
pub fn close_from_except(first: u32, keep: &[i32]) -> io::Result<()> {
    let mut keep: Vec<u32> = keep
        .iter()
        .filter_map(|&k| u32::try_from(k).ok())
        .filter(|&k| k >= first)
        .collect();
    keep.sort_unstable();
    keep.dedup();
    let close = |lo: u32, hi: u32| {
        // SAFETY: close_range has no memory arguments.
        check(unsafe { libc::syscall(libc::SYS_close_range, lo, hi, 0u32) }).map(|_| ())
    };
    let mut lo = first;
    for k in keep {
        if k > lo {
            close(lo, k - 1)?;
        }
        lo = k.saturating_add(1);
    }
    close(lo, u32::MAX)
}

const OPEN_TREE_CLONE: u32 = 0x1;

/// open_tree(2) with OPEN_TREE_CLONE: a detached copy of the mount at `path` (and with
/// `recursive`, of the mounts below it), to be changed and then attached with `move_mount_to`.
pub fn open_tree_clone(path: &Path, recursive: bool) -> io::Result<OwnedFd> {
    let p = cpath(path)?;
    let flags = OPEN_TREE_CLONE
        | libc::O_CLOEXEC as u32
        | if recursive {
            libc::AT_RECURSIVE as u32
        } else {
            0
        };
    // SAFETY: a valid path; the result is a new descriptor we own.
    let fd =
        check(unsafe { libc::syscall(libc::SYS_open_tree, libc::AT_FDCWD, p.as_ptr(), flags) })?;
    // SAFETY: open_tree returned a fresh descriptor.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

const MOVE_MOUNT_T_EMPTY_PATH: u32 = 0x40;

/// move_mount(2) of the detached mount `mnt` onto the file `target` was opened on.
pub fn move_mount_to(mnt: &OwnedFd, target: &OwnedFd) -> io::Result<()> {
    // SAFETY: "" with both EMPTY_PATH flags names the two descriptors.
    check(unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            mnt.as_raw_fd(),
            c"".as_ptr(),
            target.as_raw_fd(),
            c"".as_ptr(),
            MOVE_MOUNT_F_EMPTY_PATH | MOVE_MOUNT_T_EMPTY_PATH,
        )
    })
    .map(|_| ())
}

const FSOPEN_CLOEXEC: u32 = 0x1;
const FSCONFIG_SET_FLAG: u32 = 0;
const FSCONFIG_SET_STRING: u32 = 1;
const FSCONFIG_CMD_CREATE: u32 = 6;
const FSMOUNT_CLOEXEC: u32 = 0x1;
const MOVE_MOUNT_F_EMPTY_PATH: u32 = 0x4;

/// fsopen(2): a new filesystem context of type `fstype`, to be set up with `fs_set`.
pub fn fs_open(fstype: &CStr) -> io::Result<OwnedFd> {
    // SAFETY: a valid NUL-terminated name; the result is a new descriptor we own.
    let fs = check(unsafe { libc::syscall(libc::SYS_fsopen, fstype.as_ptr(), FSOPEN_CLOEXEC) })?;
    // SAFETY: fsopen returned a fresh descriptor.
    Ok(unsafe { OwnedFd::from_raw_fd(fs as RawFd) })
}

/// fsconfig(2): sets `key` of the context `fs` to the string `value`, or with None sets the
/// flag `key`.
pub fn fs_set(fs: &OwnedFd, key: &CStr, value: Option<&CStr>) -> io::Result<()> {
    let (cmd, v) = match value {
        Some(v) => (FSCONFIG_SET_STRING, v.as_ptr()),
        None => (FSCONFIG_SET_FLAG, std::ptr::null()),
    };
    // SAFETY: valid strings (or null for a flag), aux 0, as fsconfig takes them.
    check(unsafe { libc::syscall(libc::SYS_fsconfig, fs.as_raw_fd(), cmd, key.as_ptr(), v, 0) })
        .map(|_| ())
}

/// fsconfig(2) command `cmd` (FSCONFIG_CMD_*: create, reconfigure) on the context `fs`.
fn fs_command(fs: &OwnedFd, cmd: u32) -> io::Result<()> {
    // SAFETY: the commands take no key or value.
    check(unsafe {
        libc::syscall(
            libc::SYS_fsconfig,
            fs.as_raw_fd(),
            cmd,
            std::ptr::null::<libc::c_char>(),
            std::ptr::null::<libc::c_void>(),
            0,
        )
    })
    .map(|_| ())
}

/// The filesystem of the set-up context `fs`, created, as a detached mount with the mount
/// attributes `attrs` (MOUNT_ATTR_*), to be attached with move_mount.
pub fn fs_mount(fs: &OwnedFd, attrs: u64) -> io::Result<OwnedFd> {
    fs_command(fs, FSCONFIG_CMD_CREATE)?;
    // SAFETY: fs is a configured filesystem context; the result is a new mount descriptor.
    let mnt =
        check(unsafe { libc::syscall(libc::SYS_fsmount, fs.as_raw_fd(), FSMOUNT_CLOEXEC, attrs) })?;
    // SAFETY: fsmount returned a fresh descriptor.
    Ok(unsafe { OwnedFd::from_raw_fd(mnt as RawFd) })
}

const FSPICK_CLOEXEC: u32 = 0x1;
const FSPICK_EMPTY_PATH: u32 = 0x8;
const FSCONFIG_CMD_RECONFIGURE: u32 = 7;

/// Makes the filesystem of the mount `mnt` read-only itself (its superblock, as a remount with
/// MS_RDONLY does; mount_setattr makes only the mount read-only).
pub fn fs_make_readonly(mnt: &OwnedFd) -> io::Result<()> {
    let flags = FSPICK_CLOEXEC | FSPICK_EMPTY_PATH;
    // SAFETY: "" with FSPICK_EMPTY_PATH names `mnt`; the result is a new descriptor we own.
    let fs =
        check(unsafe { libc::syscall(libc::SYS_fspick, mnt.as_raw_fd(), c"".as_ptr(), flags) })?;
    // SAFETY: fspick returned a fresh descriptor.
    let fs = unsafe { OwnedFd::from_raw_fd(fs as RawFd) };
    fs_set(&fs, c"ro", None)?;
    fs_command(&fs, FSCONFIG_CMD_RECONFIGURE)
}

/// open_tree(2) with OPEN_TREE_CLONE of the mount `fd` refers to and, with `recursive`, of the
/// mounts below it (a detached tree that `fd` names is cloned whole).
pub fn open_tree_clone_fd(fd: &OwnedFd, recursive: bool) -> io::Result<OwnedFd> {
    let flags = OPEN_TREE_CLONE
        | libc::O_CLOEXEC as u32
        | libc::AT_EMPTY_PATH as u32
        | if recursive {
            libc::AT_RECURSIVE as u32
        } else {
            0
        };
    // SAFETY: "" with AT_EMPTY_PATH names `fd`; the result is a new descriptor we own.
    let fd =
        check(unsafe { libc::syscall(libc::SYS_open_tree, fd.as_raw_fd(), c"".as_ptr(), flags) })?;
    // SAFETY: open_tree returned a fresh descriptor.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// move_mount(2) of the detached mount `mnt` onto `name` in the directory `dir` (relative to
/// the current directory with `AT_FDCWD`'s stand-in, None). The directory may itself be in a
/// detached tree (Linux 6.15 mounts on those).
pub fn move_mount_onto(mnt: &OwnedFd, dir: Option<&OwnedFd>, name: &CStr) -> io::Result<()> {
    let dirfd = dir.map_or(libc::AT_FDCWD, AsRawFd::as_raw_fd);
    // SAFETY: "" with F_EMPTY_PATH names `mnt`; `name` is a valid string.
    check(unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            mnt.as_raw_fd(),
            c"".as_ptr(),
            dirfd,
            name.as_ptr(),
            MOVE_MOUNT_F_EMPTY_PATH,
        )
    })
    .map(|_| ())
}

/// An overlay mounted through the new mount API, each lower directory its own "lowerdir+"
/// parameter (Linux 6.8). mount(2) takes the options as one string of at most a page, which
/// caps an image at some forty layers with store paths; this has no such cap. `flags`: the
/// options without a value (`userxattr`, `volatile`), each with whether it is set.
pub fn mount_overlay_fs(
    lower: &[CString],
    upper: &CStr,
    work: &CStr,
    flags: &[(&CStr, bool)],
    target: &CStr,
) -> io::Result<()> {
    let fs = fs_open(c"overlay")?;
    for l in lower {
        fs_set(&fs, c"lowerdir+", Some(l))?;
    }
    fs_set(&fs, c"upperdir", Some(upper))?;
    fs_set(&fs, c"workdir", Some(work))?;
    for (flag, _) in flags.iter().filter(|(_, on)| *on) {
        fs_set(&fs, flag, None)?;
    }
    let mnt = fs_mount(&fs, 0)?;
    move_mount_onto(&mnt, None, target)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn close_from_except_keeps_only_what_it_is_told() {
        // High numbers, clear of the test harness's own descriptors.
        let base = 900;
        let f = std::fs::File::open("/dev/null").unwrap();
        for i in 0..4 {
            // SAFETY: dup2 of our own descriptor onto a free high number.
            assert!(unsafe { libc::dup2(f.as_raw_fd(), base + i) } >= 0);
        }
        close_from_except(base as u32, &[base + 2, 5]).unwrap();
        // SAFETY: F_GETFD only asks whether the number is open.
        let open = |fd| unsafe { libc::fcntl(fd, libc::F_GETFD) } >= 0;
        assert_eq!(
            (0..4).map(|i| open(base + i)).collect::<Vec<_>>(),
            vec![false, false, true, false]
        );
        // SAFETY: closing the one left.
        unsafe { libc::close(base + 2) };
    }
}
