//! pyrt._core: the only crate that knows PyO3. Functions take the OCI spec as JSON and raw
//! descriptors; every blocking call releases the GIL; every failure becomes a pyrt exception
//! (`pyrt.errors.SpawnError` with `.stage` and `.errno`), never a panic across the FFI.
//!
//! What cannot block keeps the GIL (a lock nobody holds, a poll that does not wait, the state
//! file's write). Releasing it is not free for a background thread, a pool's: while another
//! thread runs Python, getting it back can take up to the switch interval (5 ms), so every
//! needless release on a reset's path cost the pool that much in a test suite.
//!
//! One module per kind of thing the Python package asks for; this file only registers them.

use pyo3::prelude::*;

mod cgroups;
mod child;
mod errors;
mod exec;
mod files;
mod layers;
mod logs;
mod network;
mod pids;
mod process;
mod respawn;
mod timeouts;

#[pymodule]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    // A long-lived process that starts many containers: network namespaces made ahead pay off.
    pyrt_core::host::netns::enable_pool();
    m.add_function(wrap_pyfunction!(process::plan, m)?)?;
    m.add_function(wrap_pyfunction!(process::spawn, m)?)?;
    m.add_function(wrap_pyfunction!(respawn::respawn, m)?)?;
    m.add_function(wrap_pyfunction!(exec::exec, m)?)?;
    m.add_function(wrap_pyfunction!(exec::exec_server, m)?)?;
    m.add_class::<exec::ExecServer>()?;
    m.add_function(wrap_pyfunction!(process::communicate, m)?)?;
    m.add_function(wrap_pyfunction!(files::open_in_root, m)?)?;
    m.add_function(wrap_pyfunction!(layers::unpack_layer, m)?)?;
    m.add_function(wrap_pyfunction!(logs::log_pipe, m)?)?;
    m.add_function(wrap_pyfunction!(logs::log_from, m)?)?;
    m.add_function(wrap_pyfunction!(network::tcp_probe, m)?)?;
    m.add_function(wrap_pyfunction!(network::tcp_connect, m)?)?;
    m.add_function(wrap_pyfunction!(cgroups::cgroup_freeze, m)?)?;
    m.add_function(wrap_pyfunction!(cgroups::remove_cgroup, m)?)?;
    m.add_function(wrap_pyfunction!(pids::pid_start_time, m)?)?;
    m.add_function(wrap_pyfunction!(pids::signal_recorded, m)?)?;
    m.add_function(wrap_pyfunction!(files::write_replacing, m)?)?;
    m.add_function(wrap_pyfunction!(network::new_netns, m)?)?;
    m.add_function(wrap_pyfunction!(network::new_userns_netns, m)?)?;
    m.add_function(wrap_pyfunction!(network::forward_tcp_in, m)?)?;
    m.add_function(wrap_pyfunction!(network::forward_tcp, m)?)?;
    m.add_class::<network::PortForward>()?;
    m.add_class::<process::Process>()?;
    m.add("CHILD_SIZE", child::CHILD_BIN.len())?;
    Ok(())
}
