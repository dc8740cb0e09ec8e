//! The container's root: the root mount itself, the spec's mounts inside it, `pivot_root`, then
//! masked and read-only paths. Every path inside the root is resolved through a descriptor of the
//! root with `RESOLVE_IN_ROOT`, so an image's symlinks can never point a mount outside it
//! (CVE-2021-30465 and relatives); mounts then target `/proc/self/fd/N` of the resolved file.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use super::inroot::ensure_in_root;
use crate::plan::{Mount, MountKind, Root, RootSource};
use crate::report::{SetupError, Stage};
use crate::syscall::{self, cpath, cstring, fd_path, open_in_root};

type Result<T> = std::result::Result<T, SetupError>;

fn mount_err(stage: Stage, what: String) -> impl FnOnce(io::Error) -> SetupError {
    move |e| SetupError::io(stage, what, &e)
}

/// Makes every mount in our (new) namespace private, so nothing we mount propagates back to the
/// host and `pivot_root` is allowed; with `slave`, a slave of the host's instead: mounts still
/// never propagate back, but the host's new mounts reach the container's binds and root
/// (`rslave`, runc's default). pivot_root accepts a slave root.
pub fn make_private(slave: bool) -> Result<()> {
    let (kind, what) = if slave {
        (libc::MS_SLAVE, "making / a slave of the host's")
    } else {
        (libc::MS_PRIVATE, "making / private")
    };
    syscall::mount(None, c"/", None, libc::MS_REC | kind, None)
        .map_err(mount_err(Stage::Rootfs, what.into()))
}

/// The overlay root, mounted `volatile`: overlayfs then never syncs its upper layer's
/// filesystem, neither while the container runs nor at the unmount when its last process
/// exits, which is on the path of every removal and reset (0.35 ms on this VM's /run). A
/// container's writable layer does not outlive a crash of the machine in any case.
///
/// A volatile mount leaves a mark in the work directory, and overlayfs refuses to mount a
/// layer again while it is there (`pyrt-runc` starting the same bundle twice; pyrt's own
/// stopped-container view clears it itself): on EINVAL the mark is cleared and the mount tried
/// again, and a kernel without `volatile` (before 5.10) gets the mount without it.
fn mount_overlay(ov: &crate::plan::Overlay, target: &std::ffi::CStr) -> io::Result<()> {
    match overlay_once(ov, target, true) {
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
            clear_volatile_mark(&ov.work);
            match overlay_once(ov, target, true) {
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => overlay_once(ov, target, false),
                r => r,
            }
        }
        r => r,
    }
}

fn overlay_once(
    ov: &crate::plan::Overlay,
    target: &std::ffi::CStr,
    volatile: bool,
) -> io::Result<()> {
    let data = overlay_options(ov, volatile);
    if data.len() < OVERLAY_OPTIONS_MAX {
        let data = cstring(data)?;
        return syscall::mount(Some(c"overlay"), target, Some(c"overlay"), 0, Some(&data));
    }
    // Too long for mount(2)'s one page of options: many layers.
    let lower = ov
        .lower
        .iter()
        .map(|p| cpath(p))
        .collect::<io::Result<Vec<_>>>()?;
    let flags = [(c"userxattr", ov.userxattr), (c"volatile", volatile)];
    syscall::mount_overlay_fs(
        &lower,
        &cpath(&ov.upper)?,
        &cpath(&ov.work)?,
        &flags,
        target,
    )
}

/// Removes overlayfs's `work/incompat/volatile` mark from the work directory `work` (what
/// is absent is no error: the mount that follows says what is wrong).
fn clear_volatile_mark(work: &Path) {
    let mark = work.join("work/incompat");
    let _ = std::fs::remove_file(mark.join("volatile/dirty"));
    let _ = std::fs::remove_dir(mark.join("volatile"));
    let _ = std::fs::remove_dir(&mark);
}

/// mount(2)'s options for the overlay.
fn overlay_options(ov: &crate::plan::Overlay, volatile: bool) -> String {
    let lower: Vec<String> = ov.lower.iter().map(|p| p.display().to_string()).collect();
    format!(
        "lowerdir={},upperdir={},workdir={}{}{}",
        lower.join(":"),
        ov.upper.display(),
        ov.work.display(),
        if ov.userxattr { ",userxattr" } else { "" },
        if volatile { ",volatile" } else { "" },
    )
}

