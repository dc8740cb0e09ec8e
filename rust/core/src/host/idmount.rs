//! Idmapped bind mounts (`idmap`, `ridmap`, a mount's own `uidMappings`), made by the parent
//! before clone.
//!
//! mount_setattr(MOUNT_ATTR_IDMAP) needs CAP_SYS_ADMIN over the user namespace of the source's
//! filesystem (the host's, for a host directory), which the container's child, already in its
//! own user namespace, does not have. So the parent clones the source into a detached mount,
//! maps it, and hands the descriptor down; the child only attaches it with move_mount, inside
//! the root (runc and crun split the work the same way).
//!
//! The mapping comes from a user namespace that has it (`host::userns::with_maps`). The
//! descriptor keeps the namespace alive for as long as the mount needs it (the kernel takes its
//! own reference).

use std::io;
use std::os::fd::OwnedFd;
use std::path::Path;

use crate::mountopts::attr;
use crate::plan::MountIdmap;
use crate::syscall;

/// A detached, idmapped copy of `source` (with `rbind`, of the mounts below it too), ready for
/// the child to attach. `userns` carries `idmap.maps` (`host::userns::with_maps`).
pub fn detached(
    source: &Path,
    rbind: bool,
    idmap: &MountIdmap,
    userns: &OwnedFd,
) -> io::Result<OwnedFd> {
    let tree = syscall::open_tree_clone(source, rbind).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("cloning {} for an idmapped mount: {e}", source.display()),
        )
    })?;
    syscall::mount_setattr_userns(&tree, attr::IDMAP, 0, Some(userns), idmap.recursive).map_err(
        |e| {
            let why = match e.raw_os_error() {
                Some(libc::EPERM) => " (needs root: CAP_SYS_ADMIN over the source's filesystem)",
                Some(libc::EINVAL) => {
                    " (its filesystem, or one mounted below it with ridmap, cannot be idmapped)"
                }
                _ => "",
            };
            io::Error::new(
                e.kind(),
                format!("idmapping {}: {e}{why}", source.display()),
            )
        },
    )?;
    Ok(tree)
}
