//! A container's record under `--root`: `<root>/<id>/state.json` (what `create` learnt), beside
//! the start gate's socket while the container is `created`. The status is never stored: it is
//! read off the init process (alive, same start time, not a zombie) and the gate's presence.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use pyrt_core::cgroups::Cgroup;
use pyrt_core::hooks::Hook;
use serde::{Deserialize, Serialize};

use crate::error::{io_err, Result, RuncError};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Record {
    pub id: String,
    pub pid: i32,
    /// Field 22 of /proc/<pid>/stat at create: tells the init from a later process that
    /// got the same pid.
    pub start_time: u64,
    pub bundle: PathBuf,
    pub rootfs: PathBuf,
    pub created: String,
    pub owner: String,
    pub annotations: BTreeMap<String, String>,
    /// The container's cgroup directories (one per v1 hierarchy, or the v2 one).
    pub cgroup: Vec<PathBuf>,
    pub poststart: Vec<Hook>,
    pub poststop: Vec<Hook>,
    /// `--systemd-cgroup`: the scope unit the cgroup is, stopped by `delete`.
    #[serde(default)]
    pub systemd_unit: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Created,
    Running,
    Paused,
    Stopped,
}

impl Status {
    pub fn name(self) -> &'static str {
        match self {
            Status::Created => "created",
            Status::Running => "running",
            Status::Paused => "paused",
            Status::Stopped => "stopped",
        }
    }
}

/// The directory the start gate's socket is bound in, inside a container's state directory:
/// owned by the container's root when it has a user namespace (its root must bind there; the
/// state files beside it stay root's).
pub const GATE_DIR: &str = "gate";

/// The start gate's path relative to a container's state directory.
pub fn gate() -> PathBuf {
    Path::new(GATE_DIR).join(pyrt_core::child::GATE_SOCKET)
}

/// runc's rule for ids: they become path components and cgroup names.
pub fn check_id(id: &str) -> Result<()> {
    let ok = !id.is_empty()
        && id != "."
        && id != ".."
        && id.len() <= 1024
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_+-.".contains(c));
    if ok {
        Ok(())
    } else {
        Err(RuncError::BadId(id.into()))
    }
}

pub fn dir(root: &Path, id: &str) -> Result<PathBuf> {
    check_id(id)?;
    Ok(root.join(id))
}

impl Record {
    pub fn load(root: &Path, id: &str) -> Result<Record> {
        let d = dir(root, id)?;
        let text = match std::fs::read(d.join("state.json")) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(RuncError::NotExist(id.into()))
            }
            Err(e) => return Err(io_err(format!("reading {}", d.display()))(e)),
        };
        serde_json::from_slice(&text).map_err(|e| {
            RuncError::State(format!(
                "the state of {id} is damaged ({e}); delete --force removes it"
            ))
        })
    }

    /// Written whole or not at all: a temporary file renamed over the old one.
    pub fn save(&self, root: &Path) -> Result<()> {
        let d = dir(root, &self.id)?;
        let tmp = d.join("state.json.tmp");
        let body = serde_json::to_vec(self).expect("a record serialises");
        let mut f =
            std::fs::File::create(&tmp).map_err(io_err(format!("writing {}", tmp.display())))?;
        f.write_all(&body)
            .map_err(io_err(format!("writing {}", tmp.display())))?;
        std::fs::rename(&tmp, d.join("state.json"))
            .map_err(io_err(format!("writing the state in {}", d.display())))
    }

    pub fn status(&self, root: &Path) -> Status {
        if !alive(self.pid, self.start_time) {
            return Status::Stopped;
        }
        match dir(root, &self.id) {
            Ok(d) if d.join(gate()).exists() => Status::Created,
            _ if self.cgroup_handle().is_some_and(|c| c.frozen()) => Status::Paused,
            _ => Status::Running,
        }
    }

    /// The container's cgroup, from the directories `create` recorded.
    pub fn cgroup_handle(&self) -> Option<Cgroup> {
        pyrt_core::runtime::cgroup_of(&self.cgroup)
    }

    /// The runtime spec's state JSON.
    pub fn oci_state(&self, status: Status) -> serde_json::Value {
        serde_json::json!({
            "ociVersion": "1.2.0",
            "id": self.id,
            "status": status.name(),
            "pid": if status == Status::Stopped { 0 } else { self.pid },
            "bundle": self.bundle,
            "rootfs": self.rootfs,
            "created": self.created,
            "owner": self.owner,
            "annotations": self.annotations,
        })
    }
}

/// Start time of `pid` (field 22 of its stat), or None when it is gone or a zombie.
pub use pyrt_core::runtime::{alive, start_time};

/// Where state lives without `--root`: runc's default for root, the runtime directory rootless.
pub fn default_root() -> PathBuf {
    // SAFETY: geteuid cannot fail.
    let uid = unsafe { libc::geteuid() };
    if uid == 0 {
        return PathBuf::from("/run/pyrt-runc");
    }
    match std::env::var_os("XDG_RUNTIME_DIR") {
        Some(d) if !d.is_empty() => PathBuf::from(d).join("pyrt-runc"),
        _ => PathBuf::from(format!("/tmp/pyrt-runc-{uid}")),
    }
}

/// Every container id under `root`.
pub fn list(root: &Path) -> Vec<String> {
    let mut ids: Vec<String> = std::fs::read_dir(root)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.path().join("state.json").exists())
        .filter_map(|e| e.file_name().into_string().ok())
        .collect();
    ids.sort();
    ids
}