/// The most lower layers overlayfs stacks (its `OVL_MAX_STACK`), on every kernel.
const OVERLAY_MAX_STACK: usize = 500;

/// What a failed overlay mount says: more layers than overlayfs stacks, or one through the new
/// mount API (too many layers for mount(2)'s options), which needs Linux 6.8.
fn overlay_failure(ov: &crate::plan::Overlay, shown: &std::path::Display<'_>) -> String {
    let what = format!("mounting the overlay root on {shown}");
    let n = ov.lower.len();
    if n > OVERLAY_MAX_STACK {
        format!("{what} ({n} layers: overlayfs stacks at most {OVERLAY_MAX_STACK})")
    } else if overlay_options(ov, false).len() < OVERLAY_OPTIONS_MAX {
        what
    } else {
        format!("{what} ({n} layers: needs Linux 6.8 for this many)")
    }
}

/// A scratch layer (`Overlay::scratch`): a tmpfs mounted on the root's own mount point, in
/// our namespace, holding the upper and work directories; the overlay is then mounted over it
/// on the same point. overlayfs keeps its own reference to the tmpfs, so the tmpfs leaves the
/// container's view with the old root at `pivot_root`, and is freed with the overlay when the
/// namespace ends. Its directories are made by us, so in a user namespace they are the
/// container's root's. Returns the overlay with the directories filled in.
///
/// The tmpfs holds what the file system of the mount point (pyrt's state directory, where the
/// layer would otherwise be) has free, in bytes and in inodes: the container can write no
/// more than it could have there, and never more than tmpfs's own default of half the memory.
fn scratch_layer(
    ov: &crate::plan::Overlay,
    path: &Path,
    target: &std::ffi::CStr,
) -> Result<crate::plan::Overlay> {
    let what = |w: &str| mount_err(Stage::Rootfs, format!("{w} for the scratch layer"));
    let options = scratch_options(target).map_err(what("reading the state's free space"))?;
    syscall::mount(
        Some(c"pyrt-layer"),
        target,
        Some(c"tmpfs"),
        libc::MS_NOSUID | libc::MS_NODEV,
        Some(&options),
    )
    .map_err(what("mounting a tmpfs"))?;
    let (upper, work) = (path.join("upper"), path.join("work"));
    // (The mode of the upper directory is the root directory's, as the image gives none.)
    for (dir, mode) in [(&upper, 0o755), (&work, 0o700)] {
        std::fs::DirBuilder::new()
            .mode(mode)
            .create(dir)
            .map_err(what("making its directories"))?;
    }
    Ok(crate::plan::Overlay {
        upper,
        work,
        scratch: false,
        ..ov.clone()
    })
}

/// tmpfs's options for a scratch layer on `target`'s file system (`scratch_layer`). tmpfs
/// reads a size or inode count of 0 as no bound at all, so a full file system gives the
/// smallest it takes instead.
#[allow(clippy::useless_conversion)] // (statvfs's counts are 32-bit on 32-bit targets)
fn scratch_options(target: &std::ffi::CStr) -> io::Result<CString> {
    // SAFETY: statvfs fills the zeroed struct it is given.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(target.as_ptr(), &mut st) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // tmpfs's default, half the memory (in pages of 4 KiB, as the sizes below).
    // SAFETY: sysconf takes no pointers.
    let memory = u64::try_from(unsafe { libc::sysconf(libc::_SC_PHYS_PAGES) }).unwrap_or(0);
    let half = (memory / 2).max(1);
    let pages = u64::from(st.f_bavail).saturating_mul(u64::from(st.f_frsize)) / 4096;
    let mut opts = format!("mode=700,size={}", pages.clamp(1, half) * 4096);
    if st.f_files > 0 {
        // (A file system without a count of inodes, such as btrfs, reports none.)
        opts += &format!(",nr_inodes={}", u64::from(st.f_favail).clamp(1, half));
    }
    cstring(opts)
}

