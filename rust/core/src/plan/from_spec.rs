//! OCI runtime spec -> a validated [`Plan`] (and an exec's process -> an [`ExecPlan`]): every
//! field checked, every path made absolute and clean, every flag and id computed, before any
//! kernel object exists.

use std::path::{Path, PathBuf};

use oci_spec::runtime::{PosixRlimitType, Spec};

use super::*;
use crate::capabilities;
use crate::cgroups::{DeviceRule, Resources};
use crate::mountopts;

fn no_nul(field: impl Into<String>, s: impl AsRef<std::ffi::OsStr>) -> Result<(), PlanError> {
    if has_nul(&s) {
        return Err(field_err(field, "contains a NUL byte"));
    }
    Ok(())
}

fn field_err(field: impl Into<String>, reason: impl Into<String>) -> PlanError {
    PlanError::Field {
        field: field.into(),
        reason: reason.into(),
    }
}

fn same_namespace(pid: i32, kind: &str) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (
        std::fs::metadata(format!("/proc/{pid}/ns/{kind}")),
        std::fs::metadata(format!("/proc/self/ns/{kind}")),
    ) {
        (Ok(a), Ok(b)) => a.ino() == b.ino() && a.dev() == b.dev(),
        _ => true,
    }
}

impl ExecPlan {
    /// From the JSON of an OCI `process` object (what `runc exec --process` takes).
    pub fn from_process_json(
        json: &str,
        target: i32,
        seccomp_json: Option<&str>,
    ) -> Result<ExecPlan, PlanError> {
        let p: oci_spec::runtime::Process = serde_json::from_str(json)?;
        let seccomp = match seccomp_json {
            Some(j) => {
                Some(crate::seccomp::from_json(j).map_err(|e| field_err("linux.seccomp", e))?)
            }
            None => None,
        };
        Ok(ExecPlan {
            target,
            process: process_of(&p)?,
            seccomp,
            fork_into_pidns: !same_namespace(target, "user"),
            detached: false,
            pidfd: None,
            joined: false,
        })
    }
}

impl Plan {
    pub fn from_json(json: &str) -> Result<Plan, PlanError> {
        let spec: Spec = serde_json::from_str(json)?;
        Plan::from_spec(&spec)
    }

