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
use std::io::{self, Read};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};

use tar::EntryType;

use crate::entry::{self, Found};
use crate::error::LayerError;
use crate::fsops;
use crate::inflate::{self, CodecError, Hashing};
use crate::meta::meta_of;
use crate::options::{Options, Stats, Whiteouts};
use crate::tree::{components, joined, shown, Root};
use crate::whiteout::{whiteout, WH};

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
        entry::one(&mut entry, &m, last, &parent, &mut root, &mut stats, opts).map_err(
            |e| match e {
                Found::Layer(e) => e,
                Found::Io(e) => LayerError::io(&shown(&m.name), e),
                Found::Read(e) => read_error(offset(), e),
            },
        )?;
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

/// The `tar` crate tells this case only by its message (its error kind is `Other`): pinned by
/// Cargo.lock, and `test_inflate.py` and the `umoci insert` test fail if an upgrade changes it.
fn ended_in_padding(e: &io::Error) -> bool {
    let codec = e.get_ref().is_some_and(|i| i.is::<CodecError>());
    !codec && e.to_string().contains("unexpected EOF during skip")
}
