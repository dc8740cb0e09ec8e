//! `pause`, `resume` and `update`: what an engine does to a running container's cgroup. The
//! work is the core's (`cgroups::Cgroup::freeze`, `thaw`, `update`, and the resources' checks in
//! `plan::resources_from_json`), which the Python API's `pause()`, `resume()` and `update()` use
//! too; here are only the record and runc's flags.

use std::io::Read;
use std::path::{Path, PathBuf};

use pyrt_core::cgroups::{self, Cgroup};

use crate::error::{io_err, Result, RuncError};
use crate::state::{Record, Status};

fn running(root: &Path, id: &str, what: &str) -> Result<(Record, Cgroup)> {
    let rec = Record::load(root, id)?;
    match rec.status(root) {
        Status::Running | Status::Paused => {}
        s => {
            return Err(RuncError::State(format!(
                "cannot {what} container {id}: it is {}",
                s.name()
            )))
        }
    }
    let cg = rec.cgroup_handle().ok_or_else(|| {
        RuncError::State(format!(
            "cannot {what} container {id}: it has no cgroup (linux.cgroupsPath)"
        ))
    })?;
    Ok((rec, cg))
}

pub fn pause(root: &Path, id: &str) -> Result<()> {
    let (_, cg) = running(root, id, "pause")?;
    if !cg.freeze()? {
        return Err(RuncError::State(format!(
            "cannot pause container {id}: its cgroups have no freezer"
        )));
    }
    Ok(())
}

pub fn resume(root: &Path, id: &str) -> Result<()> {
    let (_, cg) = running(root, id, "resume")?;
    Ok(cg.thaw()?)
}

/// runc's `update` flags; each one given replaces what `--resources` says of it.
#[derive(Debug, Default)]
pub struct UpdateOpts {
    pub resources: Option<PathBuf>,
    pub memory: Option<String>,
    pub memory_swap: Option<String>,
    pub memory_reservation: Option<String>,
    pub pids_limit: Option<i64>,
    pub cpu_quota: Option<i64>,
    pub cpu_period: Option<u64>,
    pub cpu_shares: Option<u64>,
    pub cpuset_cpus: Option<String>,
    pub cpuset_mems: Option<String>,
}

/// A size as runc's flags take it: bytes, or a number with k, m, g (powers of 1024); -1 for
/// unlimited.
pub fn parse_size(flag: &str, v: &str) -> Result<i64> {
    let t = v.trim().to_ascii_lowercase();
    let t = t.strip_suffix('b').unwrap_or(&t);
    let (num, mult) = match t.chars().last() {
        Some('k') => (&t[..t.len() - 1], 1i64 << 10),
        Some('m') => (&t[..t.len() - 1], 1 << 20),
        Some('g') => (&t[..t.len() - 1], 1 << 30),
        _ => (t, 1),
    };
    num.parse::<i64>()
        .ok()
        .filter(|n| *n >= -1)
        .and_then(|n| {
            if n == -1 {
                Some(-1)
            } else {
                n.checked_mul(mult)
            }
        })
        .ok_or_else(|| RuncError::Usage(format!("--{flag} {v:?}: not a size (bytes, or 512m, 1g)")))
}

/// The `linux.resources` object that the options say: the file's (or stdin's, for `-`), with
/// the flags laid over it.
fn resources(o: &UpdateOpts) -> Result<serde_json::Value> {
    let mut doc = match &o.resources {
        None => serde_json::json!({}),
        Some(p) => {
            let mut text = String::new();
            if p.as_os_str() == "-" {
                std::io::stdin()
                    .read_to_string(&mut text)
                    .map_err(io_err("reading the resources from stdin"))?;
            } else {
                text = std::fs::read_to_string(p)
                    .map_err(io_err(format!("reading {}", p.display())))?;
            }
            serde_json::from_str(&text)
                .map_err(|e| RuncError::Spec(format!("--resources: not JSON: {e}")))?
        }
    };
    let Some(obj) = doc.as_object_mut() else {
        return Err(RuncError::Spec(
            "--resources: a linux.resources object is expected".into(),
        ));
    };
    let mut set = |section: &str, key: &str, v: serde_json::Value| {
        let s = obj.entry(section).or_insert_with(|| serde_json::json!({}));
        if let Some(m) = s.as_object_mut() {
            m.insert(key.into(), v);
        }
    };
    if let Some(m) = &o.memory {
        set("memory", "limit", parse_size("memory", m)?.into());
    }
    if let Some(m) = &o.memory_swap {
        set("memory", "swap", parse_size("memory-swap", m)?.into());
    }
    if let Some(m) = &o.memory_reservation {
        set(
            "memory",
            "reservation",
            parse_size("memory-reservation", m)?.into(),
        );
    }
    if let Some(p) = o.pids_limit {
        set("pids", "limit", p.into());
    }
    if let Some(q) = o.cpu_quota {
        set("cpu", "quota", q.into());
    }
    if let Some(p) = o.cpu_period {
        set("cpu", "period", p.into());
    }
    if let Some(s) = o.cpu_shares {
        set("cpu", "shares", s.into());
    }
    if let Some(c) = &o.cpuset_cpus {
        set("cpu", "cpus", c.clone().into());
    }
    if let Some(m) = &o.cpuset_mems {
        set("cpu", "mems", m.clone().into());
    }
    Ok(doc)
}

pub fn update(root: &Path, id: &str, o: &UpdateOpts) -> Result<()> {
    let doc = resources(o)?;
    let r = pyrt_core::plan::resources_from_json(&doc.to_string())
        .map_err(|e| RuncError::Spec(e.to_string()))?;
    let (mut rec, mut cg) = running(root, id, "update")?;
    if let Some(unit) = &rec.systemd_unit {
        crate::systemd::set_limits(unit, &r)?;
    }
    cg.update(cgroups::layout()?, &r)?;
    // A v1 hierarchy may have been added (cpu, cpuset): delete must find it.
    let paths = cg.paths();
    if paths != rec.cgroup {
        rec.cgroup = paths;
        rec.save(root)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_as_runc_takes_them() {
        assert_eq!(parse_size("memory", "1024").unwrap(), 1024);
        assert_eq!(parse_size("memory", "64m").unwrap(), 64 << 20);
        assert_eq!(parse_size("memory", "2G").unwrap(), 2 << 30);
        assert_eq!(parse_size("memory", "512kb").unwrap(), 512 << 10);
        assert_eq!(parse_size("memory", "-1").unwrap(), -1);
        assert!(parse_size("memory", "lots").is_err());
        assert!(parse_size("memory", "-5").is_err());
        assert!(parse_size("memory", "99999999999999g").is_err());
    }

    #[test]
    fn flags_lay_over_the_resources_file() {
        let dir = std::env::temp_dir().join(format!("pyrt-runc-res-{}", std::process::id()));
        std::fs::write(
            &dir,
            r#"{"memory": {"limit": 1000000}, "pids": {"limit": 5}}"#,
        )
        .unwrap();
        let o = UpdateOpts {
            resources: Some(dir.clone()),
            pids_limit: Some(50),
            cpu_quota: Some(20000),
            ..Default::default()
        };
        let doc = resources(&o).unwrap();
        std::fs::remove_file(&dir).unwrap();
        assert_eq!(doc["memory"]["limit"], 1000000);
        assert_eq!(doc["pids"]["limit"], 50);
        assert_eq!(doc["cpu"]["quota"], 20000);
    }
}
