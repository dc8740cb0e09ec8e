//! `--systemd-cgroup`: the container's cgroup is a transient scope unit of systemd's (kubeadm's
//! default cgroup driver), so that systemd, which owns the tree, knows what is in it.
//!
//! `linux.cgroupsPath` is then `slice:prefix:name` (runc's convention): the scope is
//! `prefix-name.scope` in `slice` (`system.slice` when empty); no path at all gives
//! `system.slice:pyrt-runc:<id>`. The init, held before its plan, is handed to systemd with
//! `StartTransientUnit` (`PIDs`, `Delegate=yes`); once it is in the scope, the limits are
//! written to the scope's directories by the core's cgroup writer, as for cgroupfs (and, on
//! v1, the hierarchies systemd leaves alone get a directory of the same path), so `update`,
//! `pause`, `kill --all` and `ps` work on it unchanged. `delete` stops the unit.
//!
//! systemd is reached on its private socket, `/run/systemd/private` (root's, no D-Bus daemon
//! needed), with `dbus.rs`.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use pyrt_core::cgroups::Resources;

use crate::dbus::{Arg, Peer, Reply};
use crate::error::{Result, RuncError};

const PRIVATE_SOCKET: &str = "/run/systemd/private";
const MANAGER_PATH: &str = "/org/freedesktop/systemd1";
const MANAGER: &str = "org.freedesktop.systemd1.Manager";

/// The unit a container's cgroup is.
#[derive(Debug, Clone, PartialEq)]
pub struct Unit {
    pub name: String,
    pub slice: String,
}

/// `slice:prefix:name` as a unit; `None` (no cgroupsPath) as pyrt-runc's default.
pub fn unit_of(path: Option<&str>, id: &str) -> Result<Unit> {
    let bad = |why: &str| {
        RuncError::Spec(format!(
            "linux.cgroupsPath {:?}: {why} (with --systemd-cgroup it is slice:prefix:name)",
            path.unwrap_or("")
        ))
    };
    let (slice, prefix, name) = match path {
        None | Some("") => ("", "pyrt-runc", id),
        Some(p) => {
            let parts: Vec<&str> = p.split(':').collect();
            let [slice, prefix, name] = parts[..] else {
                return Err(bad("not three fields"));
            };
            (slice, prefix, name)
        }
    };
    let word = |w: &str| {
        !w.is_empty()
            && w.len() <= 200
            && w.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.@\\".contains(&b))
    };
    let good_slice = slice.is_empty() || (word(slice) && slice.ends_with(".slice"));
    if !good_slice {
        return Err(bad("the slice must be a name ending in .slice"));
    }
    if !word(name) || (!prefix.is_empty() && !word(prefix)) {
        return Err(bad("prefix and name must be unit-name characters"));
    }
    let slice = if slice.is_empty() {
        "system.slice"
    } else {
        slice
    };
    let name = if name.ends_with(".slice") {
        return Err(bad("a slice as the container's own unit is not supported"));
    } else if prefix.is_empty() {
        format!("{name}.scope")
    } else {
        format!("{prefix}-{name}.scope")
    };
    Ok(Unit {
        name,
        slice: slice.into(),
    })
}

fn connect(timeout: Duration) -> Result<Peer> {
    Peer::connect(std::path::Path::new(PRIVATE_SOCKET), timeout).map_err(|e| {
        RuncError::Usage(format!(
            "--systemd-cgroup: systemd is not reachable at {PRIVATE_SOCKET} ({e}); is systemd \
             PID 1 here, and are we root? (or use the cgroupfs driver)"
        ))
    })
}

fn call(what: &str, member: &str, args: &[Arg], timeout: Duration) -> Result<()> {
    let fail = |why: String| RuncError::State(format!("--systemd-cgroup: {what}: {why}"));
    match connect(timeout)?.call(MANAGER_PATH, MANAGER, member, args) {
        Ok(Reply::Return) => Ok(()),
        Ok(Reply::Error { name, message }) => Err(fail(format!("{name}: {message}"))),
        Err(e) => Err(fail(e.to_string())),
    }
}

/// The limits systemd knows as unit properties: without them a `daemon-reload` would write
/// the unit's own (none) over the ones pyrt-runc wrote to the scope's directory.
fn limit_props(r: &Resources) -> Vec<(String, Arg)> {
    let mut props = Vec::new();
    let positive = |v: Option<i64>| v.filter(|v| *v > 0).map(|v| v as u64);
    if let Some(m) = positive(r.memory) {
        props.push(("MemoryMax".to_string(), Arg::U64(m)));
    }
    if let Some(p) = positive(r.pids) {
        props.push(("TasksMax".to_string(), Arg::U64(p)));
    }
    if let Some(q) = positive(r.cpu_quota) {
        let period = r.cpu_period.filter(|p| *p > 0).unwrap_or(100_000);
        // systemd takes the quota as CPU time per second of wall time.
        let per_sec = q.saturating_mul(1_000_000) / period;
        props.push(("CPUQuotaPerSecUSec".to_string(), Arg::U64(per_sec)));
    }
    props
}

