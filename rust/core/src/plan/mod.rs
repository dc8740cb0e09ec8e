//! The plan: what the child carries out, decided in the parent (the child's vocabulary). Its
//! types are here; `from_spec` makes one from an OCI runtime spec.
//!
//! Everything that can be decided before `clone` is decided in the parent: which namespaces to
//! create, the order of mounts and their flags, the device nodes, the process's ids, rlimits
//! and capabilities. The child only carries out the plan; a spec that cannot be carried out is
//! refused with an error that names the offending field, before any kernel object exists.

use std::path::{Component, Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::capabilities::CapSets;
use crate::cgroups::CgroupPlan;
use crate::hooks::Hook;
use crate::mountopts::MountFlags;
use crate::seccomp::Program;

/// Annotation that asks the core to build the root as an overlay inside the container's own mount
/// namespace, so that no host-visible mount exists to leak. Value: JSON `{"lower": [dir, ...],
/// "upper": dir, "work": dir}`, lower directories topmost first (overlayfs' order).
pub const ANNOTATION_OVERLAY: &str = "run.pyrt.rootfs.overlay";
/// Annotation that asks for a recursive bind of a host directory (e.g. `/`) as the root.
pub const ANNOTATION_ROOT_BIND: &str = "run.pyrt.rootfs.bind";
/// Annotation "true": create a missing `process.cwd` inside the root (Docker's rule for `-w`).
pub const ANNOTATION_CREATE_CWD: &str = "run.pyrt.cwd.create";
/// Annotation "true": pyrt's init stays pid 1 and runs the command as its child. "idle": pyrt's
/// init stays pid 1 and runs no command at all (see `Plan::idle`).
pub const ANNOTATION_INIT: &str = "run.pyrt.init";

#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error("invalid OCI runtime spec: {0}")]
    Json(#[from] serde_json::Error),
    #[error("spec field {field}: {reason}")]
    Field { field: String, reason: String },
}

/// Whether ``s`` can go to the kernel as a C string (the child converts every path and name
/// the plan holds; a NUL would cut it short, or fail only there).
pub(crate) fn has_nul(s: impl AsRef<std::ffi::OsStr>) -> bool {
    s.as_ref().as_encoded_bytes().contains(&0)
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Overlay {
    pub lower: Vec<PathBuf>,
    /// The writable layer's directories on the host; none with `scratch`.
    #[serde(default)]
    pub upper: PathBuf,
    #[serde(default)]
    pub work: PathBuf,
    /// overlayfs's markers (whiteouts, opaque directories) are user.* xattrs: a rootless
    /// store's layers, mounted in a user namespace.
    #[serde(default)]
    pub userxattr: bool,
    /// The writable layer is a tmpfs the container mounts in its own mount namespace, under
    /// its root, and loses with it: nothing of it is ever on the host's disk, so nothing is
    /// made or deleted there (a container run to completion, whose layer nobody reads after).
    #[serde(default)]
    pub scratch: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub enum RootSource {
    /// `root.path` is already the root filesystem: bind it onto itself.
    InPlace,
    /// An overlay of read-only lower directories with a private upper one, mounted on `root.path`.
    Overlay(Overlay),
    /// A recursive bind of a host directory (the host image), mounted on `root.path`.
    Bind(PathBuf),
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Root {
    pub path: PathBuf,
    pub readonly: bool,
    pub source: RootSource,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub enum MountKind {
    /// A bind mount of a host path; `recursive` for `rbind`.
    Bind { source: PathBuf, recursive: bool },
    /// A fresh filesystem instance (`proc`, `tmpfs`, `sysfs`, `devpts`, `mqueue`, ...).
    Fs { fstype: String, source: String },
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Mount {
    /// Absolute path inside the container, normalised (no `.` or `..`).
    pub destination: PathBuf,
    pub kind: MountKind,
    pub flags: MountFlags,
    /// An idmapped bind mount (`idmap`, `ridmap`, or the mount's own mappings).
    #[serde(default)]
    pub idmap: Option<MountIdmap>,
}

impl Mount {
    /// Whether this is a `cgroup` mount: runc's convention for the host's whole cgroup layout.
    pub fn is_cgroup_layout(&self) -> bool {
        matches!(&self.kind, MountKind::Fs { fstype, .. } if fstype == "cgroup")
    }
}

/// How a bind mount's owners are mapped. mount_setattr(MOUNT_ATTR_IDMAP) needs privilege over
/// the source's filesystem, which a child in a user namespace does not have: the parent makes
/// the mount, detached, before clone (`host::idmount`), and the child only attaches it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct MountIdmap {
    /// The mount's own mappings, or the container's user namespace's when it names none.
    pub maps: IdMaps,
    /// `ridmap`: every mount of an `rbind` is mapped, not only its top.
    pub recursive: bool,
    /// The detached mount, a descriptor the child inherits (set by the spawner).
    #[serde(default)]
    pub fd: Option<i32>,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
pub struct Rlimit {
    pub resource: u32,
    pub soft: u64,
    pub hard: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Process {
    pub args: Vec<String>,
    pub env: Vec<String>,
    pub cwd: PathBuf,
    pub uid: u32,
    pub gid: u32,
    pub additional_gids: Vec<u32>,
    pub umask: Option<u32>,
    pub no_new_privs: bool,
    pub rlimits: Vec<Rlimit>,
    pub capabilities: Option<CapSets>,
    pub oom_score_adj: Option<i32>,
    /// A pty as the console: fd 0 is then a socket to send its master over.
    pub terminal: bool,
}

/// What the child does, in the order it does it (see `child::run`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Plan {
    /// Namespaces created by `clone` (CLONE_NEW* bits).
    pub clone_flags: u64,
    /// Namespaces joined by path, as (CLONE_NEW* bit, path), in the order to join them.
    pub join: Vec<(u64, PathBuf)>,
    pub root: Root,
    pub mounts: Vec<Mount>,
    /// The standard device nodes and /dev symlinks are made when /dev is a fresh tmpfs.
    pub default_devices: bool,
    pub masked_paths: Vec<PathBuf>,
    pub readonly_paths: Vec<PathBuf>,
    pub hostname: Option<String>,
    /// Bring `lo` up: the container has a network namespace of its own.
    pub loopback: bool,
    pub sysctl: Vec<(String, String)>,
    /// Create a missing working directory inside the root before pivot_root.
    pub create_cwd: bool,
    /// The container's own cgroup, made by the parent before clone.
    pub cgroup: Option<CgroupPlan>,
    /// Keep pyrt-child as pid 1, reaping orphans and forwarding signals (`child::init`).
    pub init: bool,
    /// With `init`: run no command; pid 1 idles until a signal whose default action ends a
    /// process (a container kept only to exec into, as a pool's: no program of the image is
    /// executed, so none is needed, and its start-up is not paid at every start and reset).
    pub idle: bool,
    /// The seccomp filter, compiled; installed last, just before execve.
    pub seccomp: Option<Program>,
    /// Unshare the cgroup namespace in the child, once it is inside its cgroup (clone's
    /// CLONE_NEWCGROUP would root the namespace at the parent's cgroup on v2).
    pub new_cgroupns: bool,
    /// With a new user namespace: its uid and gid maps, which the parent writes before it sends
    /// the plan (so the child does nothing before they are in place).
    pub id_maps: Option<IdMaps>,
    pub process: Process,
    /// `linux.devices`: nodes made in the container's /dev (after the default ones).
    #[serde(default)]
    pub devices: Vec<Device>,
    /// The host's cgroup hierarchies, for a `cgroup` mount: read by the parent before the
    /// clone, from a mount table it reads again only when it changed (`host::mountinfo`); the
    /// child reads its own when they are absent.
    #[serde(default)]
    pub host_cgroups: Option<Vec<crate::child::cgroupfs::Hierarchy>>,
    /// The v1 layout of the `cgroup` mount made ahead: a detached tree the parent cloned and
    /// handed down (`host::cgrouptree`), attached with one move_mount instead of a dozen mounts.
    #[serde(default)]
    pub cgroup_tree_fd: Option<i32>,
    /// The container outlives the process that made it (`pyrt-runc create`): no parent-death
    /// signal, no lifeline.
    #[serde(default)]
    pub detached: bool,
    /// `pyrt-runc create`: once set up, wait for `start` to connect to this listening unix
    /// socket, bound by the parent in the state directory and inherited (set by the spawner);
    /// errors after that go to `start`.
    #[serde(default)]
    pub gate_fd: Option<i32>,
    #[serde(default)]
    pub hooks: ChildHooks,
    /// `linux.rootfsPropagation`: MS_SHARED, MS_SLAVE, MS_PRIVATE or MS_UNBINDABLE (with
    /// MS_REC for the "r" forms) for the root once it is "/"; 0 leaves it private.
    #[serde(default)]
    pub root_propagation: u64,
    /// Set by the spawner when the plan's user namespace, joined by path, was entered by a
    /// first stage before the other namespaces were made (`child::stage1`): the child is in
    /// a user namespace although neither `clone_flags` nor `join` says so any more.
    #[serde(default)]
    pub user_joined_first: bool,
    /// The descriptors of the namespaces in `join` that the spawner opened and handed down
    /// (their paths are then /proc/self/fd/N), with `user_joined_first`.
    #[serde(default)]
    pub handed_joins: Vec<i32>,
}

impl Plan {
    /// The descriptors the child inherits beyond its six: the start gate, detached mounts and
    /// namespaces to join.
    pub fn inherited_fds(&self) -> Vec<i32> {
        let mounts = self
            .mounts
            .iter()
            .filter_map(|m| m.idmap.as_ref().and_then(|i| i.fd));
        self.gate_fd
            .into_iter()
            .chain(self.cgroup_tree_fd)
            .chain(mounts)
            .chain(self.handed_joins.iter().copied())
            .collect()
    }

    /// Whether the `cgroup` mount can be the layout the parent made ahead
    /// (`host::cgrouptree`): the container stays in the caller's cgroups, makes a cgroup and
    /// a mount namespace of its own, and has no user namespace; the hierarchies are known.
    pub fn fits_cgroup_tree(&self) -> bool {
        let ours = (libc::CLONE_NEWCGROUP | libc::CLONE_NEWNS) as u64;
        self.new_cgroupns
            && self.cgroup.is_none()
            && self.clone_flags & libc::CLONE_NEWNS as u64 != 0
            && !self.in_user_namespace()
            && !self.join.iter().any(|(bit, _)| bit & ours != 0)
            && self.host_cgroups.is_some()
            && self.mounts.iter().any(Mount::is_cgroup_layout)
    }

    /// Whether the container runs in a user namespace of its own or joined.
    pub fn in_user_namespace(&self) -> bool {
        let user = libc::CLONE_NEWUSER as u64;
        self.clone_flags & user != 0
            || self.user_joined_first
            || self.join.iter().any(|(bit, _)| *bit == user)
    }

    /// Whether `linux.rootfsPropagation` or a mount's own propagation asks for slave or shared:
    /// then the container's mount namespace must stay the host's slave rather than become
    /// private, or there would be nothing for the root or the mount to receive.
    pub fn receives_host_mounts(&self) -> bool {
        let wants = |p: u64| p & (libc::MS_SLAVE | libc::MS_SHARED) != 0;
        wants(self.root_propagation) || self.mounts.iter().any(|m| wants(m.flags.propagation))
    }
}

/// A device node of `linux.devices`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Device {
    /// Absolute, normalised path inside the container.
    pub path: PathBuf,
    /// S_IFCHR, S_IFBLK or S_IFIFO.
    pub kind: u32,
    pub major: i64,
    pub minor: i64,
    /// Permission bits (0666 when the spec names none).
    pub mode: u32,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
}

/// The hooks the child runs itself, and whether it stops before pivot_root so that the parent
/// runs the runtime namespace's (`createRuntime`, `prestart`) and sends the state JSON.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct ChildHooks {
    pub sync: bool,
    pub create_container: Vec<Hook>,
    pub start_container: Vec<Hook>,
}

/// A user namespace's maps: (id inside, id outside, count) ranges.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct IdMaps {
    pub uid: Vec<(u32, u32, u32)>,
    pub gid: Vec<(u32, u32, u32)>,
}

/// A process to start inside a running container (`exec`): it joins the namespaces of the
/// container's first process, `target` (a host pid), and then runs like a container's command.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ExecPlan {
    pub target: i32,
    pub process: Process,
    /// The container's seccomp filter applies to what is exec'd into it too.
    pub seccomp: Option<Program>,
    /// Join the container's pid namespace here, then fork (the command is born inside; we wait
    /// for it and pass its status on), instead of being born there by the spawner. For a
    /// container in a user namespace: only a process inside that namespace may make processes
    /// in its pid namespace, and only a single-threaded one may enter it.
    #[serde(default)]
    pub fork_into_pidns: bool,
    /// The process outlives the one that started it (`pyrt-runc exec --detach`).
    #[serde(default)]
    pub detached: bool,
    /// A pidfd of `target`, handed down: the namespaces are joined through it, all of them in
    /// one or two setns calls (Linux 5.8) instead of an open and a setns each. None: through
    /// `/proc/<target>/ns`.
    #[serde(default)]
    pub pidfd: Option<i32>,
    /// Forked by the container's exec server (`child::serve`): in every namespace already.
    #[serde(default)]
    pub joined: bool,
}

/// What a child is asked to do. One is made per spawn and serialised at once: its size does
/// not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub enum Request {
    Create(Plan),
    Exec(ExecPlan),
    Forward(ForwardPlan),
    Serve(ServePlan),
}

/// A container's exec server (`child::serve`): it joins the namespaces of the container whose
/// first process is `target` (the pid namespace as the one its children are born in), then
/// makes each exec asked for on `socket` by a fork that is the caller's child, not its own
/// (CLONE_PARENT). The descriptors are handed down: a pidfd of `target` (it ends when the
/// container's first process does), the socket, and the cgroup's v1 `tasks` files to step
/// into around each fork and back out of (as the spawner thread does).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ServePlan {
    pub target: i32,
    pub pidfd: i32,
    pub socket: i32,
    pub enter: Vec<i32>,
    pub leave: Vec<i32>,
    /// The container's seccomp filter, installed by the server itself once it has joined:
    /// its forks inherit it, and an exec then attaches none of its own (the kernel checks and
    /// compiles a filter at each attach, 0.1 ms of an exec here). Only pyrt's default profile
    /// is sent, whose rules allow every call the server and an exec's setup make.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seccomp: Option<Program>,
    /// The container's bounding set (its first process's), which the server cuts its own to
    /// once: an exec with this one then drops nothing (`capabilities::narrow_bounding`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bounding: Option<u64>,
}

