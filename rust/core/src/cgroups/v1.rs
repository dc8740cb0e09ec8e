//! cgroup v1: one hierarchy per controller (or per group of co-mounted controllers).

use std::fs;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use super::{
    io_err, keyed, read_pids, rmdir_patiently, write_limit, CgroupError, CgroupPlan, Resources,
    Stats,
};
use crate::syscall;

#[derive(Debug, Clone, PartialEq)]
pub struct Controller {
    pub name: String,
    /// Where its hierarchy is mounted.
    pub mount: PathBuf,
    /// Our own cgroup in that hierarchy (from /proc/self/cgroup).
    pub own: PathBuf,
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct Layout {
    pub controllers: Vec<Controller>,
}

impl Layout {
    pub fn parse(mountinfo: &str, own_cgroups: &str) -> Layout {
        let mut controllers = Vec::new();
        for line in mountinfo.lines() {
            let Some((pre, post)) = line.split_once(" - ") else {
                continue;
            };
            let mut post = post.split_whitespace();
            if post.next() != Some("cgroup") {
                continue;
            }
            let opts = post.nth(1).unwrap_or("");
            let mount = PathBuf::from(pre.split_whitespace().nth(4).unwrap_or(""));
            for name in opts
                .split(',')
                .filter(|o| !o.contains('=') && *o != "rw" && *o != "ro")
            {
                let own = own_cgroups
                    .lines()
                    .find_map(|l| {
                        let mut f = l.splitn(3, ':');
                        let (_, ctrls, path) = (f.next()?, f.next()?, f.next()?);
                        ctrls
                            .split(',')
                            .any(|c| c == name)
                            .then(|| PathBuf::from(path))
                    })
                    .unwrap_or_else(|| PathBuf::from("/"));
                controllers.push(Controller {
                    name: name.to_string(),
                    mount: mount.clone(),
                    own,
                });
            }
        }
        Layout { controllers }
    }

    pub fn get(&self, name: &str) -> Option<&Controller> {
        self.controllers.iter().find(|c| c.name == name)
    }
}

/// A container's cgroup: one directory per hierarchy it uses.
#[derive(Debug)]
pub struct Group {
    /// (controller, directory); co-mounted controllers share a directory, listed once.
    pub dirs: Vec<(String, PathBuf)>,
    /// Our own cgroup in each of those hierarchies, where the spawner thread returns to.
    pub home: Vec<PathBuf>,
}

impl Group {
    pub fn create(layout: &Layout, plan: &CgroupPlan) -> Result<Group, CgroupError> {
        let r = &plan.resources;
        // memory, pids and cpuacct for stats, freezer to kill cleanly; cpu and cpuset only when
        // limited (an empty cpuset refuses tasks until its cpus and mems are filled in).
        let mut wanted = vec!["memory", "pids", "cpuacct", "freezer"];
        if r.cpu_quota.is_some() || r.cpu_shares.is_some() || r.cpu_period.is_some() {
            wanted.push("cpu");
        }
        if r.cpuset_cpus.is_some() || r.cpuset_mems.is_some() {
            wanted.push("cpuset");
        }
        if !r.devices.is_empty() {
            wanted.push("devices");
        }
        let mut g = Group {
            dirs: Vec::new(),
            home: Vec::new(),
        };
        for name in wanted {
            let Some(c) = layout.get(name) else {
                if needs(r, name) {
                    return Err(CgroupError::Limit {
                        limit: limit_name(name).into(),
                        reason: format!(
                            "the {name} cgroup controller is not mounted on this machine"
                        ),
                    });
                }
                continue;
            };
            let dir = if plan.path.is_absolute() {
                c.mount
                    .join(plan.path.strip_prefix("/").unwrap_or(&plan.path))
            } else {
                c.mount
                    .join(c.own.strip_prefix("/").unwrap_or(&c.own))
                    .join(&plan.path)
            };
            if g.dirs.iter().any(|(_, d)| *d == dir) {
                continue;
            }
            if let Err(e) = make_parents(&c.mount, &dir, name).and_then(|_| fs::create_dir(&dir)) {
                if e.kind() != std::io::ErrorKind::AlreadyExists {
                    let _ = g.destroy();
                    return Err(io_err("creating cgroup", &dir)(e));
                }
            }
            g.dirs.push((name.to_string(), dir));
            g.home
                .push(c.mount.join(c.own.strip_prefix("/").unwrap_or(&c.own)));
        }
        if let Err(e) = g.apply(r) {
            let _ = g.destroy();
            return Err(e);
        }
        Ok(g)
    }

