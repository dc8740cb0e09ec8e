//! OCI mount options (`fstab`-style words) -> mount(2) flags, propagation and filesystem data.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct MountFlags {
    /// MS_* flags for the mount itself (MS_RDONLY, MS_NOSUID, ...).
    pub flags: u64,
    /// Flags that must be cleared rather than set when the mount is remounted (from "rw", "suid").
    pub clear: u64,
    /// MS_SHARED / MS_SLAVE / MS_PRIVATE / MS_UNBINDABLE, with MS_REC, applied after mounting.
    pub propagation: u64,
    /// `rbind` (bind mounts only).
    pub recursive: bool,
    /// Comma-separated filesystem data ("mode=755,size=65536k").
    pub data: String,
    /// The recursive words (`rro`, `rnosuid`, `rnoatime`, ...): MOUNT_ATTR_* bits set and
    /// cleared with mount_setattr(AT_RECURSIVE) on the mount and every mount below it.
    #[serde(default)]
    pub attr_set: u64,
    #[serde(default)]
    pub attr_clear: u64,
    /// `idmap` or `ridmap` (the second: `idmap_recursive` too).
    #[serde(default)]
    pub idmap: bool,
    #[serde(default)]
    pub idmap_recursive: bool,
}

/// mount_setattr(2)'s attribute bits (linux/mount.h).
pub mod attr {
    pub const RDONLY: u64 = 0x1;
    pub const NOSUID: u64 = 0x2;
    pub const NODEV: u64 = 0x4;
    pub const NOEXEC: u64 = 0x8;
    /// The atime mode is a 3-bit field, not flags: changing it clears the whole field.
    pub const ATIME_FIELD: u64 = 0x70;
    pub const RELATIME: u64 = 0x0;
    pub const NOATIME: u64 = 0x10;
    pub const STRICTATIME: u64 = 0x20;
    pub const NODIRATIME: u64 = 0x80;
    pub const IDMAP: u64 = 0x0010_0000;
    pub const NOSYMFOLLOW: u64 = 0x0020_0000;
}

/// The recursive word `o` as (MOUNT_ATTR bits to set, to clear), if it is one.
fn recursive_word(o: &str) -> Option<(u64, u64)> {
    use attr::*;
    let atime = |mode: u64| (mode, ATIME_FIELD);
    Some(match o {
        "rro" => (RDONLY, 0),
        "rrw" => (0, RDONLY),
        "rnosuid" => (NOSUID, 0),
        "rsuid" => (0, NOSUID),
        "rnodev" => (NODEV, 0),
        "rdev" => (0, NODEV),
        "rnoexec" => (NOEXEC, 0),
        "rexec" => (0, NOEXEC),
        "rnodiratime" => (NODIRATIME, 0),
        "rdiratime" => (0, NODIRATIME),
        "rnosymfollow" => (NOSYMFOLLOW, 0),
        "rsymfollow" => (0, NOSYMFOLLOW),
        "rnoatime" => atime(NOATIME),
        "rstrictatime" | "rnorelatime" => atime(STRICTATIME),
        // mount(8): "atime" and "nostrictatime" both mean the kernel's default, relatime.
        "rrelatime" | "ratime" | "rnostrictatime" => atime(RELATIME),
        _ => return None,
    })
}

impl MountFlags {
    pub fn readonly(&self) -> bool {
        self.flags & libc::MS_RDONLY != 0
    }
}

/// A mount option that cannot be carried out, named.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MountOptionError {
    #[error("empty mount option")]
    Empty,
    #[error("mount option contains a comma: {option:?}")]
    Comma { option: String },
}

