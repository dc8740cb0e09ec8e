//! Unpacking a tar stream into a directory, as a security boundary.
//!
//! Every entry's parent directory is opened with `openat2(RESOLVE_IN_ROOT)`, so neither `..`,
//! nor an absolute or relative symlink planted by an earlier entry, can point a write outside
//! the root; the entry itself is then made relative to that descriptor by a single name, never
//! following a symlink. The caller unpacks into a fresh private directory and renames it into
//! place only on success, so a refused or broken image leaves nothing behind.
//!
//! Layers carry deletions as whiteouts (`.wh.NAME`, `.wh..wh..opq`). Unpacked for overlayfs,
//! each becomes what overlayfs reads in a lower directory: a 0:0 character device and the
//! `trusted.overlay.opaque` xattr (as host root), or the xattr whiteouts of Linux 6.7 that
//! rootless overlay mounts ("userxattr") read. Applied, they delete from the tree built so far.

use std::collections::HashSet;
use std::ffi::CStr;
use std::io::{self, Read};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};

use tar::EntryType;

use crate::error::LayerError;
use crate::fsops::{self, c};
use crate::inflate::{self, CodecError, Hashing};

const WH: &[u8] = b".wh.";
const OPAQUE: &[u8] = b".wh..wh..opq";
/// Xattrs that steer overlayfs (redirects, metacopy, opacity): only pyrt sets them.
const OVERLAY_XATTRS: [&[u8]; 2] = [b"trusted.overlay.", b"user.overlay."];

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
    pub strip_setid: bool,
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

/// Unpacks the blob read from `src` (gzip, zstd or a plain tar) into `dest`, returning what it
/// did and both digests. The whole blob is read, past the archive's end too, so that the
/// digests cover it all.
///
/// Two threads share the work: one reads, decompresses and hashes; the caller's parses the
/// tar and writes the tree. Handing 256 KiB buffers between them through a bounded channel
/// keeps memory fixed while both cores work (decompression alone is as slow as the writes).
pub fn unpack(
    src: impl Read + Send,
    dest: &Path,
    opts: &Options,
    progress: Option<Box<dyn FnMut(u64) + Send>>,
) -> Result<Stats, LayerError> {
    let (tx, rx) = mpsc::sync_channel::<io::Result<Vec<u8>>>(16);
    std::thread::scope(|scope| {
        let producer = std::thread::Builder::new()
            .name("pyrt-inflate".into())
            .spawn_scoped(scope, move || produce(src, progress, &tx))
            .map_err(|e| LayerError::io(&dest.display().to_string(), e))?;
        let mut stream = Channel {
            rx,
            buf: Vec::new(),
            at: 0,
            count: Arc::default(),
        };
        let unpacked = unpack_tar(&mut stream, dest, opts)
            .and_then(|stats| drain(&mut stream).map(|()| stats));
        // Dropping the receiver stops a producer that is still reading (an error here).
        drop(stream);
        let digests = producer
            .join()
            .unwrap_or_else(|_| Err(io::Error::other("inflate thread panicked")));
        let mut stats = unpacked?;
        let (blob_digest, diff_id) = digests.map_err(|e| codec(0, e))?;
        stats.diff_id = diff_id;
        stats.blob_digest = blob_digest;
        Ok(stats)
    })
}

/// The producer's side: the blob read, decompressed and hashed, its content sent on in
/// buffers; returns the blob's and the content's digests once all of it was read.
fn produce(
    src: impl Read,
    progress: Option<Box<dyn FnMut(u64) + Send>>,
    tx: &mpsc::SyncSender<io::Result<Vec<u8>>>,
) -> io::Result<(String, String)> {
    let mut blob = Hashing::new(src, progress);
    let diff_id = {
        let stream = match inflate::decoder(&mut blob) {
            Ok(s) => s,
            Err(e) => {
                let marked = io::Error::new(e.kind(), CodecError(e));
                let _ = tx.send(Err(io::Error::new(marked.kind(), marked.to_string())));
                return Err(marked);
            }
        };
        let mut content = Hashing::new(stream, None);
        loop {
            let mut buf = vec![0u8; inflate::BUF];
            match content.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    buf.truncate(n);
                    if tx.send(Ok(buf)).is_err() {
                        return Err(io::Error::other("the unpacker stopped"));
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    let shown = io::Error::new(
                        e.kind(),
                        CodecError(io::Error::new(e.kind(), e.to_string())),
                    );
                    let _ = tx.send(Err(shown));
                    return Err(e);
                }
            }
        }
        content.digest()
    };
    Ok((blob.digest(), diff_id))
}

/// The consumer's side of the channel, as a reader that counts what it handed out.
struct Channel {
    rx: mpsc::Receiver<io::Result<Vec<u8>>>,
    buf: Vec<u8>,
    at: usize,
    count: Arc<AtomicU64>,
}