    pub fn from_spec(spec: &Spec) -> Result<Plan, PlanError> {
        let root = plan_root(spec)?;
        let linux = spec.linux().as_ref();

        let mut clone_flags = 0u64;
        let mut join = Vec::new();
        for ns in linux
            .and_then(|l| l.namespaces().as_ref())
            .into_iter()
            .flatten()
        {
            // LinuxNamespaceType's discriminants are the CLONE_NEW* bits.
            let bit = ns.typ() as u64;
            if clone_flags & bit != 0 || join.iter().any(|(b, _)| *b == bit) {
                // (config-linux.md: a namespace type appears once.)
                return Err(field_err(
                    "linux.namespaces",
                    format!("{:?} is named more than once", ns.typ()),
                ));
            }
            match ns.path() {
                Some(p) if !p.as_os_str().is_empty() => {
                    if !p.is_absolute() {
                        return Err(field_err(
                            "linux.namespaces.path",
                            format!("must be an absolute path: {}", p.display()),
                        ));
                    }
                    no_nul("linux.namespaces.path", p)?;
                    join.push((bit, p.clone()))
                }
                _ => clone_flags |= bit,
            }
        }
        let id_maps = plan_id_maps(linux, clone_flags)?;
        let new_cgroupns = clone_flags & libc::CLONE_NEWCGROUP as u64 != 0;
        clone_flags &= !(libc::CLONE_NEWCGROUP as u64);
        if clone_flags & libc::CLONE_NEWNS as u64 == 0 {
            return Err(field_err(
                "linux.namespaces",
                "a new mount namespace is required (pyrt never mounts in the host's)",
            ));
        }

        let mut mounts = Vec::new();
        let mut dev_tmpfs = false;
        for (i, m) in spec.mounts().iter().flatten().enumerate() {
            let field = format!("mounts[{i}]");
            let destination = normalize_destination(m.destination())
                .map_err(|r| field_err(format!("{field}.destination"), r))?;
            let (flags, is_bind) =
                mountopts::parse(m.options().iter().flatten().map(|s| s.as_str()))
                    .map_err(|r| field_err(format!("{field}.options"), r.to_string()))?;
            let typ = m.typ().clone().unwrap_or_default();
            let kind = if is_bind || typ == "bind" {
                let source = m.source().clone().ok_or_else(|| {
                    field_err(format!("{field}.source"), "a bind mount needs a source")
                })?;
                if !source.is_absolute() {
                    return Err(field_err(
                        format!("{field}.source"),
                        format!("bind source must be an absolute path: {}", source.display()),
                    ));
                }
                no_nul(format!("{field}.source"), &source)?;
                MountKind::Bind {
                    source,
                    recursive: flags.recursive,
                }
            } else {
                if typ.is_empty() {
                    return Err(field_err(format!("{field}.type"), "a mount needs a type"));
                }
                no_nul(format!("{field}.type"), &typ)?;
                if let Some(src) = m.source() {
                    no_nul(format!("{field}.source"), src)?;
                }
                if destination == Path::new("/dev") && typ == "tmpfs" {
                    dev_tmpfs = true;
                }
                MountKind::Fs {
                    fstype: typ,
                    source: m
                        .source()
                        .as_ref()
                        .map(|s| s.to_string_lossy().into_owned())
                        .unwrap_or_else(|| "none".into()),
                }
            };
            let idmap = plan_mount_idmap(m, &field, &flags, &kind, id_maps.as_ref())?;
            mounts.push(Mount {
                destination,
                kind,
                flags,
                idmap,
            });
        }

        let process = plan_process(spec)?;
        let hostname = spec.hostname().clone().filter(|h| !h.is_empty());
        if let Some(h) = &hostname {
            no_nul("hostname", h)?;
        }
        // A uts namespace joined by path is the container's too (a pod's containers join the
        // sandbox's, and containerd gives each the pod's hostname): only the host's is refused.
        let uts = libc::CLONE_NEWUTS as u64;
        let own_uts = clone_flags & uts != 0 || join.iter().any(|(bit, _)| *bit == uts);
        if hostname.is_some() && !own_uts {
            return Err(field_err(
                "hostname",
                "setting a hostname needs a uts namespace of the container's (new or joined)",
            ));
        }
        let paths = |v: Option<&Vec<String>>, field: &str| -> Result<Vec<PathBuf>, PlanError> {
            v.into_iter()
                .flatten()
                .map(|p| normalize_destination(Path::new(p)).map_err(|r| field_err(field, r)))
                .collect()
        };
        let mut sysctl: Vec<(String, String)> = linux
            .and_then(|l| l.sysctl().clone())
            .unwrap_or_default()
            .into_iter()
            .collect();
        sysctl.sort();
        for (k, v) in &sysctl {
            check_sysctl(k, clone_flags, &join)
                .map_err(|r| field_err(format!("linux.sysctl.{k}"), r))?;
            no_nul(format!("linux.sysctl.{k}"), v)?;
        }

        let init_annotation = spec
            .annotations()
            .as_ref()
            .and_then(|a| a.get(ANNOTATION_INIT))
            .map(String::as_str);
        Ok(Plan {
            clone_flags,
            join,
            root,
            mounts,
            default_devices: dev_tmpfs,
            masked_paths: paths(
                linux.and_then(|l| l.masked_paths().as_ref()),
                "linux.maskedPaths",
            )?,
            readonly_paths: paths(
                linux.and_then(|l| l.readonly_paths().as_ref()),
                "linux.readonlyPaths",
            )?,
            hostname,
            loopback: clone_flags & libc::CLONE_NEWNET as u64 != 0,
            sysctl,
            create_cwd: spec
                .annotations()
                .as_ref()
                .and_then(|a| a.get(ANNOTATION_CREATE_CWD))
                .is_some_and(|v| v == "true"),
            cgroup: plan_cgroup(spec)?,
            id_maps,
            seccomp: match linux.and_then(|l| l.seccomp().as_ref()) {
                Some(s) => Some(
                    crate::seccomp::from_spec(s)
                        .map_err(|e| field_err("linux.seccomp", e.to_string()))?,
                ),
                None => None,
            },
            init: matches!(init_annotation, Some("true" | "idle")),
            idle: init_annotation == Some("idle"),
            new_cgroupns,
            process,
            devices: plan_devices(linux)?,
            host_cgroups: None,
            cgroup_tree_fd: None,
            detached: false,
            gate_fd: None,
            hooks: plan_hooks(spec),
            root_propagation: plan_root_propagation(linux)?,
            user_joined_first: false,
            handed_joins: Vec::new(),
        })
    }
}