/// Mounts the root on `root.path` and returns a descriptor of it.
pub fn mount_root(root: &Root) -> Result<OwnedFd> {
    let target = cpath(&root.path).map_err(mount_err(Stage::Rootfs, "root path".into()))?;
    let shown = root.path.display();
    match &root.source {
        RootSource::InPlace => syscall::mount(
            Some(&target),
            &target,
            None,
            libc::MS_BIND | libc::MS_REC,
            None,
        )
        .map_err(mount_err(
            Stage::Rootfs,
            format!("bind mounting the root {shown}"),
        ))?,
        RootSource::Bind(src) => {
            let s = cpath(src).map_err(mount_err(Stage::Rootfs, "root source".into()))?;
            syscall::mount(Some(&s), &target, None, libc::MS_BIND | libc::MS_REC, None).map_err(
                mount_err(
                    Stage::Rootfs,
                    format!("bind mounting {} as the root", src.display()),
                ),
            )?
        }
        RootSource::Overlay(ov) if ov.scratch => {
            let ov = scratch_layer(ov, &root.path, &target)?;
            mount_overlay(&ov, &target)
                .map_err(|e| SetupError::io(Stage::Rootfs, overlay_failure(&ov, &shown), &e))?
        }
        RootSource::Overlay(ov) => mount_overlay(ov, &target)
            .map_err(|e| SetupError::io(Stage::Rootfs, overlay_failure(ov, &shown), &e))?,
    }
    let fd = syscall::openat2(
        libc::AT_FDCWD,
        &root.path,
        libc::O_PATH | libc::O_DIRECTORY,
        0,
        0,
    )
    .map_err(mount_err(
        Stage::Rootfs,
        format!("opening the root {shown}"),
    ))?;
    if root.readonly && matches!(root.source, RootSource::Bind(_)) {
        // A host directory as root: make it and everything under it read-only before any mount
        // target is created, so that a missing target can never be created on the host.
        syscall::mount_setattr(&fd, syscall::MOUNT_ATTR_RDONLY, 0, true).map_err(mount_err(
            Stage::Rootfs,
            format!("making the root {shown} read-only"),
        ))?;
    }
    Ok(fd)
}

/// A bind mount whose target resolves (through the image's symlinks) onto procfs or sysfs is
/// refused unless the spec names a path under /proc or /sys itself: shadowing procfs files is
/// how CVE-2019-19921 and CVE-2023-27561 got a writable /proc/self/attr past the LSMs. The
/// check is on the filesystem the opened target is on, not on a path that could be raced.
fn refuse_into_proc(target: &OwnedFd, dest: &Path) -> Result<()> {
    const PROC_SUPER_MAGIC: u64 = 0x9fa0;
    const SYSFS_MAGIC: u64 = 0x6265_6572;
    if dest.starts_with("/proc") || dest.starts_with("/sys") {
        return Ok(());
    }
    let magic = nix::sys::statfs::fstatfs(target)
        // The magic's integer type differs between glibc and musl: compare as u64.
        .map(|st| st.filesystem_type().0 as u64)
        .map_err(|e| {
            SetupError::io(
                Stage::Mount,
                format!("statfs of mount target {}", dest.display()),
                &io::Error::from(e),
            )
        })?;
    if magic == PROC_SUPER_MAGIC || magic == SYSFS_MAGIC {
        return Err(SetupError::new(
            Stage::Mount,
            libc::EPERM,
            format!(
                "mount target {} resolves into /proc or /sys: mounting over /proc or /sys is refused",
                dest.display()
            ),
        ));
    }
    Ok(())
}

/// An image whose /proc, /sys or /dev is a symlink is refused: mounts there would land wherever
/// the link points (CVE-2019-16884 and relatives). Resolution inside the root would keep them in
/// it, but such an image is malformed or hostile either way.
pub fn refuse_special_symlinks(root: &OwnedFd) -> Result<()> {
    for name in ["proc", "sys", "dev"] {
        let c = cstring(name).map_err(mount_err(Stage::Rootfs, name.into()))?;
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: fstatat with a valid descriptor, name and out-parameter.
        let r = unsafe {
            libc::fstatat(
                root.as_raw_fd(),
                c.as_ptr(),
                &mut st,
                libc::AT_SYMLINK_NOFOLLOW,
            )
        };
        if r == 0 && st.st_mode & libc::S_IFMT == libc::S_IFLNK {
            return Err(SetupError::new(
                Stage::Rootfs,
                libc::ELOOP,
                format!("the image's /{name} is a symlink; refusing to mount over it"),
            ));
        }
    }
    Ok(())
}

/// mount(2) copies at most one page of options; longer overlay options go through fsconfig.
const OVERLAY_OPTIONS_MAX: usize = 4000;

