//! A layer blob's uncompressed stream: gzip (several members too), zstd (several frames too)
//! or none, told by the first bytes (media types lie often enough; the content cannot), with
//! the SHA-256 of both the blob and the uncompressed stream taken as they pass.
//!
//! Every stage reads through fixed buffers, so memory stays bounded whatever the layer holds:
//! a gzip of 4 GiB of zeros inflates one buffer at a time (the Python inflater it replaces
//! asked zlib for a whole chunk's output at once, gigabytes for a bomb).

use std::io::{self, BufRead, BufReader, Read};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use sha2::{Digest, Sha256};

const GZIP: &[u8] = &[0x1f, 0x8b];
const ZSTD: &[u8] = &[0x28, 0xb5, 0x2f, 0xfd];
pub const BUF: usize = 256 << 10;

/// Counts and hashes what passes through; calls `progress` with the bytes read.
pub struct Hashing<R> {
    inner: R,
    sha: Sha256,
    /// Bytes read so far: shared, so that the offset of an error can be told while a reader
    /// further down holds this one.
    pub count: Arc<AtomicU64>,
    progress: Option<Box<dyn FnMut(u64) + Send>>,
}

impl<R: Read> Hashing<R> {
    pub fn new(inner: R, progress: Option<Box<dyn FnMut(u64) + Send>>) -> Self {
        Hashing {
            inner,
            sha: Sha256::new(),
            count: Arc::default(),
            progress,
        }
    }

    /// "sha256:<hex>" of everything read so far.
    pub fn digest(&self) -> String {
        format!("sha256:{:x}", self.sha.clone().finalize())
    }
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.sha.update(&buf[..n]);
        self.count.fetch_add(n as u64, Ordering::Relaxed);
        if let Some(p) = self.progress.as_mut() {
            if n > 0 {
                p(n as u64);
            }
        }
        Ok(n)
    }
}

/// Which decoder the blob's first bytes call for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    Gzip,
    Zstd,
    None,
}

pub fn sniff(head: &[u8]) -> Compression {
    if head.starts_with(GZIP) {
        Compression::Gzip
    } else if head.starts_with(ZSTD) {
        Compression::Zstd
    } else {
        Compression::None
    }
}

/// A decompression failure, told apart from the tar reader's own errors by the layer that
/// raised it: wrapped so the unpacker can name it as a codec error with the blob's offset.
#[derive(Debug)]
pub struct CodecError(pub io::Error);

impl std::fmt::Display for CodecError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for CodecError {}

/// Marks every error of the decoder below as a `CodecError`.
struct Marked<R>(R);

impl<R: Read> Read for Marked<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0
            .read(buf)
            .map_err(|e| io::Error::new(e.kind(), CodecError(e)))
    }
}

/// The uncompressed stream of `blob`, with the blob's digest kept in `blob`'s `Hashing`.
pub fn decoder<'a, R: Read + 'a>(blob: &'a mut Hashing<R>) -> io::Result<Box<dyn Read + 'a>> {
    let mut buffered = BufReader::with_capacity(BUF, blob);
    let kind = sniff(buffered.fill_buf()?);
    Ok(match kind {
        Compression::Gzip => Box::new(Marked(flate2::bufread::MultiGzDecoder::new(buffered))),
        Compression::Zstd => {
            // zstd's reader goes on to the next frame by itself; a stream that stops inside a
            // frame is an error ("incomplete frame"), as a truncated gzip one is.
            Box::new(Marked(zstd::stream::read::Decoder::with_buffer(buffered)?))
        }
        Compression::None => Box::new(buffered),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn gz(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    fn inflate(blob: &[u8]) -> io::Result<(Vec<u8>, String)> {
        let mut h = Hashing::new(blob, None);
        let mut out = Vec::new();
        decoder(&mut h)?.read_to_end(&mut out)?;
        Ok((out, h.digest()))
    }

    #[test]
    fn gzip_members_and_zstd_frames_back_to_back() {
        let (a, b) = (vec![b'a'; 300_000], vec![b'b'; 5]);
        let blob = [gz(&a), gz(&b)].concat();
        assert_eq!(inflate(&blob).unwrap().0, [a.clone(), b.clone()].concat());
        let z = [
            zstd::encode_all(&a[..], 1).unwrap(),
            zstd::encode_all(&b[..], 1).unwrap(),
        ];
        assert_eq!(inflate(&z.concat()).unwrap().0, [a, b].concat());
    }

    #[test]
    fn plain_passes_through_and_the_blob_digest_covers_it() {
        let (out, digest) = inflate(b"plain tar bytes").unwrap();
        assert_eq!(out, b"plain tar bytes");
        assert_eq!(
            digest,
            format!("sha256:{:x}", Sha256::digest(b"plain tar bytes"))
        );
    }

    #[test]
    fn a_truncated_stream_is_an_error() {
        let blob = gz(&vec![7u8; 100_000]);
        let err = inflate(&blob[..blob.len() / 2]).unwrap_err();
        assert!(err.get_ref().is_some_and(|e| e.is::<CodecError>()), "{err}");
    }
}
