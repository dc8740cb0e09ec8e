//! A container's cgroup: created and limited by the parent before clone, joined by the child
//! before it runs a single instruction of the command, read for stats, killed and removed last.
//!
//! Both hierarchies sit behind [`Cgroup`]: v1 (one directory per controller; this project's CI)
//! and v2 (one directory; most users' machines), detected at run time from /proc/self/mountinfo.
//! A hybrid layout (v1 controllers plus a v2 tree, as systemd's "hybrid" mode) uses v1 for
//! limits, which is where its controllers are.
//!
//! Placement without the migration cost: moving a process into a cgroup takes a global lock whose
//! first use after a quiet spell waits for an RCU grace period (10-20 ms measured here). On v1
//! the spawner thread instead moves *itself* (one thread, through `tasks`, which skips that lock)
//! into the container's cgroups, clones, and moves back: the child is born inside. On v2 the
//! child's pid is written to `cgroup.procs` before the child is given its plan (clone3's
//! CLONE_INTO_CGROUP would do it at birth; the glibc clone used here predates it).

pub mod devfilter;
pub mod v1;
pub mod v2;

use std::fs;
use std::io;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The limits of `linux.resources` that pyrt applies.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Resources {
    /// Bytes; swap is capped to the same figure unless `memory_swap` says otherwise.
    pub memory: Option<i64>,
    /// memory + swap, in bytes (-1 for unlimited), as the OCI spec's `memory.swap`.
    pub memory_swap: Option<i64>,
    /// A soft limit, in bytes: reclaimed down to it under pressure (v1
    /// `memory.soft_limit_in_bytes`, v2 `memory.low`).
    pub memory_reservation: Option<i64>,
    /// The kernel's swap tendency for the container, 0 to 100 (v1 only).
    pub memory_swappiness: Option<u64>,
    /// true: the OOM killer leaves the container alone; its allocations wait instead (v1 only).
    pub disable_oom_killer: Option<bool>,
    pub pids: Option<i64>,
    pub cpu_quota: Option<i64>,
    pub cpu_period: Option<u64>,
    pub cpu_shares: Option<u64>,
    pub cpuset_cpus: Option<String>,
    pub cpuset_mems: Option<String>,
    /// The device cgroup's rules, applied in order (v1 `devices.allow`/`devices.deny`).
    #[serde(default)]
    pub devices: Vec<DeviceRule>,
}

impl Resources {
    pub fn is_empty(&self) -> bool {
        *self == Resources::default()
    }

    /// Whether anything but device rules is limited (those alone need no cgroup path).
    pub fn limits_anything(&self) -> bool {
        Resources {
            devices: Vec::new(),
            ..self.clone()
        } != Resources::default()
    }
}

/// One rule of the device cgroup: which devices (`kind` 'a' all, 'b' block, 'c' char; a
/// missing number is any), and what it allows or denies of them ("r", "w", "m": mknod).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct DeviceRule {
    pub allow: bool,
    pub kind: char,
    pub major: Option<i64>,
    pub minor: Option<i64>,
    pub access: String,
}

impl DeviceRule {
    pub fn allow(kind: char, major: Option<i64>, minor: Option<i64>, access: &str) -> Self {
        DeviceRule {
            allow: true,
            kind,
            major,
            minor,
            access: access.into(),
        }
    }

    /// The rule as v1's devices.allow/devices.deny take it: "c 1:3 rwm", or "a" for all.
    pub fn line(&self) -> String {
        if self.kind == 'a' {
            return "a".into();
        }
        let n = |v: Option<i64>| v.map_or_else(|| "*".to_string(), |v| v.to_string());
        format!(
            "{} {}:{} {}",
            self.kind,
            n(self.major),
            n(self.minor),
            self.access
        )
    }
}

/// What the plan says about the container's cgroup.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CgroupPlan {
    /// A relative path is taken below the caller's own cgroup in each hierarchy; an absolute one
    /// from the hierarchy's root.
    pub path: PathBuf,
    pub resources: Resources,
}

#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("{limit}: {reason}")]
    Limit { limit: String, reason: String },
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "no cgroup hierarchy is mounted (neither /sys/fs/cgroup as cgroup2 nor v1 controllers)"
    )]
    NoHierarchy,
    #[error("{path}: not inside a mounted cgroup hierarchy")]
    Unknown { path: PathBuf },
}

impl CgroupError {
    pub fn errno(&self) -> i32 {
        match self {
            CgroupError::Limit { .. } => libc::EINVAL,
            CgroupError::Io { source, .. } => source.raw_os_error().unwrap_or(libc::EIO),
            CgroupError::NoHierarchy => libc::ENOENT,
            CgroupError::Unknown { .. } => libc::EINVAL,
        }
    }
}