fn plan_hooks(spec: &Spec) -> ChildHooks {
    let Some(h) = spec.hooks().as_ref() else {
        return ChildHooks::default();
    };
    let list = |v: &Option<Vec<oci_spec::runtime::Hook>>| -> Vec<Hook> {
        v.iter().flatten().map(Hook::from_spec).collect()
    };
    #[allow(deprecated)]
    let prestart = list(h.prestart());
    let create_runtime = list(h.create_runtime());
    let create_container = list(h.create_container());
    let start_container = list(h.start_container());
    ChildHooks {
        sync: !(prestart.is_empty()
            && create_runtime.is_empty()
            && create_container.is_empty()
            && start_container.is_empty()),
        create_container,
        start_container,
    }
}

fn plan_devices(linux: Option<&oci_spec::runtime::Linux>) -> Result<Vec<Device>, PlanError> {
    use oci_spec::runtime::LinuxDeviceType as T;
    let mut out = Vec::new();
    for (i, d) in linux
        .and_then(|l| l.devices().as_ref())
        .into_iter()
        .flatten()
        .enumerate()
    {
        let field = format!("linux.devices[{i}]");
        let path =
            normalize_destination(d.path()).map_err(|r| field_err(format!("{field}.path"), r))?;
        if !path.starts_with("/dev") {
            return Err(field_err(
                format!("{field}.path"),
                format!("{} is not under /dev", path.display()),
            ));
        }
        let kind = match d.typ() {
            T::C | T::U => libc::S_IFCHR,
            T::B => libc::S_IFBLK,
            T::P => libc::S_IFIFO,
            T::A => {
                return Err(field_err(
                    format!("{field}.type"),
                    "\"a\" is for the cgroup allow-list, not a node",
                ))
            }
        };
        if kind != libc::S_IFIFO && (d.major() < 0 || d.minor() < 0) {
            return Err(field_err(
                field,
                "a character or block device needs major and minor numbers",
            ));
        }
        out.push(Device {
            path,
            kind,
            major: d.major(),
            minor: d.minor(),
            mode: d.file_mode().unwrap_or(0o666) & 0o7777,
            uid: d.uid(),
            gid: d.gid(),
        });
    }
    Ok(out)
}

/// Only sysctls that a namespace isolates, and only with that namespace the container's own
/// (runc's allow-list): anything else would change the host.
fn check_sysctl(key: &str, new: u64, joined: &[(u64, PathBuf)]) -> Result<(), String> {
    if key.is_empty() || key.contains("..") || key.contains('/') {
        return Err("not a sysctl name".into());
    }
    let ipc = [
        "kernel.msgmax",
        "kernel.msgmnb",
        "kernel.msgmni",
        "kernel.sem",
        "kernel.shmall",
        "kernel.shmmax",
        "kernel.shmmni",
        "kernel.shm_rmid_forced",
    ];
    let (ns, what) = if ipc.contains(&key) || key.starts_with("fs.mqueue.") {
        (libc::CLONE_NEWIPC, "an ipc")
    } else if key.starts_with("net.") {
        (libc::CLONE_NEWNET, "a network")
    } else if key == "kernel.domainname" || key == "kernel.hostname" {
        (libc::CLONE_NEWUTS, "a uts")
    } else {
        return Err("not a namespaced sysctl: it would change the host".into());
    };
    let own = new & ns as u64 != 0 || joined.iter().any(|(b, _)| *b == ns as u64);
    if own {
        Ok(())
    } else {
        Err(format!("needs {what} namespace of the container's own"))
    }
}

