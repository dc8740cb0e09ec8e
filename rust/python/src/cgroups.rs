//! Another process's container cgroups: frozen, thawed, removed.

use pyo3::prelude::*;

use pyrt_core::cgroups::{self, Cgroup};
use pyrt_core::runtime;

use crate::errors::cgroup_error;

/// Freezes (or, with `freeze` false, thaws) the container cgroup at `paths` (its directories,
/// as `Process.cgroup_paths()` gives them; another process's container); false when it has no
/// freezer.
#[pyfunction]
pub(crate) fn cgroup_freeze(py: Python<'_>, paths: Vec<String>, freeze: bool) -> PyResult<bool> {
    let layout = cgroups::layout().map_err(cgroup_error)?;
    let dirs: Vec<std::path::PathBuf> = paths.iter().map(Into::into).collect();
    let Some(c) = Cgroup::from_paths(layout, &dirs) else {
        return Ok(false);
    };
    if freeze {
        py.detach(|| c.freeze()).map_err(cgroup_error)
    } else {
        c.thaw().map(|_| true).map_err(cgroup_error)
    }
}

/// Kills what is left in a container's cgroup (frozen or not) and removes its directories, as
/// its creator recorded them (a stale container's, or another process's for `pyrt rm`).
#[pyfunction]
pub(crate) fn remove_cgroup(py: Python<'_>, paths: Vec<String>) -> PyResult<()> {
    let dirs: Vec<std::path::PathBuf> = paths.iter().map(Into::into).collect();
    py.detach(|| runtime::remove_cgroup(&dirs))
        .map_err(cgroup_error)
}