pub(crate) fn io_err<'a>(
    what: &'static str,
    path: &'a Path,
) -> impl FnOnce(io::Error) -> CgroupError + 'a {
    move |source| CgroupError::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

/// Writes `value` to `dir/file`, naming the limit and the kernel's reason when it is refused.
pub(crate) fn write_limit(
    dir: &Path,
    file: &str,
    value: &str,
    limit: &str,
) -> Result<(), CgroupError> {
    let p = dir.join(file);
    fs::write(&p, value).map_err(|e| {
        let reason = match e.raw_os_error() {
            Some(libc::ENOENT) => {
                format!("this kernel's cgroup has no {file} (controller missing or not enabled)")
            }
            Some(libc::EINVAL) | Some(libc::ERANGE) => {
                format!("the kernel refused {value:?} for {file}")
            }
            Some(libc::EBUSY) => format!("{file} is in use and cannot be set to {value:?} now"),
            Some(libc::EACCES) | Some(libc::EPERM) => {
                format!(
                    "not allowed to write {} (no cgroup delegation?)",
                    p.display()
                )
            }
            _ => format!("writing {value:?} to {}: {e}", p.display()),
        };
        CgroupError::Limit {
            limit: limit.to_string(),
            reason,
        }
    })
}

/// Usage figures of a container's cgroup.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Stats {
    pub memory_bytes: u64,
    pub pids: u64,
    pub cpu_ns: u64,
}

#[derive(Debug)]
pub enum Cgroup {
    V1(v1::Group),
    V2(v2::Group),
}

/// The machine's layout, read once per process. `PYRT_CGROUP_V2_MOUNT` names a cgroup2 mount
/// to use instead (tests use it to exercise v2 on a hybrid machine's unified tree).
pub fn layout() -> Result<&'static Layout, CgroupError> {
    static LAYOUT: std::sync::OnceLock<Result<Layout, String>> = std::sync::OnceLock::new();
    LAYOUT
        .get_or_init(|| {
            if let Some(m) = std::env::var_os("PYRT_CGROUP_V2_MOUNT") {
                let own = fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
                let own = own
                    .lines()
                    .find_map(|l| l.strip_prefix("0::"))
                    .unwrap_or("/")
                    .to_string();
                return Ok(Layout::V2 {
                    mount: PathBuf::from(m),
                    own: PathBuf::from(own),
                });
            }
            detect().map_err(|e| e.to_string())
        })
        .as_ref()
        .map_err(|e| CgroupError::Limit {
            limit: "cgroup".into(),
            reason: e.clone(),
        })
}

/// Which hierarchy to use: v2 when /sys/fs/cgroup itself is cgroup2, else v1.
pub fn detect() -> Result<Layout, CgroupError> {
    let mountinfo = fs::read_to_string("/proc/self/mountinfo")
        .map_err(io_err("reading", Path::new("/proc/self/mountinfo")))?;
    let own = fs::read_to_string("/proc/self/cgroup")
        .map_err(io_err("reading", Path::new("/proc/self/cgroup")))?;
    Layout::parse(&mountinfo, &own)
}

#[derive(Debug, Clone, PartialEq)]
pub enum Layout {
    V1(v1::Layout),
    V2 { mount: PathBuf, own: PathBuf },
}

impl Layout {
    pub fn parse(mountinfo: &str, own_cgroups: &str) -> Result<Layout, CgroupError> {
        let mut v2_mount: Option<PathBuf> = None;
        for line in mountinfo.lines() {
            let Some((pre, post)) = line.split_once(" - ") else {
                continue;
            };
            let fstype = post.split_whitespace().next().unwrap_or("");
            let mount = pre.split_whitespace().nth(4).unwrap_or("");
            if fstype == "cgroup2" && mount == "/sys/fs/cgroup" {
                v2_mount = Some(PathBuf::from(mount));
            }
        }
        if let Some(mount) = v2_mount {
            let own = own_cgroups
                .lines()
                .find_map(|l| l.strip_prefix("0::"))
                .unwrap_or("/");
            return Ok(Layout::V2 {
                mount,
                own: PathBuf::from(own),
            });
        }
        let l = v1::Layout::parse(mountinfo, own_cgroups);
        if l.controllers.is_empty() {
            return Err(CgroupError::NoHierarchy);
        }
        Ok(Layout::V1(l))
    }
}