/// A mount's idmapping: its own `uidMappings`/`gidMappings` (both, as the spec requires), or
/// with `idmap`/`ridmap` and none, the container's user namespace's. Bind mounts only.
fn plan_mount_idmap(
    m: &oci_spec::runtime::Mount,
    field: &str,
    flags: &MountFlags,
    kind: &MountKind,
    container: Option<&IdMaps>,
) -> Result<Option<MountIdmap>, PlanError> {
    let (uid, gid) = (m.uid_mappings().as_ref(), m.gid_mappings().as_ref());
    if uid.is_none() && gid.is_none() && !flags.idmap {
        return Ok(None);
    }
    if !matches!(kind, MountKind::Bind { .. }) {
        return Err(field_err(
            format!("{field}.options"),
            "an idmapped mount must be a bind mount (bind or rbind)",
        ));
    }
    let ranges = |v: &Vec<oci_spec::runtime::LinuxIdMapping>, which: &str| {
        id_ranges(Some(v), &format!("{field}.{which}"))
    };
    let maps = match (uid, gid) {
        (Some(u), Some(g)) => IdMaps {
            uid: ranges(u, "uidMappings")?,
            gid: ranges(g, "gidMappings")?,
        },
        (None, None) => container.cloned().ok_or_else(|| {
            field_err(
                format!("{field}.options"),
                "idmap without uidMappings/gidMappings uses the container's user namespace's, \
                 and the container has none",
            )
        })?,
        (Some(_), None) => {
            return Err(field_err(
                format!("{field}.gidMappings"),
                "uidMappings needs gidMappings beside it",
            ))
        }
        (None, Some(_)) => {
            return Err(field_err(
                format!("{field}.uidMappings"),
                "gidMappings needs uidMappings beside it",
            ))
        }
    };
    Ok(Some(MountIdmap {
        maps,
        recursive: flags.idmap_recursive,
        fd: None,
    }))
}

/// The kernel's limit on the ranges of one uid_map or gid_map.
const MAX_ID_RANGES: usize = 340;

/// A user namespace's or a mount's mappings as (inside, outside, count) ranges: 1 to 340 of
/// them (the kernel's limit), none of size 0.
fn id_ranges(
    v: Option<&Vec<oci_spec::runtime::LinuxIdMapping>>,
    field: &str,
) -> Result<Vec<(u32, u32, u32)>, PlanError> {
    let out: Vec<(u32, u32, u32)> = v
        .into_iter()
        .flatten()
        .map(|m| (m.container_id(), m.host_id(), m.size()))
        .collect();
    if out.is_empty() || out.len() > MAX_ID_RANGES || out.iter().any(|r| r.2 == 0) {
        return Err(field_err(
            field,
            format!("needs 1 to {MAX_ID_RANGES} mappings, each of a non-zero size"),
        ));
    }
    Ok(out)
}

fn plan_id_maps(
    linux: Option<&oci_spec::runtime::Linux>,
    clone_flags: u64,
) -> Result<Option<IdMaps>, PlanError> {
    if clone_flags & libc::CLONE_NEWUSER as u64 == 0 {
        return Ok(None);
    }
    Ok(Some(IdMaps {
        uid: id_ranges(
            linux.and_then(|l| l.uid_mappings().as_ref()),
            "linux.uidMappings",
        )?,
        gid: id_ranges(
            linux.and_then(|l| l.gid_mappings().as_ref()),
            "linux.gidMappings",
        )?,
    }))
}

fn plan_root(spec: &Spec) -> Result<Root, PlanError> {
    let root = spec
        .root()
        .as_ref()
        .ok_or_else(|| field_err("root", "missing"))?;
    let path = root.path().clone();
    if !path.is_absolute() {
        return Err(field_err(
            "root.path",
            "must be an absolute path (resolve it against the bundle first)",
        ));
    }
    no_nul("root.path", &path)?;
    let ann = spec.annotations().as_ref();
    let source = if let Some(ov) = ann.and_then(|a| a.get(ANNOTATION_OVERLAY)) {
        let ov: Overlay = serde_json::from_str(ov)
            .map_err(|e| field_err(format!("annotations.{ANNOTATION_OVERLAY}"), e.to_string()))?;
        if ov.lower.is_empty() {
            return Err(field_err(
                format!("annotations.{ANNOTATION_OVERLAY}"),
                "an overlay needs at least one lower directory",
            ));
        }
        let host_layer = if ov.scratch {
            if !ov.upper.as_os_str().is_empty() || !ov.work.as_os_str().is_empty() {
                return Err(field_err(
                    format!("annotations.{ANNOTATION_OVERLAY}"),
                    "a scratch layer has no upper or work directory",
                ));
            }
            // Its directories are made under the root's mount point: the same rule.
            vec![&path]
        } else {
            vec![&ov.upper, &ov.work]
        };
        for p in ov.lower.iter().chain(host_layer) {
            // overlayfs takes these in a comma and colon separated option string.
            let s = p.to_string_lossy();
            if !p.is_absolute() || s.contains([',', ':', '\0']) {
                return Err(field_err(
                    format!("annotations.{ANNOTATION_OVERLAY}"),
                    format!(
                        "overlay directories must be absolute and free of ',', ':' and NUL: {s}"
                    ),
                ));
            }
        }
        RootSource::Overlay(ov)
    } else if let Some(src) = ann.and_then(|a| a.get(ANNOTATION_ROOT_BIND)) {
        let src = PathBuf::from(src);
        if !src.is_absolute() {
            return Err(field_err(
                format!("annotations.{ANNOTATION_ROOT_BIND}"),
                format!("must be an absolute path: {}", src.display()),
            ));
        }
        no_nul(format!("annotations.{ANNOTATION_ROOT_BIND}"), &src)?;
        RootSource::Bind(src)
    } else {
        RootSource::InPlace
    };
    Ok(Root {
        path,
        readonly: root.readonly().unwrap_or(false),
        source,
    })
}