/// New limits of a running container's unit (`update`), as its runtime properties.
pub fn set_limits(name: &str, r: &Resources) -> Result<()> {
    let props = limit_props(r);
    if props.is_empty() {
        return Ok(());
    }
    let args = [Arg::Str(name.into()), Arg::Bool(true), Arg::Props(props)];
    let what = format!("setting the limits of {name}");
    call(&what, "SetUnitProperties", &args, Duration::from_secs(30))
}

/// Starts `unit` as a transient scope holding `pid`, and waits (5 s at most) until the kernel
/// shows the process in it. Returns the scope's path in the hierarchy systemd tracks.
pub fn start(unit: &Unit, pid: i32, limits: &Resources) -> Result<PathBuf> {
    let prop = |name: &str, value: Arg| (name.to_string(), value);
    let props: Vec<(String, Arg)> = vec![
        prop(
            "Description",
            Arg::Str(format!("pyrt-runc container {}", unit.name)),
        ),
        prop("Slice", Arg::Str(unit.slice.clone())),
        prop("PIDs", Arg::U32Array(vec![pid as u32])),
        prop("Delegate", Arg::Bool(true)),
        prop("DefaultDependencies", Arg::Bool(false)),
        prop("MemoryAccounting", Arg::Bool(true)),
        prop("CPUAccounting", Arg::Bool(true)),
        prop("TasksAccounting", Arg::Bool(true)),
    ]
    .into_iter()
    .chain(limit_props(limits))
    .collect();
    let args = [
        Arg::Str(unit.name.clone()),
        Arg::Str("replace".into()),
        Arg::Props(props),
        Arg::AuxUnits,
    ];
    let what = format!("starting {}", unit.name);
    call(&what, "StartTransientUnit", &args, Duration::from_secs(30))?;
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if let Some(p) = scope_of(pid).filter(|p| p.ends_with(&unit.name)) {
            return Ok(p);
        }
        if Instant::now() > deadline {
            return Err(RuncError::State(format!(
                "--systemd-cgroup: systemd started {} but process {pid} is not in it after 5 s",
                unit.name
            )));
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// The cgroup path of `pid` in the hierarchy systemd tracks (v2's, or v1's name=systemd).
fn scope_of(pid: i32) -> Option<PathBuf> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    let line = text
        .lines()
        .find(|l| l.starts_with("0::"))
        .or_else(|| text.lines().find(|l| l.contains(":name=systemd:")))?;
    line.splitn(3, ':').nth(2).map(PathBuf::from)
}

/// Once the container's processes are gone: systemd stops an emptied scope itself and removes
/// its directory `dir`. Only a scope still there after a second is stopped explicitly (with a
/// short wait for the reply: systemd 252 may leave a StopUnit on its private socket
/// unanswered while the scope is stopping).
pub fn stop(name: &str, dir: Option<&std::path::Path>) {
    let gone = || dir.is_some_and(|d| !d.exists());
    let deadline = Instant::now() + Duration::from_secs(1);
    while dir.is_some() && !gone() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(2));
    }
    if gone() {
        return;
    }
    let args = [Arg::Str(name.into()), Arg::Str("replace".into())];
    let _ = call(
        &format!("stopping {name}"),
        "StopUnit",
        &args,
        Duration::from_secs(2),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slice_prefix_name() {
        let u = unit_of(Some("kubepods.slice:cri-containerd:abc"), "x").unwrap();
        assert_eq!(u.name, "cri-containerd-abc.scope");
        assert_eq!(u.slice, "kubepods.slice");
        let u = unit_of(Some(":pfx:n1"), "x").unwrap();
        assert_eq!(
            (u.name.as_str(), u.slice.as_str()),
            ("pfx-n1.scope", "system.slice")
        );
        let u = unit_of(None, "c1").unwrap();
        assert_eq!(u.name, "pyrt-runc-c1.scope");
    }

    #[test]
    fn limits_become_unit_properties() {
        let r = Resources {
            memory: Some(64 << 20),
            pids: Some(50),
            cpu_quota: Some(50_000),
            cpu_period: Some(100_000),
            ..Resources::default()
        };
        let p = limit_props(&r);
        assert_eq!(
            p,
            vec![
                ("MemoryMax".to_string(), Arg::U64(64 << 20)),
                ("TasksMax".to_string(), Arg::U64(50)),
                ("CPUQuotaPerSecUSec".to_string(), Arg::U64(500_000)),
            ]
        );
        assert!(limit_props(&Resources {
            memory: Some(-1),
            ..Resources::default()
        })
        .is_empty());
    }

    #[test]
    fn bad_paths_are_named() {
        for p in [
            "/a/b",
            "a:b",
            "nots:p:n",
            "x.slice:p:../n",
            "x.slice:p:a/b",
            "x.slice:p:n.slice",
        ] {
            let e = unit_of(Some(p), "x").unwrap_err().to_string();
            assert!(e.contains("linux.cgroupsPath"), "{p}: {e}");
        }
    }
}