/// Flags of the mount `fd` sits on that a remount must keep: in a user namespace the kernel
/// refuses to clear "locked" flags inherited from the host's mount.
fn locked_flags(fd: &OwnedFd) -> u64 {
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: st is a valid out-parameter.
    if unsafe { libc::fstatvfs(fd.as_raw_fd(), &mut st) } != 0 {
        return 0;
    }
    let f = st.f_flag;
    let mut out = 0;
    for (st_bit, ms_bit) in [
        (libc::ST_NOSUID, libc::MS_NOSUID),
        (libc::ST_NODEV, libc::MS_NODEV),
        (libc::ST_NOEXEC, libc::MS_NOEXEC),
        (libc::ST_NOATIME, libc::MS_NOATIME),
        (libc::ST_NODIRATIME, libc::MS_NODIRATIME),
        // ST_RELATIME is the kernel's statfs bit 0x1000; musl's headers leave it out.
        (0x1000, libc::MS_RELATIME),
    ] {
        if f & st_bit != 0 {
            out |= ms_bit;
        }
    }
    out
}

/// Mounts `m`, one of the spec's mounts, in the root; `cgroups`: the host's cgroup
/// hierarchies, when the parent read them (`Plan::host_cgroups`), and `cgroup_tree` the layout
/// it made of them ahead (`Plan::cgroup_tree_fd`), for the first `cgroup` mount to take.
pub fn mount_one(
    root: &OwnedFd,
    m: &Mount,
    cgroups: Option<&[super::cgroupfs::Hierarchy]>,
    cgroup_tree: &mut Option<OwnedFd>,
) -> Result<()> {
    let dest = m.destination.display();
    let fl = &m.flags;
    match &m.kind {
        MountKind::Bind { source, recursive } => {
            let src = cpath(source).map_err(mount_err(Stage::Mount, "bind source".into()))?;
            // SAFETY: the detached, idmapped mount the parent handed down for this mount.
            let detached = m
                .idmap
                .as_ref()
                .and_then(|i| i.fd)
                .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) });
            // An idmapped source was opened by the parent, and may be out of reach of the
            // container's root (a caller's 0700 directory): its type comes from the descriptor.
            let meta = match &detached {
                Some(d) => std::fs::File::from(d.try_clone().map_err(mount_err(
                    Stage::Mount,
                    "duplicating the idmapped mount".into(),
                ))?)
                .metadata(),
                None => std::fs::metadata(source),
            };
            let meta = meta.map_err(|e| match e.raw_os_error() {
                Some(libc::ENOENT) => SetupError::new(
                    Stage::Mount,
                    libc::ENOENT,
                    format!("bind source does not exist: {}", source.display()),
                ),
                _ => SetupError::io(
                    Stage::Mount,
                    format!("bind source {}", source.display()),
                    &e,
                ),
            })?;
            let target = ensure_in_root(root, &m.destination, !meta.is_dir()).map_err(
                mount_err(Stage::Mount, format!("creating mount target {dest}")),
            )?;
            refuse_into_proc(&target, &m.destination)?;
            if let Some(detached) = detached {
                syscall::move_mount_to(&detached, &target).map_err(mount_err(
                    Stage::Mount,
                    format!("attaching the idmapped {} on {dest}", source.display()),
                ))?;
            } else {
                let rec = if *recursive { libc::MS_REC } else { 0 };
                syscall::mount(
                    Some(&src),
                    &fd_path(&target),
                    None,
                    libc::MS_BIND | rec,
                    None,
                )
                .map_err(mount_err(
                    Stage::Mount,
                    format!("bind mounting {} on {dest}", source.display()),
                ))?;
            }
            // Bind mounts ignore every flag but MS_BIND|MS_REC; the flags take a remount of the
            // new mount, reached by opening the target again.
            let extra = fl.flags & !(libc::MS_REMOUNT);
            if extra != 0 {
                let top = open_in_root(root.as_raw_fd(), strip(&m.destination), libc::O_PATH)
                    .map_err(mount_err(Stage::Mount, format!("reopening {dest}")))?;
                let flags = libc::MS_REMOUNT | libc::MS_BIND | extra | locked_flags(&top);
                syscall::mount(None, &fd_path(&top), None, flags, None).map_err(mount_err(
                    Stage::Mount,
                    format!("remounting {dest} with its options"),
                ))?;
            }
            recursive_attrs(root, m)?;
            propagate(root, m)
        }
        // runc's convention: "cgroup" stands for the host's whole cgroup layout.
        MountKind::Fs { fstype, .. } if fstype == "cgroup" => {
            super::cgroupfs::mount(root, &m.destination, cgroups, cgroup_tree.take())
        }
        MountKind::Fs { fstype, source } => {
            let target = ensure_in_root(root, &m.destination, false).map_err(mount_err(
                Stage::Mount,
                format!("creating mount target {dest}"),
            ))?;
            let t = cstring(fstype.as_bytes()).map_err(mount_err(Stage::Mount, "fstype".into()))?;
            let s = cstring(source.as_bytes()).map_err(mount_err(Stage::Mount, "source".into()))?;
            let data: Option<CString> = if fl.data.is_empty() {
                None
            } else {
                Some(
                    cstring(fl.data.as_bytes())
                        .map_err(mount_err(Stage::Mount, "mount data".into()))?,
                )
            };
            syscall::mount(
                Some(&s),
                &fd_path(&target),
                Some(&t),
                fl.flags & !libc::MS_REMOUNT,
                data.as_deref(),
            )
            .map_err(mount_err(
                Stage::Mount,
                format!("mounting {fstype} on {dest}"),
            ))?;
            recursive_attrs(root, m)?;
            propagate(root, m)
        }
    }
}