    fn dir(&self, name: &str) -> Option<&Path> {
        self.dirs
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, d)| d.as_path())
    }

    fn apply(&self, r: &Resources) -> Result<(), CgroupError> {
        if let Some(m) = r.memory {
            let d = self.dir("memory").expect("created above");
            // Swap counts against memory+swap: cap it to the memory limit unless told otherwise.
            // memsw exists only with swap accounting on; without it there is nothing to cap.
            let memsw = r.memory_swap.unwrap_or(m);
            let has_memsw = d.join("memory.memsw.limit_in_bytes").exists();
            // The kernel keeps memory <= memory+swap at every write: raising both (an update)
            // goes memsw first, lowering them memory first.
            let current: i64 = fs::read_to_string(d.join("memory.memsw.limit_in_bytes"))
                .ok()
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(i64::MAX);
            let memsw_first = has_memsw && memsw >= 0 && m > current;
            if memsw_first {
                write_limit(
                    d,
                    "memory.memsw.limit_in_bytes",
                    &memsw.to_string(),
                    "memory swap",
                )?;
            }
            write_limit(d, "memory.limit_in_bytes", &m.to_string(), "memory")?;
            if has_memsw && !memsw_first {
                write_limit(
                    d,
                    "memory.memsw.limit_in_bytes",
                    &memsw.to_string(),
                    "memory swap",
                )?;
            }
        }
        if let Some(d) = self.dir("memory") {
            if let Some(v) = r.memory_reservation {
                write_limit(
                    d,
                    "memory.soft_limit_in_bytes",
                    &v.to_string(),
                    "memory reservation",
                )?;
            }
            if let Some(s) = r.memory_swappiness {
                write_limit(d, "memory.swappiness", &s.to_string(), "memory swappiness")?;
            }
            if let Some(off) = r.disable_oom_killer {
                let v = if off { "1" } else { "0" };
                write_limit(d, "memory.oom_control", v, "OOM killer")?;
            }
        }
        if let Some(p) = r.pids {
            let v = if p <= 0 {
                "max".to_string()
            } else {
                p.to_string()
            };
            write_limit(
                self.dir("pids").expect("created above"),
                "pids.max",
                &v,
                "pids_limit",
            )?;
        }
        if let Some(d) = self.dir("cpu") {
            if let Some(p) = r.cpu_period {
                write_limit(d, "cpu.cfs_period_us", &p.to_string(), "cpu period")?;
            }
            if let Some(q) = r.cpu_quota {
                write_limit(d, "cpu.cfs_quota_us", &q.to_string(), "cpus")?;
            }
            if let Some(s) = r.cpu_shares {
                write_limit(d, "cpu.shares", &s.to_string(), "cpu shares")?;
            }
        }
        if let Some(d) = self.dir("devices") {
            // In order: a "deny a" first empties the list that the allows after it fill.
            for rule in &r.devices {
                let file = if rule.allow {
                    "devices.allow"
                } else {
                    "devices.deny"
                };
                write_limit(d, file, &rule.line(), "device rule")?;
            }
        }
        if let Some(d) = self.dir("cpuset") {
            let parent = d.parent().unwrap_or(d);
            for (file, val) in [
                ("cpuset.cpus", &r.cpuset_cpus),
                ("cpuset.mems", &r.cpuset_mems),
            ] {
                let v = match val {
                    Some(v) => v.clone(),
                    None => fs::read_to_string(parent.join(file))
                        .unwrap_or_default()
                        .trim()
                        .to_string(),
                };
                write_limit(d, file, &v, file)?;
            }
        }
        Ok(())
    }

    /// New limits on a running container. A controller the container was made without (cpu or
    /// cpuset, made only when limited) is made now, next to the others, and every process
    /// moved into it.
    pub fn update(&mut self, layout: &Layout, r: &Resources) -> Result<(), CgroupError> {
        for name in ["memory", "pids", "cpu", "cpuset"] {
            if !(needs(r, name) || name == "cpu" && r.cpu_period.is_some()) {
                continue;
            }
            if self.dir(name).is_some() {
                continue;
            }
            let Some(c) = layout.get(name) else {
                return Err(CgroupError::Limit {
                    limit: limit_name(name).into(),
                    reason: format!("the {name} cgroup controller is not mounted on this machine"),
                });
            };
            self.add_controller(layout, c)?;
        }
        self.apply(r)
    }

    fn add_controller(&mut self, layout: &Layout, c: &Controller) -> Result<(), CgroupError> {
        // The container's place in another hierarchy tells where it goes in this one: below
        // our own cgroup there (a relative cgroupsPath), or from the root (an absolute one).
        let own = |c: &Controller| c.mount.join(c.own.strip_prefix("/").unwrap_or(&c.own));
        let (dir, procs) = self
            .dirs
            .iter()
            .find_map(|(n, d)| {
                let other = layout.get(n)?;
                let procs = d.join("cgroup.procs");
                match d.strip_prefix(own(other)) {
                    Ok(rel) if !rel.as_os_str().is_empty() => Some((own(c).join(rel), procs)),
                    _ => Some((c.mount.join(d.strip_prefix(&other.mount).ok()?), procs)),
                }
            })
            .ok_or_else(|| CgroupError::Limit {
                limit: limit_name(&c.name).into(),
                reason: "the container has no cgroup to take its place from".into(),
            })?;
        if let Err(e) = make_parents(&c.mount, &dir, &c.name).and_then(|_| fs::create_dir(&dir)) {
            if e.kind() != std::io::ErrorKind::AlreadyExists {
                return Err(io_err("creating cgroup", &dir)(e));
            }
        }
        if c.name == "cpuset" {
            let parent = dir.parent().unwrap_or(&dir).to_path_buf();
            for f in ["cpuset.cpus", "cpuset.mems"] {
                let v = fs::read_to_string(parent.join(f)).unwrap_or_default();
                write_limit(&dir, f, v.trim(), f)?;
            }
        }
        // Until a pass finds nobody left to move: a process forked meanwhile by one not yet
        // moved is born outside.
        let target = dir.join("cgroup.procs");
        for _ in 0..100 {
            let inside = read_pids(&target);
            let missing: Vec<i32> = read_pids(&procs)
                .into_iter()
                .filter(|p| !inside.contains(p))
                .collect();
            if missing.is_empty() {
                break;
            }
            for p in missing {
                // A process that exited meanwhile (ESRCH) has nothing to move.
                let _ = fs::write(&target, p.to_string());
            }
        }
        self.dirs.push((c.name.clone(), dir));
        self.home
            .push(c.mount.join(c.own.strip_prefix("/").unwrap_or(&c.own)));
        Ok(())
    }

    /// Freezes every process (v1 `freezer.state`), waiting until the kernel says FROZEN;
    /// false when the container has no freezer cgroup.
    pub fn freeze(&self) -> Result<bool, CgroupError> {
        let Some(d) = self.dir("freezer") else {
            return Ok(false);
        };
        let state = d.join("freezer.state");
        for _ in 0..5000 {
            fs::write(&state, "FROZEN").map_err(io_err("freezing", &state))?;
            if fs::read_to_string(&state).unwrap_or_default().trim() == "FROZEN" {
                return Ok(true);
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        let _ = fs::write(&state, "THAWED");
        Err(CgroupError::Limit {
            limit: "pause".into(),
            reason: format!("{} did not freeze within 5 s", d.display()),
        })
    }

    pub fn thaw(&self) -> Result<(), CgroupError> {
        if let Some(d) = self.dir("freezer") {
            let state = d.join("freezer.state");
            fs::write(&state, "THAWED").map_err(io_err("thawing", &state))?;
        }
        Ok(())
    }

    pub fn frozen(&self) -> bool {
        self.dir("freezer")
            .and_then(|d| fs::read_to_string(d.join("freezer.state")).ok())
            .is_some_and(|s| s.trim() != "THAWED")
    }

    pub fn open_tasks(&self, home: bool) -> Result<Vec<OwnedFd>, CgroupError> {
        let dirs: Vec<&PathBuf> = if home {
            self.home.iter().collect()
        } else {
            self.dirs.iter().map(|(_, d)| d).collect()
        };
        dirs.into_iter()
            .map(|d| {
                let p = d.join("tasks");
                syscall::openat2(libc::AT_FDCWD, &p, libc::O_WRONLY, 0, 0)
                    .map_err(io_err("opening", &p))
            })
            .collect()
    }

    pub fn stats(&self) -> Result<Stats, CgroupError> {
        let read = |ctrl: &str, file: &str| -> u64 {
            self.dir(ctrl)
                .and_then(|d| fs::read_to_string(d.join(file)).ok())
                .and_then(|s| s.trim().parse().ok())
                .unwrap_or(0)
        };
        Ok(Stats {
            memory_bytes: read("memory", "memory.usage_in_bytes"),
            pids: read("pids", "pids.current"),
            cpu_ns: read("cpuacct", "cpuacct.usage"),
        })
    }

    pub fn oom_kills(&self) -> u64 {
        self.dir("memory")
            .and_then(|d| fs::read_to_string(d.join("memory.oom_control")).ok())
            .and_then(|s| keyed(&s, "oom_kill"))
            .unwrap_or(0)
    }

    /// Freeze, kill everything, thaw: frozen processes cannot fork away from the kill.
    pub fn kill_all(&self) -> Result<(), CgroupError> {
        let procs_dir = self.dirs.first().map(|(_, d)| d.clone());
        let Some(procs_dir) = procs_dir else {
            return Ok(());
        };
        // Usually empty by now (a container's processes die with its pid 1, which was
        // reaped): then there is nothing to freeze. A freeze is not free: the first frozen
        // cgroup of the machine switches a kernel static key on, and the thaw off again, each
        // a code patch on every CPU (0.26 ms of CPU and an interrupt of every other CPU at
        // each removal, measured with `perf record -a` on a loop of resets).
        if read_pids(&procs_dir.join("cgroup.procs")).is_empty() {
            return Ok(());
        }
        let freezer = self.dir("freezer").map(Path::to_path_buf);
        if let Some(f) = &freezer {
            let _ = fs::write(f.join("freezer.state"), "FROZEN");
        }
        for _ in 0..100 {
            let pids = read_pids(&procs_dir.join("cgroup.procs"));
            if pids.is_empty() {
                break;
            }
            for p in pids {
                // SAFETY: kill(2) has no memory arguments.
                unsafe { libc::kill(p, libc::SIGKILL) };
            }
            if let Some(f) = &freezer {
                // Killed tasks only die once thawed.
                let _ = fs::write(f.join("freezer.state"), "THAWED");
            }
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
        if let Some(f) = &freezer {
            let _ = fs::write(f.join("freezer.state"), "THAWED");
        }
        Ok(())
    }

    pub fn destroy(&self) -> Result<(), CgroupError> {
        self.kill_all()?;
        let mut first = Ok(());
        for (_, d) in &self.dirs {
            if let Err(e) = rmdir_patiently(d) {
                if first.is_ok() {
                    first = Err(e);
                }
            }
        }
        first
    }
}

fn needs(r: &Resources, ctrl: &str) -> bool {
    match ctrl {
        "memory" => {
            r.memory.is_some()
                || r.memory_reservation.is_some()
                || r.memory_swappiness.is_some()
                || r.disable_oom_killer.is_some()
        }
        "pids" => r.pids.is_some(),
        "cpu" => r.cpu_quota.is_some() || r.cpu_shares.is_some(),
        "cpuset" => r.cpuset_cpus.is_some() || r.cpuset_mems.is_some(),
        "devices" => !r.devices.is_empty(),
        _ => false,
    }
}

fn limit_name(ctrl: &str) -> &'static str {
    match ctrl {
        "memory" => "memory",
        "pids" => "pids_limit",
        "cpu" => "cpus",
        "cpuset" => "cpuset",
        "devices" => "linux.resources.devices",
        _ => "cgroup",
    }
}

/// Creates the missing directories above `dir` (a path such as containerd's or podman's
/// `/parent/name`), each a new cgroup. A new cpuset cgroup starts with no cpus and no memory
/// nodes, in which no process may run: it gets its parent's.
fn make_parents(mount: &Path, dir: &Path, controller: &str) -> std::io::Result<()> {
    let Some(parent) = dir.parent() else {
        return Ok(());
    };
    let missing: Vec<&Path> = parent
        .ancestors()
        .take_while(|a| a.starts_with(mount) && *a != mount && !a.exists())
        .collect();
    for d in missing.into_iter().rev() {
        match fs::create_dir(d) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
        if controller == "cpuset" {
            if let Some(up) = d.parent() {
                for f in ["cpuset.cpus", "cpuset.mems"] {
                    let v = fs::read_to_string(up.join(f))?;
                    fs::write(d.join(f), v.trim())?;
                }
            }
        }
    }
    Ok(())
}
