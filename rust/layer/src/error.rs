//! The one error type of layer unpacking. Each variant says which Python exception it becomes:
//! `Unsafe` an `UnsafeImageError` (the layer tried to leave its root), every other an
//! `ImageError`; the message names the entry or the byte offset at fault.

use std::io;

#[derive(Debug, thiserror::Error)]
pub enum LayerError {
    /// An entry that would write outside the root, or through something it must not.
    #[error("tar entry '{entry}' {reason}")]
    Unsafe { entry: String, reason: String },
    /// An entry that cannot be unpacked as it stands (a hard link to a missing file, an
    /// unknown type).
    #[error("tar entry '{entry}': {reason}")]
    Entry { entry: String, reason: String },
    /// A configured bound was exceeded (entries, bytes): a decompression bomb, or a layer
    /// larger than the caller allows.
    #[error("{0}")]
    Limit(String),
    /// The compressed stream is damaged or ends early.
    #[error("corrupt compressed layer after {offset} bytes of its content: {source}")]
    Codec { offset: u64, source: io::Error },
    /// The tar structure is damaged.
    #[error("not a readable tar archive at byte {offset}: {source}")]
    Tar { offset: u64, source: io::Error },
    /// The file system refused a write (`path` is the entry being written).
    #[error("unpacking '{path}' failed: {source}")]
    Io { path: String, source: io::Error },
    /// The destination's file system is full.
    #[error("no space left on device while unpacking '{path}'")]
    NoSpace { path: String },
}

impl LayerError {
    /// Whether the layer tried to escape its root (`UnsafeImageError` in Python).
    pub fn is_unsafe(&self) -> bool {
        matches!(self, LayerError::Unsafe { .. })
    }

    /// An I/O failure while writing `entry`, with the kernel's words for the common cases.
    pub fn io(entry: &str, e: io::Error) -> LayerError {
        match e.raw_os_error() {
            Some(libc::ENOSPC) | Some(libc::EDQUOT) => LayerError::NoSpace { path: entry.into() },
            Some(libc::ELOOP) => LayerError::Unsafe {
                entry: entry.into(),
                reason: "goes through a symlink loop in the image's paths".into(),
            },
            _ => LayerError::Io {
                path: entry.into(),
                source: e,
            },
        }
    }
}