fn strip(p: &Path) -> &Path {
    p.strip_prefix("/").unwrap_or(p)
}

/// The recursive words (`rro`, `rnosuid`, ...): mount_setattr on the new mount and everything
/// below it, which mount(2)'s remount cannot do.
fn recursive_attrs(root: &OwnedFd, m: &Mount) -> Result<()> {
    if m.flags.attr_set == 0 && m.flags.attr_clear == 0 {
        return Ok(());
    }
    let dest = m.destination.display();
    let top = open_in_root(root.as_raw_fd(), strip(&m.destination), libc::O_PATH)
        .map_err(mount_err(Stage::Mount, format!("reopening {dest}")))?;
    syscall::mount_setattr(&top, m.flags.attr_set, m.flags.attr_clear, true).map_err(mount_err(
        Stage::Mount,
        format!("setting the recursive options of {dest}"),
    ))
}

fn propagate(root: &OwnedFd, m: &Mount) -> Result<()> {
    if m.flags.propagation == 0 {
        return Ok(());
    }
    let top =
        open_in_root(root.as_raw_fd(), strip(&m.destination), libc::O_PATH).map_err(mount_err(
            Stage::Mount,
            format!("reopening {}", m.destination.display()),
        ))?;
    syscall::mount(None, &fd_path(&top), None, m.flags.propagation, None).map_err(mount_err(
        Stage::Mount,
        format!("setting propagation of {}", m.destination.display()),
    ))
}

/// `pivot_root(".", ".")` then detaching the old root, which leaves no directory to clean up and
/// needs no writable root (runc's approach).
pub fn pivot(root: &OwnedFd) -> Result<()> {
    let err = |what: &'static str| {
        move |e: nix::Error| SetupError::io(Stage::PivotRoot, what, &io::Error::from(e))
    };
    nix::unistd::fchdir(root).map_err(err("entering the root"))?;
    nix::unistd::pivot_root(".", ".").map_err(err("pivot_root"))?;
    // The old root is now stacked under the new one at "/": make it a slave so our detach cannot
    // propagate anywhere, then detach it.
    syscall::mount(None, c".", None, libc::MS_SLAVE | libc::MS_REC, None)
        .map_err(|e| SetupError::io(Stage::PivotRoot, "making the old root a slave", &e))?;
    nix::mount::umount2(".", nix::mount::MntFlags::MNT_DETACH)
        .map_err(err("detaching the old root"))?;
    nix::unistd::chdir("/").map_err(err("chdir /"))?;
    Ok(())
}

/// A masked or read-only path of the spec, opened inside the root without following it; None
/// when it does not exist.
fn open_listed(root: &OwnedFd, p: &Path) -> Result<Option<OwnedFd>> {
    match open_in_root(root.as_raw_fd(), strip(p), libc::O_PATH | libc::O_NOFOLLOW) {
        Ok(fd) => Ok(Some(fd)),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(None),
        Err(e) => Err(SetupError::io(
            Stage::MaskedPaths,
            format!("opening {}", p.display()),
            &e,
        )),
    }
}