impl Read for Channel {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while self.at == self.buf.len() {
            match self.rx.recv() {
                Ok(Ok(b)) => (self.buf, self.at) = (b, 0),
                Ok(Err(e)) => return Err(e),
                Err(_) => return Ok(0), // the producer is done
            }
        }
        let n = out.len().min(self.buf.len() - self.at);
        out[..n].copy_from_slice(&self.buf[self.at..self.at + n]);
        self.at += n;
        self.count.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
}

fn codec(offset: u64, e: io::Error) -> LayerError {
    LayerError::Codec { offset, source: e }
}

/// A read error of the tar stream: the decoder's (marked) or the tar structure's.
fn read_error(offset: u64, e: io::Error) -> LayerError {
    let is_codec = e.get_ref().is_some_and(|i| i.is::<CodecError>());
    if is_codec {
        codec(offset, e)
    } else {
        LayerError::Tar { offset, source: e }
    }
}

/// Reads what follows the archive's end (zero blocks, padding, trailing garbage as GNU tar
/// ignores it) so that the digests cover the whole stream.
fn drain(r: &mut Channel) -> Result<(), LayerError> {
    let mut buf = vec![0u8; inflate::BUF];
    loop {
        match r.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(read_error(r.count.load(Ordering::Relaxed), e)),
        }
    }
}

