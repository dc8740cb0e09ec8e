//! Image layers unpacked into the store (`pyrt_layer::unpack`).

use pyo3::exceptions::{PyOSError, PyValueError};
use pyo3::prelude::*;

/// Unpacks the blob read from descriptor `fd` (gzip, zstd or plain tar; the descriptor is
/// duplicated, and read from its current offset to its end) into the directory `dest`, by
/// `pyrt_layer::unpack`'s rules. Returns (entries, bytes, skipped device nodes, whiteouts,
/// diff_id, blob digest). `progress` is called with the count of blob bytes read, a few times
/// a second at most. Errors are `pyrt.ImageError` or `pyrt.UnsafeImageError`, naming `what`.
#[pyfunction]
#[pyo3(signature = (fd, dest, what, whiteouts, lowers, owner, devices, to_host,
                    max_entries, max_bytes, as_root, privileged, progress=None))]
#[allow(clippy::too_many_arguments)]
pub(crate) fn unpack_layer(
    py: Python<'_>,
    fd: i32,
    dest: std::path::PathBuf,
    what: &str,
    whiteouts: &str,
    lowers: Vec<std::path::PathBuf>,
    owner: Option<(u32, u32)>,
    devices: bool,
    to_host: bool,
    max_entries: u64,
    max_bytes: u64,
    as_root: bool,
    privileged: bool,
    progress: Option<Py<PyAny>>,
) -> PyResult<(u64, u64, Vec<String>, u64, String, String)> {
    use pyrt_layer::Whiteouts;
    let whiteouts = match whiteouts {
        "keep" => Whiteouts::Keep,
        "overlay" => Whiteouts::Overlay,
        "apply" => Whiteouts::Apply,
        other => {
            return Err(PyValueError::new_err(format!(
                "whiteouts: unknown mode {other:?}"
            )))
        }
    };
    // SAFETY: dup of a number the caller gave; an invalid one fails with EBADF.
    let dup = unsafe { libc::dup(fd) };
    if dup < 0 {
        let e = std::io::Error::last_os_error();
        return Err(PyOSError::new_err((
            e.raw_os_error().unwrap_or(0),
            e.to_string(),
        )));
    }
    // SAFETY: a fresh descriptor, owned by the File from here on.
    let file = unsafe { <std::fs::File as std::os::fd::FromRawFd>::from_raw_fd(dup) };
    let opts = pyrt_layer::Options {
        whiteouts,
        lowers,
        owner,
        devices,
        to_host,
        max_entries,
        max_bytes,
        as_root,
        privileged,
    };
    // Progress is reported in steps of 4 MiB: each report takes the GIL.
    let report = progress.map(|cb| {
        let mut pending = 0u64;
        Box::new(move |n: u64| {
            pending += n;
            if pending >= 4 << 20 {
                let done = std::mem::take(&mut pending);
                Python::attach(|py| {
                    let _ = cb.call1(py, (done,));
                });
            }
        }) as Box<dyn FnMut(u64) + Send>
    });
    let r = py.detach(|| pyrt_layer::unpack(file, &dest, &opts, report));
    match r {
        Ok(s) => Ok((
            s.entries,
            s.bytes,
            s.skipped_devices,
            s.whiteouts,
            s.diff_id,
            s.blob_digest,
        )),
        Err(e) => {
            let kind = if e.is_unsafe() {
                "UnsafeImageError"
            } else {
                "ImageError"
            };
            let cls = py.import("pyrt.errors")?.getattr(kind)?;
            Err(PyErr::from_value(cls.call1((format!("{what}: {e}"),))?))
        }
    }
}
