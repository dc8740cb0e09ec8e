//! cgroup v2: one unified hierarchy; controllers are enabled top-down through
//! `cgroup.subtree_control`.

use std::fs;
use std::path::{Path, PathBuf};

use super::{
    devfilter, io_err, keyed, read_pids, rmdir_patiently, write_limit, CgroupError, Resources,
    Stats,
};

#[derive(Debug)]
pub struct Group {
    pub dir: PathBuf,
}

/// The controllers the limits need, as cgroup.subtree_control names them.
fn needed(r: &Resources) -> Vec<&'static str> {
    let mut v = Vec::new();
    if r.memory.is_some() || r.memory_swap.is_some() {
        v.push("memory");
    }
    if r.pids.is_some() {
        v.push("pids");
    }
    if r.cpu_quota.is_some() || r.cpu_shares.is_some() {
        v.push("cpu");
    }
    if r.cpuset_cpus.is_some() || r.cpuset_mems.is_some() {
        v.push("cpuset");
    }
    v
}

/// Makes `ctrls` available to the children of `parent`. A cgroup that holds processes cannot
/// enable controllers for its children (the no-internal-processes rule): the error says so.
fn enable(parent: &Path, ctrls: &[&str]) -> Result<(), CgroupError> {
    let have = fs::read_to_string(parent.join("cgroup.subtree_control")).unwrap_or_default();
    for c in ctrls {
        if have.split_whitespace().any(|h| h == *c) {
            continue;
        }
        fs::write(parent.join("cgroup.subtree_control"), format!("+{c}")).map_err(|e| {
            let why = match e.raw_os_error() {
                Some(libc::EBUSY) => {
                    "it holds processes itself (cgroup v2's no-internal-processes rule)".to_string()
                }
                Some(libc::ENOENT) | Some(libc::EINVAL) => {
                    "the kernel does not offer that controller there".to_string()
                }
                Some(libc::EACCES) | Some(libc::EPERM) => {
                    "no permission (is the cgroup delegated to you?)".to_string()
                }
                _ => e.to_string(),
            };
            CgroupError::Limit {
                limit: (*c).to_string(),
                reason: format!(
                    "cannot enable the {c} controller in {}: {why}",
                    parent.display()
                ),
            }
        })?;
    }
    Ok(())
}