impl Cgroup {
    /// Creates the cgroup(s) and writes the limits. Nothing is left behind on failure.
    pub fn create(layout: &Layout, plan: &CgroupPlan) -> Result<Cgroup, CgroupError> {
        match layout {
            Layout::V1(l) => v1::Group::create(l, plan).map(Cgroup::V1),
            Layout::V2 { mount, own } => {
                let dir = if plan.path.is_absolute() {
                    mount.join(plan.path.strip_prefix("/").unwrap_or(&plan.path))
                } else {
                    mount
                        .join(own.strip_prefix("/").unwrap_or(own))
                        .join(&plan.path)
                };
                v2::Group::create(dir, &plan.resources).map(Cgroup::V2)
            }
        }
    }

    /// A handle on an existing container cgroup, from the directories `paths()` gave (an exec
    /// joins it; another process may have made it).
    pub fn from_paths(layout: &Layout, paths: &[PathBuf]) -> Option<Cgroup> {
        match layout {
            Layout::V1(l) => {
                let mut g = v1::Group {
                    dirs: Vec::new(),
                    home: Vec::new(),
                };
                for p in paths {
                    let c = l.controllers.iter().find(|c| below(p, &c.mount))?;
                    g.dirs.push((c.name.clone(), p.clone()));
                    g.home
                        .push(c.mount.join(c.own.strip_prefix("/").unwrap_or(&c.own)));
                }
                (!g.dirs.is_empty()).then_some(Cgroup::V1(g))
            }
            // A path outside the hierarchy is no cgroup of ours, whatever it names.
            Layout::V2 { mount, .. } => paths
                .first()
                .filter(|d| below(d, mount))
                .map(|d| Cgroup::V2(v2::Group { dir: d.clone() })),
        }
    }

    /// Descriptors of the v1 `tasks` files the spawner thread writes "0" to before clone
    /// (`home` false) and after it (`home` true, back where it came from).
    pub fn tasks_files(&self, home: bool) -> Result<Vec<OwnedFd>, CgroupError> {
        match self {
            Cgroup::V1(g) => g.open_tasks(home),
            Cgroup::V2(_) => Ok(Vec::new()),
        }
    }

    /// Whether a child is born inside (v1: the spawner thread steps in around clone) rather
    /// than moved in by `place` after clone (v2).
    pub fn born_inside(&self) -> bool {
        matches!(self, Cgroup::V1(_))
    }

    /// After clone, before the child gets its plan: where the child was not born inside (v2),
    /// move it in.
    pub fn place(&self, pid: i32) -> Result<(), CgroupError> {
        match self {
            Cgroup::V1(_) => Ok(()),
            Cgroup::V2(g) => g.add_pid(pid),
        }
    }

    /// Moves `pid` into the cgroup in every hierarchy: a process that was not born inside (one
    /// that systemd placed in its scope first, `pyrt-runc --systemd-cgroup`).
    pub fn adopt(&self, pid: i32) -> Result<(), CgroupError> {
        for dir in self.paths() {
            let procs = dir.join("cgroup.procs");
            fs::write(&procs, pid.to_string())
                .map_err(io_err("placing the container in", &procs))?;
        }
        Ok(())
    }

    pub fn stats(&self) -> Result<Stats, CgroupError> {
        match self {
            Cgroup::V1(g) => g.stats(),
            Cgroup::V2(g) => g.stats(),
        }
    }

    /// How many processes of the container the OOM killer has killed.
    pub fn oom_kills(&self) -> u64 {
        match self {
            Cgroup::V1(g) => g.oom_kills(),
            Cgroup::V2(g) => g.oom_kills(),
        }
    }

    /// Kills every process in the cgroup.
    pub fn kill_all(&self) -> Result<(), CgroupError> {
        match self {
            Cgroup::V1(g) => g.kill_all(),
            Cgroup::V2(g) => g.kill_all(),
        }
    }

    /// Kills what is left and removes the directories.
    pub fn destroy(&self) -> Result<(), CgroupError> {
        match self {
            Cgroup::V1(g) => g.destroy(),
            Cgroup::V2(g) => g.destroy(),
        }
    }

    /// New limits on a running container (`update`); may add a v1 hierarchy it had none in,
    /// so `paths()` can grow.
    pub fn update(&mut self, layout: &Layout, r: &Resources) -> Result<(), CgroupError> {
        match (self, layout) {
            (Cgroup::V1(g), Layout::V1(l)) => g.update(l, r),
            (Cgroup::V2(g), _) => g.apply(r),
            (Cgroup::V1(_), Layout::V2 { .. }) => Err(CgroupError::Limit {
                limit: "cgroup".into(),
                reason: "the container's cgroup is v1, this process sees v2".into(),
            }),
        }
    }

