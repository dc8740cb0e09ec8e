//! What runs on the host's side of a container, in the caller's process: network namespaces
//! made ahead, user namespaces held by descriptors, published ports' forwarders, the stdio
//! pump, the log files and the state file. Nothing here runs in the child.

pub mod background;
pub mod cgrouptree;
pub mod idmount;
pub mod io;
pub mod logs;
pub mod mountinfo;
pub mod netns;
pub mod portfwd;
pub mod statefile;
pub mod userns;
