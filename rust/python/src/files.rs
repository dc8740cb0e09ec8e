//! Files on the host and in a container's root: opened inside a root, written whole.

use pyo3::exceptions::PyOSError;
use pyo3::prelude::*;

/// Opens `path` beneath the directory `dirfd` as if that directory were `/` (openat2 with
/// RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS): symlinks and `..` cannot leave it. Returns a new
/// close-on-exec descriptor.
#[pyfunction]
#[pyo3(signature = (dirfd, path, flags, mode=0))]
pub(crate) fn open_in_root(dirfd: i32, path: &str, flags: i32, mode: u32) -> PyResult<i32> {
    use std::os::fd::IntoRawFd;
    pyrt_core::syscall::openat2(
        dirfd,
        std::path::Path::new(path),
        flags,
        mode,
        pyrt_core::syscall::RESOLVE_IN_ROOT | pyrt_core::syscall::RESOLVE_NO_MAGICLINKS,
    )
    .map(|fd| fd.into_raw_fd())
    .map_err(|e| {
        let errno = e.raw_os_error().unwrap_or(0);
        PyOSError::new_err((errno, pyrt_core::report::strerror(errno), path.to_string()))
    })
}

/// Replaces the file `dest` with `data` whole, through a temporary file beside it
/// (`pyrt_core::host::statefile`). The GIL stays held: a few small writes and renames. `dest`
/// is taken as a path (a str or a path object, converted as `os.fsencode` does), so a state
/// root whose name is not UTF-8 works as it did when Python wrote the file.
#[pyfunction]
pub(crate) fn write_replacing(dest: std::path::PathBuf, data: &str) -> PyResult<()> {
    pyrt_core::host::statefile::write_replacing(&dest, data.as_bytes()).map_err(|e| {
        PyOSError::new_err((
            e.raw_os_error().unwrap_or(0),
            format!("{}: {e}", dest.display()),
        ))
    })
}