    /// Freezes every process of the container (`pause`); false when it has no freezer.
    pub fn freeze(&self) -> Result<bool, CgroupError> {
        match self {
            Cgroup::V1(g) => g.freeze(),
            Cgroup::V2(g) => g.freeze(),
        }
    }

    /// Lets them run again (`resume`).
    pub fn thaw(&self) -> Result<(), CgroupError> {
        match self {
            Cgroup::V1(g) => g.thaw(),
            Cgroup::V2(g) => g.thaw(),
        }
    }

    /// Whether it is frozen (or freezing).
    pub fn frozen(&self) -> bool {
        match self {
            Cgroup::V1(g) => g.frozen(),
            Cgroup::V2(g) => g.frozen(),
        }
    }

    pub fn paths(&self) -> Vec<PathBuf> {
        match self {
            Cgroup::V1(g) => g.dirs.iter().map(|(_, d)| d.clone()).collect(),
            Cgroup::V2(g) => vec![g.dir.clone()],
        }
    }

    /// The processes in it (every v1 hierarchy holds all of them: the first one is read).
    pub fn pids(&self) -> Vec<i32> {
        match self.paths().first() {
            Some(d) => read_pids(&d.join("cgroup.procs")),
            None => Vec::new(),
        }
    }
}

/// Whether `path` is a directory strictly below the hierarchy mounted at `mount` (never its
/// root, which holds every process of the machine, and without `..` to climb out).
fn below(path: &Path, mount: &Path) -> bool {
    path.starts_with(mount)
        && path != mount
        && !path
            .components()
            .any(|c| matches!(c, std::path::Component::ParentDir))
}

/// Removes an empty cgroup directory, waiting briefly for the kernel to let go of processes that
/// were just killed (rmdir says EBUSY until their exit is complete).
pub(crate) fn rmdir_patiently(dir: &Path) -> Result<(), CgroupError> {
    // The kernel lets go within microseconds as a rule: the first waits are short, then
    // 5 ms apart, about a second in all.
    let mut wait = std::time::Duration::from_micros(50);
    for i in 0..220 {
        match fs::remove_dir(dir) {
            Ok(()) => return Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) && i < 219 => {
                std::thread::sleep(wait);
                wait = (wait * 2).min(std::time::Duration::from_millis(5));
            }
            Err(e) => return Err(io_err("removing cgroup", dir)(e)),
        }
    }
    Ok(())
}

/// The pids listed in a cgroup.procs file.
pub(crate) fn read_pids(file: &Path) -> Vec<i32> {
    fs::read_to_string(file)
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

/// A "key value" line's value from a flat-keyed cgroup file (memory.events, cpu.stat, ...).
pub(crate) fn keyed(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok()).flatten()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID: &str = "\
31 27 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
33 31 0:30 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
37 31 0:34 / /sys/fs/cgroup/freezer rw,relatime - cgroup cgroup rw,freezer
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";
    const OWN: &str =
        "8:pids:/\n4:memory:/process_api/abc\n1:cpu:/\n2:cpuacct:/\n6:freezer:/\n0::/\n";

    #[test]
    fn hybrid_is_v1_with_own_paths() {
        let Layout::V1(l) = Layout::parse(HYBRID, OWN).unwrap() else {
            panic!("v1 expected")
        };
        let mem = l.controllers.iter().find(|c| c.name == "memory").unwrap();
        assert_eq!(mem.mount, PathBuf::from("/sys/fs/cgroup/memory"));
        assert_eq!(mem.own, PathBuf::from("/process_api/abc"));
        assert!(l.controllers.iter().any(|c| c.name == "freezer"));
    }

    #[test]
    fn pure_v2() {
        let mi = "30 1 0:26 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw,nsdelegate\n";
        assert_eq!(
            Layout::parse(mi, "0::/user.slice/x.scope\n").unwrap(),
            Layout::V2 {
                mount: PathBuf::from("/sys/fs/cgroup"),
                own: PathBuf::from("/user.slice/x.scope")
            }
        );
    }

    #[test]
    fn keyed_values() {
        assert_eq!(
            keyed("low 0\nhigh 0\noom 2\noom_kill 1\n", "oom_kill"),
            Some(1)
        );
        assert_eq!(keyed("usage_usec 1234\n", "usage_usec"), Some(1234));
        assert_eq!(keyed("a 1\n", "b"), None);
    }
}
