//! Writing one entry (a directory, a file, a symlink, a hard link, a device or a fifo) by a
//! single name under its parent's descriptor, never following a symlink, with its owner, mode,
//! xattrs and times.

use std::ffi::CStr;
use std::io::{self, Read};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};

use tar::EntryType;

use crate::error::LayerError;
use crate::fsops::{self, c};
use crate::inflate;
use crate::meta::Meta;
use crate::options::{Options, Stats};
use crate::tree::{components, shown, Root};

/// Xattrs that steer overlayfs (redirects, metacopy, opacity): only pyrt sets them.
const OVERLAY_XATTRS: [&[u8]; 2] = [b"trusted.overlay.", b"user.overlay."];

/// What went wrong with one entry: the layer itself, a write, or reading its content.
pub(crate) enum Found {
    Layer(LayerError),
    Io(io::Error),
    Read(io::Error),
}

impl From<LayerError> for Found {
    fn from(e: LayerError) -> Self {
        Found::Layer(e)
    }
}

impl From<io::Error> for Found {
    fn from(e: io::Error) -> Self {
        Found::Io(e)
    }
}

pub(crate) fn apply_meta(fd: RawFd, m: &Meta, opts: &Options) -> io::Result<()> {
    if opts.as_root {
        fsops::fchown(fd, m.uid, m.gid)?;
    }
    // chown clears set-id bits, so the mode comes after it.
    fsops::fchmod(fd, m.mode & 0o7777)?;
    for (attr, value) in &m.xattrs {
        if OVERLAY_XATTRS.iter().any(|p| attr.starts_with(p)) {
            continue;
        }
        match fsops::fsetxattr(fd, &c(attr)?, value) {
            // security.* and trusted.* need privilege and a file system that keeps them.
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::EPERM | libc::ENOTSUP | libc::EACCES)
                ) => {}
            r => r?,
        }
    }
    fsops::futimens(fd, m.mtime_ns)
}

/// On the host, what an entry may replace is a regular file or a symlink, as `docker cp` does.
/// A device node, a FIFO or a socket stays (a copy would have turned a host's `/dev/null` into
/// a regular file), and so does a directory, whose files a file entry would have deleted
/// (`docker cp` refuses that too).
fn spare_on_host(st: &libc::stat, m: &Meta) -> Result<(), LayerError> {
    let kind = match st.st_mode & libc::S_IFMT {
        libc::S_IFREG | libc::S_IFLNK => return Ok(()),
        libc::S_IFDIR => "a directory, which is not replaced by a non-directory",
        libc::S_IFCHR | libc::S_IFBLK => "a device node, which pyrt does not replace",
        _ => "a FIFO or a socket, which pyrt does not replace",
    };
    Err(LayerError::Entry {
        entry: shown(&m.name),
        reason: format!("the destination has {kind}"),
    })
}