/// `resources_of` for a `linux.resources` object as JSON (what `update` takes).
pub fn resources_from_json(text: &str) -> Result<Resources, PlanError> {
    let res: oci_spec::runtime::LinuxResources =
        serde_json::from_str(text).map_err(|e| field_err("linux.resources", e.to_string()))?;
    resources_of(&res)
}

/// The limits of an OCI `LinuxResources` object that pyrt applies, checked: what a spec asks
/// for at create, and what `pyrt-runc update --resources` asks for later.
pub fn resources_of(res: &oci_spec::runtime::LinuxResources) -> Result<Resources, PlanError> {
    let mut r = Resources::default();
    {
        // Limits pyrt does not apply are refused: a container must never run silently
        // unlimited. (The device rules are read by cgroup_resources, at create only: runc's
        // update leaves them too, and containerd resends them with every update.)
        let unsupported = [
            ("blockIO", res.block_io().is_some()),
            (
                "hugepageLimits",
                res.hugepage_limits()
                    .as_ref()
                    .is_some_and(|h| !h.is_empty()),
            ),
            ("network", res.network().is_some()),
            ("rdma", res.rdma().as_ref().is_some_and(|r| !r.is_empty())),
            (
                "unified",
                res.unified().as_ref().is_some_and(|u| !u.is_empty()),
            ),
        ];
        if let Some((name, _)) = unsupported.iter().find(|(_, set)| *set) {
            return Err(field_err(
                format!("linux.resources.{name}"),
                "pyrt does not apply this limit; refusing rather than running without it",
            ));
        }
        if let Some(m) = res.memory() {
            r.memory = m.limit();
            r.memory_swap = m.swap();
            r.memory_reservation = m.reservation();
            r.memory_swappiness = m.swappiness();
            r.disable_oom_killer = m.disable_oom_killer();
            if m.kernel().is_some_and(|k| k >= 0) || m.kernel_tcp().is_some_and(|k| k >= 0) {
                return Err(field_err(
                    "linux.resources.memory.kernel",
                    "kernel memory limits are deprecated (Linux 5.4) and not enforced by recent \
                     kernels; refusing rather than running without one",
                ));
            }
        }
        if let Some(p) = res.pids() {
            r.pids = Some(p.limit());
        }
        if let Some(c) = res.cpu() {
            r.cpu_quota = c.quota();
            r.cpu_period = c.period();
            r.cpu_shares = c.shares();
            r.cpuset_cpus = c.cpus().clone();
            r.cpuset_mems = c.mems().clone();
        }
    }
    const MIN_MEMORY: i64 = 6 << 20;
    if let Some(m) = r.memory {
        if (0..MIN_MEMORY).contains(&m) {
            return Err(field_err(
                "linux.resources.memory.limit",
                format!("{m} bytes is below the minimum of 6 MiB a container needs"),
            ));
        }
    }
    if let (Some(m), Some(sw)) = (r.memory, r.memory_swap) {
        if sw >= 0 && sw < m {
            return Err(field_err(
                "linux.resources.memory.swap",
                format!("memory+swap ({sw}) must not be below the memory limit ({m})"),
            ));
        }
    }
    if let Some(s) = r.memory_swappiness.filter(|s| *s > 100) {
        return Err(field_err(
            "linux.resources.memory.swappiness",
            format!("{s} is not between 0 and 100"),
        ));
    }
    if let Some(v) = r.memory_reservation.filter(|v| *v < -1) {
        return Err(field_err(
            "linux.resources.memory.reservation",
            format!("{v} is not a size in bytes"),
        ));
    }
    if r.pids == Some(0) {
        return Err(field_err(
            "linux.resources.pids.limit",
            "0 would forbid even the container's first process",
        ));
    }
    if let Some(q) = r.cpu_quota {
        if (0..1000).contains(&q) {
            return Err(field_err(
                "linux.resources.cpu.quota",
                format!("{q}us is below the kernel's minimum of 1000us"),
            ));
        }
    }
    Ok(r)
}

