//! What an unpack is asked to do (`Options`, `Whiteouts`) and what it reports (`Stats`): the
//! vocabulary every part of the unpacker shares.

use std::path::PathBuf;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Whiteouts {
    /// Plain files (a rootfs tarball, which is not a layer).
    Keep,
    /// overlayfs' own markers.
    Overlay,
    /// Deletions from the tree unpacked so far (a flattened image, an archive put in).
    Apply,
}

#[derive(Debug, Clone)]
pub struct Options {
    pub whiteouts: Whiteouts,
    /// The layers this one goes on (topmost first): a directory the layer implies takes its
    /// owner, mode and times from them.
    pub lowers: Vec<PathBuf>,
    /// Replaces every entry's owner.
    pub owner: Option<(u32, u32)>,
    /// false: device nodes are skipped (named in the stats).
    pub devices: bool,
    /// The destination is the host's (a copy out of a container): set-id bits are cleared, and
    /// a device node, FIFO or socket in an entry's way is refused rather than replaced (an
    /// entry named like a host's FIFO would otherwise turn it into a regular file).
    pub to_host: bool,
    pub max_entries: u64,
    pub max_bytes: u64,
    /// Entries get their owners (the caller is root of its user namespace).
    pub as_root: bool,
    /// Root of the host: device nodes and trusted.* xattrs can be made.
    pub privileged: bool,
}

#[derive(Debug, Default, Clone)]
pub struct Stats {
    pub entries: u64,
    pub bytes: u64,
    pub skipped_devices: Vec<String>,
    pub whiteouts: u64,
    /// "sha256:..." of the uncompressed stream (the layer's diff_id).
    pub diff_id: String,
    /// "sha256:..." of the blob as read.
    pub blob_digest: String,
}
