//! pyrt's container core. The seam with Python is one document, the OCI runtime spec: `plan`
//! turns it into a validated list of operations, `spawn` starts a process that carries them out
//! (`child`), `wire` is what the two say to each other, and `io` talks to it.

pub mod capabilities;
pub mod cgroups;
pub mod child;
pub mod hooks;
pub mod host;
pub mod idmap;
pub mod mountopts;
pub mod plan;
pub mod report;
pub mod runtime;
pub mod seccomp;
pub mod spawn;
pub mod syscall;
pub mod wire;