pub(crate) fn one<R: Read>(
    entry: &mut tar::Entry<'_, R>,
    m: &Meta,
    last: &[u8],
    parent: &OwnedFd,
    root: &mut Root,
    stats: &mut Stats,
    opts: &Options,
) -> Result<(), Found> {
    let dir = parent.as_raw_fd();
    let name = c(last)?;
    let existing = fsops::lstat_at(dir, &name)?;
    let is_dir = m.kind.is_dir();
    if let Some(st) = existing {
        if !(is_dir && fsops::is_dir(&st)) {
            if opts.to_host {
                spare_on_host(&st, m)?;
            }
            fsops::remove_at(dir, &name)?;
        }
    }
    match m.kind {
        EntryType::Directory => {
            if !existing.is_some_and(|st| fsops::is_dir(&st)) {
                fsops::mkdir_at(dir, &name, 0o700)?;
            }
            let fd = fsops::open_at(dir, &name, libc::O_RDONLY | libc::O_DIRECTORY, 0)?;
            apply_meta(fd.as_raw_fd(), m, opts)?;
        }
        EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse => {
            stats.bytes += m.size;
            if stats.bytes > opts.max_bytes {
                return Err(LayerError::Limit(format!(
                    "layer too large: more than {} bytes of content; refusing to unpack",
                    opts.max_bytes
                ))
                .into());
            }
            let fd = fsops::open_at(
                dir,
                &name,
                libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL,
                0o600,
            )?;
            let mut file = std::fs::File::from(fd);
            let copied = copy(entry, &mut file)?;
            // A sparse entry's stored size is not its length; any other must be whole.
            if copied != m.size && m.kind != EntryType::GNUSparse {
                return Err(Found::Read(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!(
                        "the archive ends inside '{}' ({copied} of {} bytes)",
                        shown(&m.name),
                        m.size
                    ),
                )));
            }
            apply_meta(file.as_raw_fd(), m, opts)?;
        }
        EntryType::Symlink => {
            // The link's text is stored as is: it is resolved later inside the container's
            // root (or by this unpacker through RESOLVE_IN_ROOT), never on the host.
            let target = m.link.clone().unwrap_or_default();
            fsops::symlink_at(&c(&target)?, dir, &name)?;
            if opts.as_root {
                fsops::chown_at(dir, &name, m.uid, m.gid)?;
            }
            fsops::utimens_at(dir, &name, m.mtime_ns)?;
        }
        EntryType::Link => hard_link(m, dir, &name, root)?,
        EntryType::Char | EntryType::Block | EntryType::Fifo => {
            let kind = match m.kind {
                EntryType::Char => libc::S_IFCHR,
                EntryType::Block => libc::S_IFBLK,
                _ => libc::S_IFIFO,
            };
            if kind != libc::S_IFIFO && !opts.privileged {
                // Device nodes need CAP_MKNOD of the host: a rootless store skips them (the
                // container's /dev has the standard ones).
                stats.skipped_devices.push(shown(&m.name));
                return Ok(());
            }
            let dev = libc::makedev(m.dev.0, m.dev.1);
            fsops::mknod_at(dir, &name, kind | 0o600, dev)?;
            if opts.as_root {
                fsops::chown_at(dir, &name, m.uid, m.gid)?;
            }
            fsops::chmod_at(dir, &name, m.mode & 0o7777)?;
        }
        other => {
            return Err(LayerError::Entry {
                entry: shown(&m.name),
                reason: format!("unsupported entry type {:?}", other.as_byte() as char),
            }
            .into())
        }
    }
    Ok(())
}

/// Copies an entry's content through a fixed buffer; read errors are the archive's. Returns
/// how many bytes there were.
pub(crate) fn copy<R: Read>(
    entry: &mut tar::Entry<'_, R>,
    out: &mut std::fs::File,
) -> Result<u64, Found> {
    use std::io::Write;
    let mut buf = vec![0u8; inflate::BUF];
    let mut total = 0u64;
    loop {
        let n = match entry.read(&mut buf) {
            Ok(0) => return Ok(total),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(Found::Read(e)),
        };
        out.write_all(&buf[..n])?;
        total += n as u64;
    }
}

pub(crate) fn hard_link(m: &Meta, dir: RawFd, name: &CStr, root: &mut Root) -> Result<(), Found> {
    let link = m.link.clone().unwrap_or_default();
    let tparts = components(&link)?;
    let missing = || LayerError::Entry {
        entry: shown(&m.name),
        reason: format!("hard link target '{}' is not in the image", shown(&link)),
    };
    let Some((tlast, tup)) = tparts.split_last() else {
        return Err(LayerError::Unsafe {
            entry: shown(&m.name),
            reason: "is a hard link to the root itself".into(),
        }
        .into());
    };
    let tparent = match root.open_dir(tup, false, &m.name, 0) {
        Ok(fd) => fd,
        Err(LayerError::Io { source, .. }) if source.raw_os_error() == Some(libc::ENOENT) => {
            return Err(missing().into())
        }
        Err(e) => return Err(e.into()),
    };
    let tname = c(tlast)?;
    match fsops::lstat_at(tparent.as_raw_fd(), &tname)? {
        None => return Err(missing().into()),
        Some(st) if fsops::is_dir(&st) => {
            return Err(LayerError::Unsafe {
                entry: shown(&m.name),
                reason: "is a hard link to a directory".into(),
            }
            .into())
        }
        Some(_) => {}
    }
    fsops::link_at(tparent.as_raw_fd(), &tname, dir, name)?;
    Ok(())
}