impl ServePlan {
    /// The descriptors it is handed.
    pub fn fds(&self) -> Vec<i32> {
        let mut v = vec![self.pidfd, self.socket];
        v.extend(&self.enter);
        v.extend(&self.leave);
        v
    }
}

/// A published TCP port of a rootless container, forwarded by a process of its own
/// (`host::portfwd::run_helper`): it enters `userns` (the caller's own, so this needs no
/// privilege), then `netns`, and relays each connection to `listener` (bound on the host by
/// the parent) to 127.0.0.1:`target` in there. The descriptors are handed down.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ForwardPlan {
    pub userns: i32,
    pub netns: i32,
    pub listener: i32,
    pub target: u16,
}

impl ForwardPlan {
    /// The descriptors it is handed.
    pub fn fds(&self) -> Vec<i32> {
        vec![self.userns, self.netns, self.listener]
    }
}

/// Whether process `pid` is in our own namespace of this kind (an unreadable one counts as
/// the same: the child's own attempt will then report why).
/// A mount destination as an absolute, lexically clean path. `..` is refused rather than folded:
/// a spec that climbs is a spec to look at, and the child resolves every path inside the root
/// anyway.
pub fn normalize_destination(p: &Path) -> Result<PathBuf, String> {
    if !p.is_absolute() {
        return Err(format!("must be an absolute path: {}", p.display()));
    }
    if has_nul(p) {
        return Err(format!("contains a NUL byte: {}", p.display()));
    }
    let mut out = PathBuf::from("/");
    for c in p.components() {
        match c {
            Component::RootDir | Component::CurDir => {}
            Component::Normal(n) => out.push(n),
            Component::ParentDir => return Err(format!("must not contain '..': {}", p.display())),
            Component::Prefix(_) => return Err(format!("not a Linux path: {}", p.display())),
        }
    }
    Ok(out)
}

#[cfg(feature = "spec")]
mod from_spec;
#[cfg(feature = "spec")]
pub use from_spec::{cgroup_resources, resources_from_json, resources_of};