/// The entry's name split into components, "." and empty ones dropped; ".." is refused.
fn components(name: &[u8]) -> Result<Vec<Vec<u8>>, LayerError> {
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

fn shown(name: &[u8]) -> String {
    String::from_utf8_lossy(name).into_owned()
}

fn joined(parts: &[Vec<u8>]) -> Vec<u8> {
    if parts.is_empty() {
        return b".".to_vec();
    }
    parts.join(&b'/')
}

/// `target` taken relative to `base` inside the root; ".." stops at the root, as
/// RESOLVE_IN_ROOT makes it.
fn lexical(base: &[Vec<u8>], target: &[u8]) -> Vec<Vec<u8>> {
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

/// One entry's metadata, with its PAX records applied (uid, gid, fractional mtime, xattrs).
struct Meta {
    kind: EntryType,
    name: Vec<u8>,
    link: Option<Vec<u8>>,
    mode: u32,
    uid: u32,
    gid: u32,
    mtime_ns: i128,
    size: u64,
    dev: (u32, u32),
    xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

fn meta_of<R: Read>(e: &mut tar::Entry<'_, R>, opts: &Options) -> io::Result<Meta> {
    let h = e.header();
    let mut m = Meta {
        kind: h.entry_type(),
        name: e.path_bytes().into_owned(),
        link: e.link_name_bytes().map(|l| l.into_owned()),
        mode: h.mode().unwrap_or(0o644),
        uid: h.uid().unwrap_or(0) as u32,
        gid: h.gid().unwrap_or(0) as u32,
        mtime_ns: i128::from(h.mtime().unwrap_or(0)) * 1_000_000_000,
        size: e.size(),
        dev: (
            h.device_major().ok().flatten().unwrap_or(0),
            h.device_minor().ok().flatten().unwrap_or(0),
        ),
        xattrs: Vec::new(),
    };
    if let Some(pax) = e.pax_extensions()? {
        for ext in pax.flatten() {
            let (Ok(key), value) = (ext.key(), ext.value_bytes()) else {
                continue;
            };
            let text = std::str::from_utf8(value).unwrap_or("");
            match key {
                "uid" => m.uid = text.parse().unwrap_or(m.uid),
                "gid" => m.gid = text.parse().unwrap_or(m.gid),
                "mtime" => m.mtime_ns = pax_time(text).unwrap_or(m.mtime_ns),
                _ => {
                    if let Some(attr) = key.strip_prefix("SCHILY.xattr.") {
                        m.xattrs.push((attr.as_bytes().to_vec(), value.to_vec()));
                    }
                }
            }
        }
    }
    if let Some((uid, gid)) = opts.owner {
        (m.uid, m.gid) = (uid, gid);
    }
    if opts.strip_setid {
        m.mode &= !0o6000;
    }
    Ok(m)
}

/// A PAX time ("1700000000.123456789", maybe negative) in nanoseconds.
fn pax_time(text: &str) -> Option<i128> {
    let (whole, frac) = text.split_once('.').unwrap_or((text, ""));
    let secs: i128 = whole.parse().ok()?;
    let digits: String = frac.chars().take(9).collect();
    let mut ns: i128 = if digits.is_empty() {
        0
    } else {
        digits.parse().ok()?
    };
    for _ in digits.len()..9 {
        ns *= 10;
    }
    Some(if whole.starts_with('-') {
        secs * 1_000_000_000 - ns
    } else {
        secs * 1_000_000_000 + ns
    })
}

/// The directory being unpacked into, and the layers below it.
struct Root {
    fd: OwnedFd,
    lowers: Vec<OwnedFd>,
    /// Directories made without an entry of their own, with the mtime they should keep.
    implied: Vec<(Vec<Vec<u8>>, i128)>,
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
    fn open_dir(
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

/// Unpacks the tar stream itself.
fn unpack_tar(stream: &mut Channel, dest: &Path, opts: &Options) -> Result<Stats, LayerError> {
    let dest_s = dest.display().to_string();
    let open =
        |p: &Path| fsops::open_path(p).map_err(|e| LayerError::io(&p.display().to_string(), e));
    let mut root = Root {
        fd: open(dest)?,
        lowers: opts
            .lowers
            .iter()
            .map(|l| open(l))
            .collect::<Result<_, _>>()?,
        implied: Vec::new(),
    };
    let mut stats = Stats::default();
    let mut dir_times: Vec<(Vec<Vec<u8>>, i128, Vec<u8>)> = Vec::new();
    // Paths this layer wrote: an opaque marker applied to a flattened tree spares them.
    let mut written: HashSet<Vec<Vec<u8>>> = HashSet::new();

    let counter = stream.count.clone();
    let offset = || counter.load(Ordering::Relaxed);
    let mut archive = tar::Archive::new(&mut *stream);
    let entries = archive.entries().map_err(|e| read_error(0, e))?;
    for entry in entries {
        let mut entry = match entry {
            Ok(e) => e,
            // The stream ended in the padding after the last entry's content (every byte of
            // it read: `copy` checks), with no end blocks: what umoci 0.4.7's `insert` writes,
            // and what GNU tar, umoci and podman take as the archive's end.
            Err(e) if ended_in_padding(&e) => break,
            Err(e) => return Err(read_error(offset(), e)),
        };
        let m = meta_of(&mut entry, opts).map_err(|e| read_error(offset(), e))?;
        if matches!(m.kind, EntryType::XGlobalHeader) {
            continue;
        }
        stats.entries += 1;
        if stats.entries > opts.max_entries {
            return Err(LayerError::Limit(format!(
                "layer too large: more than {} entries; refusing to unpack",
                opts.max_entries
            )));
        }
        if !opts.devices && matches!(m.kind, EntryType::Char | EntryType::Block) {
            stats.skipped_devices.push(shown(&m.name));
            continue;
        }
        let parts = components(&m.name)?;
        let Some((last, up)) = parts.split_last() else {
            if m.kind.is_dir() {
                dir_times.push((Vec::new(), m.mtime_ns, m.name.clone()));
            }
            continue;
        };
        let parent = root.open_dir(up, true, &m.name, 0)?;
        if opts.whiteouts != Whiteouts::Keep && last.starts_with(WH) {
            whiteout(&m.name, &parts, &parent, opts, &written)?;
            stats.whiteouts += 1;
            continue;
        }
        one(&mut entry, &m, last, &parent, &mut root, &mut stats, opts).map_err(|e| match e {
            Found::Layer(e) => e,
            Found::Io(e) => LayerError::io(&shown(&m.name), e),
            Found::Read(e) => read_error(offset(), e),
        })?;
        if opts.whiteouts == Whiteouts::Apply {
            for i in 1..=parts.len() {
                written.insert(parts[..i].to_vec());
            }
        }
        if m.kind.is_dir() {
            dir_times.push((parts.clone(), m.mtime_ns, m.name.clone()));
        }
    }
    // Directory times last: every entry written inside a directory changed its mtime.
    let implied = std::mem::take(&mut root.implied);
    for (parts, ns) in implied.iter().rev() {
        let fd = root.open_dir(parts, false, &joined(parts), 0)?;
        fsops::utimens_fd_path(&fd, *ns).map_err(|e| LayerError::io(&dest_s, e))?;
    }
    for (parts, ns, name) in dir_times.iter().rev() {
        let fd = root.open_dir(parts, false, name, 0)?;
        fsops::utimens_fd_path(&fd, *ns).map_err(|e| LayerError::io(&shown(name), e))?;
    }
    Ok(stats)
}

fn ended_in_padding(e: &io::Error) -> bool {
    let codec = e.get_ref().is_some_and(|i| i.is::<CodecError>());
    !codec && e.to_string().contains("unexpected EOF during skip")
}

/// What went wrong with one entry: the layer itself, a write, or reading its content.
enum Found {
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

fn apply_meta(fd: RawFd, m: &Meta, opts: &Options) -> io::Result<()> {
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

fn one<R: Read>(
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
fn copy<R: Read>(entry: &mut tar::Entry<'_, R>, out: &mut std::fs::File) -> Result<u64, Found> {
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

fn hard_link(m: &Meta, dir: RawFd, name: &CStr, root: &mut Root) -> Result<(), Found> {
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

/// A `.wh.` entry: an opaque directory marker, or the deletion of one name below.
fn whiteout(
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

    #[test]
    fn pax_times() {
        assert_eq!(pax_time("1.5"), Some(1_500_000_000));
        assert_eq!(pax_time("-1.25"), Some(-1_250_000_000));
        assert_eq!(pax_time("12"), Some(12_000_000_000));
        assert_eq!(pax_time("x"), None);
    }
}