/// Before pivot_root, once the container's /proc and /sys are mounted: hides each masked path
/// (an empty read-only tmpfs over a directory, the host's /dev/null over a file, so that it does
/// not matter what the container's own /dev holds) and makes each read-only path so. Paths are
/// resolved inside the root. Missing paths are skipped, as runc does: the list is a deny-list,
/// not a promise that the paths exist.
pub fn mask_and_protect(root: &OwnedFd, masked: &[PathBuf], readonly: &[PathBuf]) -> Result<()> {
    for p in masked {
        let Some(fd) = open_listed(root, p)? else {
            continue;
        };
        let is_dir = nix::sys::stat::fstat(&fd)
            .map(|st| st.st_mode & libc::S_IFMT == libc::S_IFDIR)
            .unwrap_or(false);
        let r = if is_dir {
            syscall::mount(
                Some(c"tmpfs"),
                &fd_path(&fd),
                Some(c"tmpfs"),
                libc::MS_RDONLY,
                Some(c"size=0k"),
            )
        } else {
            syscall::mount(Some(c"/dev/null"), &fd_path(&fd), None, libc::MS_BIND, None)
        };
        r.map_err(mount_err(
            Stage::MaskedPaths,
            format!("masking {}", p.display()),
        ))?;
    }
    for p in readonly {
        let Some(fd) = open_listed(root, p)? else {
            continue;
        };
        let path = fd_path(&fd);
        syscall::mount(Some(&path), &path, None, libc::MS_BIND | libc::MS_REC, None).map_err(
            mount_err(
                Stage::MaskedPaths,
                format!("bind mounting {} read-only", p.display()),
            ),
        )?;
        let top =
            open_in_root(root.as_raw_fd(), strip(p), libc::O_PATH | libc::O_NOFOLLOW).map_err(
                mount_err(Stage::MaskedPaths, format!("reopening {}", p.display())),
            )?;
        let flags = libc::MS_REMOUNT | libc::MS_BIND | libc::MS_RDONLY | locked_flags(&top);
        syscall::mount(None, &fd_path(&top), None, flags, None).map_err(mount_err(
            Stage::MaskedPaths,
            format!("making {} read-only", p.display()),
        ))?;
    }
    Ok(())
}

/// Gives "/" the propagation `flags` (`linux.rootfsPropagation`).
pub fn set_root_propagation(flags: u64) -> Result<()> {
    syscall::mount(None, c"/", None, flags, None).map_err(mount_err(
        Stage::Rootfs,
        "setting the propagation of /".into(),
    ))
}

/// Remounts "/" read-only (not recursively: /proc, /dev, /tmp mounts keep their own flags).
pub fn readonly_root() -> Result<()> {
    let root = syscall::openat2(
        libc::AT_FDCWD,
        Path::new("/"),
        libc::O_PATH | libc::O_DIRECTORY,
        0,
        0,
    )
    .map_err(mount_err(Stage::Rootfs, "opening /".into()))?;
    let flags = libc::MS_REMOUNT | libc::MS_BIND | libc::MS_RDONLY | locked_flags(&root);
    syscall::mount(None, c"/", None, flags, None)
        .map_err(mount_err(Stage::Rootfs, "making / read-only".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn overlay(n: usize) -> crate::plan::Overlay {
        crate::plan::Overlay {
            lower: (0..n)
                .map(|i| PathBuf::from(format!("/var/lib/pyrt/layers/{i:064}")))
                .collect(),
            upper: "/run/pyrt/u".into(),
            work: "/run/pyrt/w".into(),
            userxattr: false,
            scratch: false,
        }
    }

    #[test]
    fn a_failed_overlay_mount_names_its_likely_cause() {
        let p = PathBuf::from("/mnt");
        let shown = p.display();
        assert_eq!(
            overlay_failure(&overlay(3), &shown),
            "mounting the overlay root on /mnt"
        );
        assert!(overlay_failure(&overlay(100), &shown).ends_with("needs Linux 6.8 for this many)"));
        assert!(overlay_failure(&overlay(501), &shown)
            .ends_with("(501 layers: overlayfs stacks at most 500)"));
    }
}
