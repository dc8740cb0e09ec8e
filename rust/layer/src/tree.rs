//! Paths inside the root being unpacked: entry names taken apart (".." refused), symlink
//! targets resolved lexically as RESOLVE_IN_ROOT would, and the directory descriptors that
//! every write goes through.

use std::os::fd::{AsRawFd, OwnedFd};

use crate::error::LayerError;
use crate::fsops::{self, c};

/// The entry's name split into components, "." and empty ones dropped; ".." is refused.
pub(crate) fn components(name: &[u8]) -> Result<Vec<Vec<u8>>, LayerError> {
    let parts: Vec<Vec<u8>> = name
        .split(|b| *b == b'/')
        .filter(|p| !p.is_empty() && *p != b".")
        .map(<[u8]>::to_vec)
        .collect();
    if parts.iter().any(|p| p == b"..") {
        return Err(LayerError::Unsafe {
            entry: shown(name),
            reason: "climbs out of the root with '..'".into(),
        });
    }
    Ok(parts)
}

pub(crate) fn shown(name: &[u8]) -> String {
    String::from_utf8_lossy(name).into_owned()
}

pub(crate) fn joined(parts: &[Vec<u8>]) -> Vec<u8> {
    if parts.is_empty() {
        return b".".to_vec();
    }
    parts.join(&b'/')
}

/// `target` taken relative to `base` inside the root; ".." stops at the root, as
/// RESOLVE_IN_ROOT makes it.
pub(crate) fn lexical(base: &[Vec<u8>], target: &[u8]) -> Vec<Vec<u8>> {
    let mut out = base.to_vec();
    for p in target.split(|b| *b == b'/') {
        match p {
            b"" | b"." => {}
            b".." => {
                out.pop();
            }
            _ => out.push(p.to_vec()),
        }
    }
    out
}

/// The directory being unpacked into, and the layers below it.
pub(crate) struct Root {
    pub(crate) fd: OwnedFd,
    pub(crate) lowers: Vec<OwnedFd>,
    /// Directories made without an entry of their own, with the mtime they should keep.
    pub(crate) implied: Vec<(Vec<Vec<u8>>, i128)>,
}

impl Root {
    fn lower_stat(&self, rel: &[u8]) -> Option<libc::stat> {
        self.lowers.iter().find_map(|l| {
            let fd = fsops::open_in_root(l.as_raw_fd(), rel).ok()?;
            fsops::fstat(fd.as_raw_fd()).ok()
        })
    }

    /// A descriptor of the directory `parts` inside the root, making missing ones. A dangling
    /// symlink on the way is followed inside the root (where it will point once the image is
    /// a container's root), as Docker's unpacker does.
    pub(crate) fn open_dir(
        &mut self,
        parts: &[Vec<u8>],
        create: bool,
        entry: &[u8],
        depth: u32,
    ) -> Result<OwnedFd, LayerError> {
        if depth > 40 {
            return Err(LayerError::Unsafe {
                entry: shown(entry),
                reason: "goes through too many levels of symbolic links".into(),
            });
        }
        let rel = joined(parts);
        match fsops::open_in_root(self.fd.as_raw_fd(), &rel) {
            Ok(fd) => return Ok(fd),
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) && create && !parts.is_empty() => {}
            Err(e) if e.raw_os_error() == Some(libc::ENOTDIR) => {
                return Err(LayerError::Unsafe {
                    entry: shown(entry),
                    reason: format!("goes through '{}', which is not a directory", shown(&rel)),
                })
            }
            Err(e) => return Err(LayerError::io(&shown(entry), e)),
        }
        let (last, up) = parts.split_last().expect("parts is not empty");
        let parent = self.open_dir(up, true, entry, depth + 1)?;
        let name = c(last).map_err(|e| LayerError::io(&shown(entry), e))?;
        match fsops::mkdir_at(parent.as_raw_fd(), &name, 0o755) {
            Ok(()) => {
                if let Some(st) = self.lower_stat(&rel) {
                    let io = |e| LayerError::io(&shown(entry), e);
                    fsops::chown_at(parent.as_raw_fd(), &name, st.st_uid, st.st_gid).map_err(io)?;
                    fsops::chmod_at(parent.as_raw_fd(), &name, st.st_mode & 0o7777).map_err(io)?;
                    let ns = i128::from(st.st_mtime) * 1_000_000_000 + i128::from(st.st_mtime_nsec);
                    self.implied.push((parts.to_vec(), ns));
                }
            }
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {
                if let Some(target) = fsops::readlink_at(parent.as_raw_fd(), &name) {
                    let base: &[Vec<u8>] = if target.starts_with(b"/") { &[] } else { up };
                    return self.open_dir(&lexical(base, &target), true, entry, depth + 1);
                }
            }
            Err(e) => return Err(LayerError::io(&shown(entry), e)),
        }
        fsops::open_in_root(self.fd.as_raw_fd(), &rel).map_err(|e| LayerError::io(&shown(entry), e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn components_drop_dots_and_refuse_dotdot() {
        assert_eq!(
            components(b"./a//b/.").unwrap(),
            vec![b"a".to_vec(), b"b".to_vec()]
        );
        assert!(components(b"/").unwrap().is_empty());
        assert!(components(b"a/../b").unwrap_err().is_unsafe());
    }

    #[test]
    fn lexical_stops_at_the_root() {
        let base = vec![b"a".to_vec()];
        assert_eq!(lexical(&base, b"../../../x"), vec![b"x".to_vec()]);
        assert_eq!(
            lexical(&base, b"/etc/./y"),
            vec![b"a".to_vec(), b"etc".to_vec(), b"y".to_vec()]
        );
    }
}
