//! Whiteouts (`.wh.NAME`, `.wh..wh..opq`): overlayfs's own markers (a 0:0 device and the
//! `trusted.overlay.opaque` xattr as host root; xattr whiteouts of Linux 6.7 otherwise, which
//! rootless "userxattr" overlay mounts read), or deletions from the tree unpacked so far.

use std::collections::HashSet;
use std::os::fd::{AsRawFd, OwnedFd};

use crate::error::LayerError;
use crate::fsops::{self, c};
use crate::options::{Options, Whiteouts};
use crate::tree::shown;

pub(crate) const WH: &[u8] = b".wh.";
const OPAQUE: &[u8] = b".wh..wh..opq";

/// A `.wh.` entry: an opaque directory marker, or the deletion of one name below.
pub(crate) fn whiteout(
    entry: &[u8],
    parts: &[Vec<u8>],
    parent: &OwnedFd,
    opts: &Options,
    written: &HashSet<Vec<Vec<u8>>>,
) -> Result<(), LayerError> {
    let io = |e| LayerError::io(&shown(entry), e);
    let name = parts.last().expect("a whiteout has a name");
    let dir = parent.as_raw_fd();
    if name == OPAQUE {
        if opts.whiteouts == Whiteouts::Overlay {
            fsops::setxattr_dir(parent, c"user.overlay.opaque", b"y").map_err(io)?;
            if opts.privileged {
                // Root's store serves root's containers (trusted.*) and rootless=True ones,
                // whose overlay reads user.* ("userxattr"): both marks, then.
                fsops::setxattr_dir(parent, c"trusted.overlay.opaque", b"y").map_err(io)?;
            }
        } else {
            let base = &parts[..parts.len() - 1];
            for child in fsops::list_dir(dir, c".").map_err(io)? {
                let mut path = base.to_vec();
                path.push(child.to_bytes().to_vec());
                if !written.contains(&path) {
                    fsops::remove_at(dir, &child).map_err(io)?;
                }
            }
        }
        return Ok(());
    }
    if name.starts_with(b".wh..wh.") {
        // Other ".wh..wh." names are aufs bookkeeping (hard link directories): no meaning in
        // an OCI layer, and nothing to unpack.
        return Ok(());
    }
    let target = &name[WH.len()..];
    if matches!(target, b"" | b"." | b"..") {
        return Err(LayerError::Unsafe {
            entry: shown(entry),
            reason: format!(
                "is a whiteout that must name one entry, not '{}'",
                shown(target)
            ),
        });
    }
    let tname = c(target).map_err(io)?;
    fsops::remove_at(dir, &tname).map_err(io)?;
    if opts.whiteouts != Whiteouts::Overlay {
        return Ok(());
    }
    if opts.privileged {
        return fsops::mknod_at(dir, &tname, libc::S_IFCHR, libc::makedev(0, 0)).map_err(io);
    }
    // Without CAP_MKNOD: overlayfs's xattr whiteout (Linux 6.7), a zero-size file marked
    // user.overlay.whiteout in a directory marked opaque "x" (not opaque, but holding such
    // whiteouts), read by overlay mounts with "userxattr", as rootless containers' are.
    let fd = fsops::open_at(
        dir,
        &tname,
        libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL,
        0o600,
    )
    .map_err(io)?;
    // Needs write permission: mode 0 after.
    fsops::fsetxattr(fd.as_raw_fd(), c"user.overlay.whiteout", b"").map_err(io)?;
    fsops::fchmod(fd.as_raw_fd(), 0).map_err(io)?;
    if fsops::getxattr_dir(parent, c"user.overlay.opaque").as_deref() != Some(b"y") {
        fsops::setxattr_dir(parent, c"user.overlay.opaque", b"x").map_err(io)?;
    }
    Ok(())
}