fn plan_root_propagation(linux: Option<&oci_spec::runtime::Linux>) -> Result<u64, PlanError> {
    let Some(word) = linux.and_then(|l| l.rootfs_propagation().as_deref()) else {
        return Ok(0);
    };
    match mountopts::parse(std::iter::once(word)) {
        Ok((f, false)) if f.propagation != 0 => Ok(f.propagation),
        _ => Err(field_err(
            "linux.rootfsPropagation",
            format!("{word:?} is not one of shared, slave, private, unbindable (or r-)"),
        )),
    }
}

fn plan_cgroup(spec: &Spec) -> Result<Option<CgroupPlan>, PlanError> {
    let Some(linux) = spec.linux().as_ref() else {
        return Ok(None);
    };
    let r = cgroup_resources(spec)?;
    let path = linux.cgroups_path().clone();
    match path {
        Some(path) => Ok(Some(CgroupPlan { path, resources: r })),
        None if r.limits_anything() => Err(field_err(
            "linux.cgroupsPath",
            "resources are limited but no cgroupsPath says where",
        )),
        // Device rules alone (`runc spec` writes a deny-all): a runtime that makes a cgroup
        // of its own naming (pyrt-runc) applies them there, through cgroup_resources.
        None => Ok(None),
    }
}

/// Everything `linux.resources` asks of the container's cgroup at create: the limits, and
/// the device rules in their order followed by what every container needs (its default
/// /dev nodes, and the nodes of `linux.devices`), as runc and crun add them too.
pub fn cgroup_resources(spec: &Spec) -> Result<Resources, PlanError> {
    let linux = spec.linux().as_ref();
    let mut r = match linux.and_then(|l| l.resources().as_ref()) {
        Some(res) => resources_of(res)?,
        None => Resources::default(),
    };
    let rules = linux
        .and_then(|l| l.resources().as_ref())
        .and_then(|res| res.devices().as_ref());
    for (i, d) in rules.into_iter().flatten().enumerate() {
        r.devices
            .push(device_rule(d, &format!("linux.resources.devices[{i}]"))?);
    }
    if !r.devices.is_empty() {
        r.devices.extend(default_device_rules());
        for d in plan_devices(linux)? {
            let kind = match d.kind {
                libc::S_IFBLK => 'b',
                libc::S_IFCHR => 'c',
                _ => continue, // (a FIFO is no device to the cgroup)
            };
            r.devices
                .push(DeviceRule::allow(kind, Some(d.major), Some(d.minor), "rwm"));
        }
    }
    Ok(r)
}

/// The nodes of pyrt's default /dev (null, zero, full, random, urandom, tty, ptmx and the
/// ptys of /dev/pts), and mknod of any node (opening one still needs a rule).
fn default_device_rules() -> Vec<DeviceRule> {
    let c = |major, minor| DeviceRule::allow('c', Some(major), minor, "rwm");
    vec![
        DeviceRule::allow('c', None, None, "m"),
        DeviceRule::allow('b', None, None, "m"),
        c(1, Some(3)),
        c(1, Some(5)),
        c(1, Some(7)),
        c(1, Some(8)),
        c(1, Some(9)),
        c(5, Some(0)),
        c(5, Some(2)),
        c(136, None),
    ]
}