impl Group {
    pub fn create(dir: PathBuf, r: &Resources) -> Result<Group, CgroupError> {
        let ctrls = needed(r);
        if let Some(parent) = dir.parent() {
            if !parent.exists() {
                // The intermediate directory (e.g. /sys/fs/cgroup/pyrt) is shared by all
                // containers and kept; its own parent must pass the controllers down to it.
                if let Some(gp) = parent.parent() {
                    enable(gp, &ctrls)?;
                }
                match fs::create_dir(parent) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                    Err(e) => return Err(io_err("creating cgroup", parent)(e)),
                }
            } else if let Some(gp) = parent.parent() {
                if !ctrls.is_empty() && gp.join("cgroup.subtree_control").exists() {
                    enable(gp, &ctrls)?;
                }
            }
            enable(parent, &ctrls)?;
        }
        match fs::create_dir(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(io_err("creating cgroup", &dir)(e)),
        }
        let g = Group { dir };
        let devices = || {
            if r.devices.is_empty() {
                return Ok(());
            }
            devfilter::attach(&g.dir, &r.devices).map_err(|e| CgroupError::Limit {
                limit: "linux.resources.devices".into(),
                reason: e.to_string(),
            })
        };
        if let Err(e) = g.apply(r).and_then(|_| devices()) {
            let _ = rmdir_patiently(&g.dir);
            return Err(e);
        }
        Ok(g)
    }

    pub fn apply(&self, r: &Resources) -> Result<(), CgroupError> {
        let d = &self.dir;
        if let Some(m) = r.memory {
            write_limit(d, "memory.max", &max_or(m), "memory")?;
            // v2 limits swap separately: memory+swap minus memory, none unless told otherwise.
            let swap = match r.memory_swap {
                Some(-1) => "max".to_string(),
                Some(total) => (total - m).max(0).to_string(),
                None => "0".to_string(),
            };
            if d.join("memory.swap.max").exists() || !d.join("cgroup.controllers").exists() {
                write_limit(d, "memory.swap.max", &swap, "memory swap")?;
            }
        }
        if let Some(v) = r.memory_reservation {
            write_limit(d, "memory.low", &max_or(v), "memory reservation")?;
        }
        // cgroup v2 has neither a per-cgroup swappiness nor a switch for the OOM killer:
        // refused, rather than run without what was asked.
        if r.memory_swappiness.is_some() {
            return Err(CgroupError::Limit {
                limit: "memory swappiness".into(),
                reason: "cgroup v2 has no per-cgroup swappiness".into(),
            });
        }
        if r.disable_oom_killer == Some(true) {
            return Err(CgroupError::Limit {
                limit: "OOM killer".into(),
                reason: "cgroup v2 cannot disable the OOM killer for a cgroup".into(),
            });
        }
        if let Some(p) = r.pids {
            write_limit(d, "pids.max", &max_or(p), "pids_limit")?;
        }
        if r.cpu_quota.is_some() || r.cpu_period.is_some() {
            let period = r.cpu_period.unwrap_or(100_000);
            let quota = r.cpu_quota.map(max_or).unwrap_or_else(|| "max".into());
            write_limit(d, "cpu.max", &format!("{quota} {period}"), "cpus")?;
        }
        if let Some(s) = r.cpu_shares {
            write_limit(
                d,
                "cpu.weight",
                &shares_to_weight(s).to_string(),
                "cpu shares",
            )?;
        }
        if let Some(c) = &r.cpuset_cpus {
            write_limit(d, "cpuset.cpus", c, "cpuset")?;
        }
        if let Some(m) = &r.cpuset_mems {
            write_limit(d, "cpuset.mems", m, "cpuset")?;
        }
        Ok(())
    }

    /// Freezes every process (`cgroup.freeze`), waiting until `cgroup.events` says frozen.
    pub fn freeze(&self) -> Result<bool, CgroupError> {
        let f = self.dir.join("cgroup.freeze");
        if !f.exists() {
            return Ok(false);
        }
        fs::write(&f, "1").map_err(io_err("freezing", &f))?;
        for _ in 0..5000 {
            if self.frozen() {
                return Ok(true);
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        let _ = fs::write(&f, "0");
        Err(CgroupError::Limit {
            limit: "pause".into(),
            reason: format!("{} did not freeze within 5 s", self.dir.display()),
        })
    }

    pub fn thaw(&self) -> Result<(), CgroupError> {
        let f = self.dir.join("cgroup.freeze");
        if f.exists() {
            fs::write(&f, "0").map_err(io_err("thawing", &f))?;
        }
        Ok(())
    }

    pub fn frozen(&self) -> bool {
        fs::read_to_string(self.dir.join("cgroup.events"))
            .ok()
            .and_then(|s| keyed(&s, "frozen"))
            == Some(1)
    }

    pub fn add_pid(&self, pid: i32) -> Result<(), CgroupError> {
        let p = self.dir.join("cgroup.procs");
        fs::write(&p, pid.to_string()).map_err(io_err("placing the container in", &p))
    }

    pub fn stats(&self) -> Result<Stats, CgroupError> {
        let read = |f: &str| fs::read_to_string(self.dir.join(f)).unwrap_or_default();
        let cpu = read("cpu.stat");
        Ok(Stats {
            memory_bytes: read("memory.current").trim().parse().unwrap_or(0),
            pids: read("pids.current")
                .trim()
                .parse()
                .unwrap_or_else(|_| read_pids(&self.dir.join("cgroup.procs")).len() as u64),
            cpu_ns: keyed(&cpu, "usage_usec").unwrap_or(0) * 1000,
        })
    }

    pub fn oom_kills(&self) -> u64 {
        fs::read_to_string(self.dir.join("memory.events"))
            .ok()
            .and_then(|s| keyed(&s, "oom_kill"))
            .unwrap_or(0)
    }

    pub fn populated(&self) -> bool {
        fs::read_to_string(self.dir.join("cgroup.events"))
            .ok()
            .and_then(|s| keyed(&s, "populated"))
            .unwrap_or(0)
            != 0
    }

    /// cgroup.kill (Linux 5.14) kills every process at once, forks in flight included; without
    /// it, kill what is listed until nothing is.
    pub fn kill_all(&self) -> Result<(), CgroupError> {
        if fs::write(self.dir.join("cgroup.kill"), "1").is_err() {
            for _ in 0..100 {
                let pids = read_pids(&self.dir.join("cgroup.procs"));
                if pids.is_empty() {
                    break;
                }
                for p in pids {
                    // SAFETY: kill(2) has no memory arguments.
                    unsafe { libc::kill(p, libc::SIGKILL) };
                }
                std::thread::sleep(std::time::Duration::from_millis(2));
            }
        }
        Ok(())
    }

    pub fn destroy(&self) -> Result<(), CgroupError> {
        self.kill_all()?;
        for _ in 0..400 {
            if !self.populated() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        rmdir_patiently(&self.dir)
    }
}

fn max_or(v: i64) -> String {
    if v < 0 {
        "max".into()
    } else {
        v.to_string()
    }
}

/// The conversion runc and crun use: shares 2..262144 onto weight 1..10000.
pub fn shares_to_weight(shares: u64) -> u64 {
    let s = shares.clamp(2, 262_144);
    1 + ((s - 2) * 9999) / 262_142
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fake cgroupfs: directories with the files a parent would have. The kernel makes a new
    /// cgroup's files itself; here write_limit creates them, which is what we read back.
    fn fake_root() -> PathBuf {
        let d = std::env::temp_dir().join(format!(
            "pyrt-fake-cgroup-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).unwrap();
        fs::write(d.join("cgroup.subtree_control"), "memory pids cpu").unwrap();
        d
    }

    #[test]
    fn limits_are_written_in_v2_form() {
        let root = fake_root();
        let r = Resources {
            memory: Some(256 << 20),
            memory_swap: None,
            pids: Some(64),
            cpu_quota: Some(50_000),
            cpu_period: Some(100_000),
            cpu_shares: Some(1024),
            cpuset_cpus: Some("0".into()),
            cpuset_mems: None,
            memory_reservation: Some(64 << 20),
            ..Default::default()
        };
        let g = Group::create(root.join("c1"), &r).unwrap();
        let read = |f: &str| fs::read_to_string(g.dir.join(f)).unwrap();
        assert_eq!(read("memory.max"), (256u64 << 20).to_string());
        assert_eq!(read("memory.swap.max"), "0");
        assert_eq!(read("pids.max"), "64");
        assert_eq!(read("cpu.max"), "50000 100000");
        assert_eq!(read("cpu.weight"), "39");
        assert_eq!(read("cpuset.cpus"), "0");
        assert_eq!(read("memory.low"), (64u64 << 20).to_string());
        // cpuset was not enabled in the fake parent: it was asked for.
        assert!(fs::read_to_string(root.join("cgroup.subtree_control"))
            .unwrap()
            .contains("cpuset"));
        fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn unlimited_and_swap() {
        let root = fake_root();
        let r = Resources {
            memory: Some(100),
            memory_swap: Some(300),
            pids: Some(-1),
            ..Default::default()
        };
        let g = Group::create(root.join("c2"), &r).unwrap();
        assert_eq!(
            fs::read_to_string(g.dir.join("memory.swap.max")).unwrap(),
            "200"
        );
        assert_eq!(fs::read_to_string(g.dir.join("pids.max")).unwrap(), "max");
        fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn what_v2_cannot_do_is_refused_by_name() {
        let root = fake_root();
        for (r, name) in [
            (
                Resources {
                    memory_swappiness: Some(10),
                    ..Default::default()
                },
                "memory swappiness",
            ),
            (
                Resources {
                    disable_oom_killer: Some(true),
                    ..Default::default()
                },
                "OOM killer",
            ),
        ] {
            let e = Group::create(root.join("c4"), &r).unwrap_err();
            assert!(e.to_string().contains(name), "{e}");
            let _ = fs::remove_dir_all(root.join("c4"));
        }
        fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn stats_and_events_are_read() {
        let root = fake_root();
        let g = Group::create(root.join("c3"), &Resources::default()).unwrap();
        fs::write(g.dir.join("memory.current"), "4096\n").unwrap();
        fs::write(g.dir.join("pids.current"), "3\n").unwrap();
        fs::write(g.dir.join("cpu.stat"), "usage_usec 250\nuser_usec 200\n").unwrap();
        fs::write(g.dir.join("memory.events"), "low 0\noom 1\noom_kill 1\n").unwrap();
        fs::write(g.dir.join("cgroup.events"), "populated 1\nfrozen 0\n").unwrap();
        assert_eq!(
            g.stats().unwrap(),
            Stats {
                memory_bytes: 4096,
                pids: 3,
                cpu_ns: 250_000
            }
        );
        assert_eq!(g.oom_kills(), 1);
        assert!(g.populated());
        fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn weights() {
        assert_eq!(shares_to_weight(2), 1);
        assert_eq!(shares_to_weight(1024), 39);
        assert_eq!(shares_to_weight(262_144), 10000);
    }
}