/// Parses the options; the second value says whether the options ask for a bind mount.
pub fn parse<'a>(
    options: impl Iterator<Item = &'a str>,
) -> Result<(MountFlags, bool), MountOptionError> {
    let mut f = MountFlags::default();
    let mut bind = false;
    let mut data: Vec<&str> = Vec::new();
    for o in options {
        let (set, clear): (u64, u64) = match o {
            "defaults" => (0, 0),
            "ro" => (libc::MS_RDONLY, 0),
            "rw" => (0, libc::MS_RDONLY),
            "nosuid" => (libc::MS_NOSUID, 0),
            "suid" => (0, libc::MS_NOSUID),
            "nodev" => (libc::MS_NODEV, 0),
            "dev" => (0, libc::MS_NODEV),
            "noexec" => (libc::MS_NOEXEC, 0),
            "exec" => (0, libc::MS_NOEXEC),
            "sync" => (libc::MS_SYNCHRONOUS, 0),
            "async" => (0, libc::MS_SYNCHRONOUS),
            "dirsync" => (libc::MS_DIRSYNC, 0),
            "remount" => (libc::MS_REMOUNT, 0),
            "mand" => (libc::MS_MANDLOCK, 0),
            "nomand" => (0, libc::MS_MANDLOCK),
            "atime" => (0, libc::MS_NOATIME),
            "noatime" => (libc::MS_NOATIME, 0),
            "diratime" => (0, libc::MS_NODIRATIME),
            "nodiratime" => (libc::MS_NODIRATIME, 0),
            "relatime" => (libc::MS_RELATIME, 0),
            "norelatime" => (0, libc::MS_RELATIME),
            "strictatime" => (libc::MS_STRICTATIME, 0),
            "nostrictatime" => (0, libc::MS_STRICTATIME),
            "bind" => {
                bind = true;
                (0, 0)
            }
            "rbind" => {
                bind = true;
                f.recursive = true;
                (0, 0)
            }
            "private" | "rprivate" | "shared" | "rshared" | "slave" | "rslave" | "unbindable"
            | "runbindable" => {
                let rec = if o.starts_with('r') { libc::MS_REC } else { 0 };
                let kind = match o.trim_start_matches('r') {
                    "private" => libc::MS_PRIVATE,
                    "shared" => libc::MS_SHARED,
                    "slave" => libc::MS_SLAVE,
                    _ => libc::MS_UNBINDABLE,
                };
                // "runbindable" trims to "unbindable" above; "rshared" to "shared".
                f.propagation = kind | rec;
                (0, 0)
            }
            "idmap" | "ridmap" => {
                f.idmap = true;
                f.idmap_recursive = o == "ridmap";
                (0, 0)
            }
            "tmpcopyup" | "copy-symlink" | "nocopyup" => (0, 0),
            "" => return Err(MountOptionError::Empty),
            o if recursive_word(o).is_some() => {
                let (set, clear) = recursive_word(o).unwrap_or_default();
                f.attr_set = (f.attr_set & !clear) | set;
                f.attr_clear = (f.attr_clear & !set) | clear;
                (0, 0)
            }
            o => {
                if o.contains(',') {
                    return Err(MountOptionError::Comma { option: o.into() });
                }
                data.push(o);
                (0, 0)
            }
        };
        f.flags = (f.flags | set) & !clear;
        f.clear = (f.clear | clear) & !set;
    }
    f.data = data.join(",");
    Ok((f, bind))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_become_flags_and_data() {
        let (f, bind) =
            parse(["nosuid", "strictatime", "mode=755", "size=65536k"].into_iter()).unwrap();
        assert!(!bind);
        assert_eq!(f.flags, libc::MS_NOSUID | libc::MS_STRICTATIME);
        assert_eq!(f.data, "mode=755,size=65536k");
    }

    #[test]
    fn later_words_win() {
        let (f, _) = parse(["ro", "rw"].into_iter()).unwrap();
        assert!(!f.readonly());
        let (f, _) = parse(["rw", "ro"].into_iter()).unwrap();
        assert!(f.readonly());
    }

    #[test]
    fn rbind_and_propagation() {
        let (f, bind) = parse(["rbind", "rprivate", "ro"].into_iter()).unwrap();
        assert!(bind && f.recursive && f.readonly());
        assert_eq!(f.propagation, libc::MS_PRIVATE | libc::MS_REC);
        let (f, _) = parse(["runbindable"].into_iter()).unwrap();
        assert_eq!(f.propagation, libc::MS_UNBINDABLE | libc::MS_REC);
    }

    #[test]
    fn recursive_words_become_mount_attributes() {
        let (f, _) = parse(["rbind", "rro", "rnosuid", "rnoatime"].into_iter()).unwrap();
        assert_eq!(f.attr_set, attr::RDONLY | attr::NOSUID | attr::NOATIME);
        assert_eq!(f.attr_clear, attr::ATIME_FIELD);
        assert_eq!(f.flags, 0, "recursive words are not mount(2) flags");
        let (f, _) = parse(["rro", "rrw"].into_iter()).unwrap();
        assert_eq!((f.attr_set, f.attr_clear), (0, attr::RDONLY));
    }

    #[test]
    fn idmap_words() {
        let (f, _) = parse(["rbind", "ridmap"].into_iter()).unwrap();
        assert!(f.idmap && f.idmap_recursive);
        let (f, _) = parse(["bind", "idmap"].into_iter()).unwrap();
        assert!(f.idmap && !f.idmap_recursive);
    }
}