fn device_rule(
    d: &oci_spec::runtime::LinuxDeviceCgroup,
    field: &str,
) -> Result<DeviceRule, PlanError> {
    use oci_spec::runtime::LinuxDeviceType as T;
    let kind = match d.typ().unwrap_or(T::A) {
        T::A => 'a',
        T::B => 'b',
        T::C | T::U => 'c',
        T::P => {
            return Err(field_err(
                format!("{field}.type"),
                "\"p\" (a FIFO) is not a device the cgroup governs",
            ))
        }
    };
    let access = d.access().clone().unwrap_or_else(|| "rwm".into());
    if access.is_empty() || !access.chars().all(|ch| "rwm".contains(ch)) {
        return Err(field_err(
            format!("{field}.access"),
            format!("{access:?} is not a combination of r, w and m"),
        ));
    }
    // A missing number is any; so is -1, as some tools write the wildcard.
    let number = |name: &str, v: Option<i64>| match v {
        None | Some(-1) => Ok(None),
        Some(n) if (0..=u32::MAX as i64).contains(&n) => Ok(Some(n)),
        Some(n) => Err(field_err(
            format!("{field}.{name}"),
            format!("{n} is not a device number"),
        )),
    };
    Ok(DeviceRule {
        allow: d.allow(),
        kind,
        major: number("major", d.major())?,
        minor: number("minor", d.minor())?,
        access,
    })
}

fn plan_process(spec: &Spec) -> Result<Process, PlanError> {
    process_of(
        spec.process()
            .as_ref()
            .ok_or_else(|| field_err("process", "missing"))?,
    )
}

/// The process of a spec, or of an exec (which has no spec around it: building a default one
/// for it cost an exec some microseconds).
fn process_of(p: &oci_spec::runtime::Process) -> Result<Process, PlanError> {
    let args = p.args().clone().unwrap_or_default();
    if args.is_empty() || args[0].is_empty() {
        return Err(field_err("process.args", "no command given"));
    }
    let env = p.env().clone().unwrap_or_default();
    for (i, a) in args.iter().chain(env.iter()).enumerate() {
        if a.contains('\0') {
            return Err(field_err(
                "process",
                format!("string {i} contains a NUL byte"),
            ));
        }
    }
    let cwd = p.cwd().clone();
    if !cwd.is_absolute() {
        return Err(field_err(
            "process.cwd",
            format!("must be absolute: {}", cwd.display()),
        ));
    }
    no_nul("process.cwd", &cwd)?;
    let mut rlimits = Vec::new();
    for r in p.rlimits().iter().flatten() {
        if r.soft() > r.hard() {
            return Err(field_err(
                "process.rlimits",
                format!(
                    "{:?}: soft limit {} is above hard limit {}",
                    r.typ(),
                    r.soft(),
                    r.hard()
                ),
            ));
        }
        rlimits.push(Rlimit {
            resource: rlimit_resource(r.typ()),
            soft: r.soft(),
            hard: r.hard(),
        });
    }
    let user = p.user();
    let capabilities = match p.capabilities() {
        Some(c) => Some(
            capabilities::from_spec(c)
                .map_err(|r| field_err("process.capabilities", r.to_string()))?,
        ),
        None => None,
    };
    Ok(Process {
        args,
        env,
        cwd,
        uid: user.uid(),
        gid: user.gid(),
        additional_gids: user.additional_gids().clone().unwrap_or_default(),
        umask: user.umask(),
        no_new_privs: p.no_new_privileges().unwrap_or(false),
        rlimits,
        capabilities,
        oom_score_adj: p.oom_score_adj(),
        terminal: p.terminal().unwrap_or(false),
    })
}

#[allow(clippy::unnecessary_cast)]
fn rlimit_resource(t: PosixRlimitType) -> u32 {
    use PosixRlimitType::*;
    // glibc's RLIMIT_* constants are __rlimit_resource_t (u32 on gnu, i32 on musl).
    let r = match t {
        RlimitCpu => libc::RLIMIT_CPU,
        RlimitFsize => libc::RLIMIT_FSIZE,
        RlimitData => libc::RLIMIT_DATA,
        RlimitStack => libc::RLIMIT_STACK,
        RlimitCore => libc::RLIMIT_CORE,
        RlimitRss => libc::RLIMIT_RSS,
        RlimitNproc => libc::RLIMIT_NPROC,
        RlimitNofile => libc::RLIMIT_NOFILE,
        RlimitMemlock => libc::RLIMIT_MEMLOCK,
        RlimitAs => libc::RLIMIT_AS,
        RlimitLocks => libc::RLIMIT_LOCKS,
        RlimitSigpending => libc::RLIMIT_SIGPENDING,
        RlimitMsgqueue => libc::RLIMIT_MSGQUEUE,
        RlimitNice => libc::RLIMIT_NICE,
        RlimitRtprio => libc::RLIMIT_RTPRIO,
        RlimitRttime => libc::RLIMIT_RTTIME,
    };
    r as u32
}

#[cfg(test)]
mod tests;
