//! The read-only commands: `state`, `list`, `ps`, `spec` and `features`.

use std::path::Path;
use std::process::Command;

use crate::error::{io_err, Result, RuncError};
use crate::lifecycle::pids;
use crate::state::{self, Record};

pub fn state(root: &Path, id: &str) -> Result<()> {
    let rec = Record::load(root, id)?;
    let st = rec.oci_state(rec.status(root));
    println!(
        "{}",
        serde_json::to_string_pretty(&st).expect("state serialises")
    );
    Ok(())
}

pub fn list(root: &Path, format: &str, quiet: bool) -> Result<()> {
    let recs: Vec<Record> = state::list(root)
        .iter()
        .filter_map(|id| Record::load(root, id).ok())
        .collect();
    if quiet {
        for r in &recs {
            println!("{}", r.id);
        }
        return Ok(());
    }
    if format == "json" {
        let v: Vec<serde_json::Value> = recs.iter().map(|r| r.oci_state(r.status(root))).collect();
        println!("{}", serde_json::Value::from(v));
        return Ok(());
    }
    println!(
        "{:<20} {:<8} {:<10} {:<40} {:<31} OWNER",
        "ID", "PID", "STATUS", "BUNDLE", "CREATED"
    );
    for r in &recs {
        let s = r.status(root);
        let pid = if s == state::Status::Stopped {
            0
        } else {
            r.pid
        };
        println!(
            "{:<20} {:<8} {:<10} {:<40} {:<31} {}",
            r.id,
            pid,
            s.name(),
            r.bundle.display(),
            r.created,
            r.owner
        );
    }
    Ok(())
}

pub fn ps(root: &Path, id: &str, format: &str, ps_args: &[String]) -> Result<()> {
    let rec = Record::load(root, id)?;
    let pids = pids(&rec);
    if format == "json" {
        println!("{}", serde_json::Value::from(pids));
        return Ok(());
    }
    let args: Vec<String> = if ps_args.is_empty() {
        vec!["-ef".into()]
    } else {
        ps_args.to_vec()
    };
    let out = Command::new("ps")
        .args(&args)
        .output()
        .map_err(io_err("running ps"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let mut lines = text.lines();
    let header = lines.next().unwrap_or_default();
    let col = header
        .split_whitespace()
        .position(|c| c == "PID")
        .ok_or_else(|| RuncError::Usage("ps printed no PID column".into()))?;
    println!("{header}");
    for l in lines {
        if let Some(pid) = l
            .split_whitespace()
            .nth(col)
            .and_then(|p| p.parse::<i32>().ok())
        {
            if pids.contains(&pid) {
                println!("{l}");
            }
        }
    }
    Ok(())
}

/// `spec`: a starting config.json in the bundle, as runc writes one (a shell on a terminal in
/// `rootfs`, the default namespaces, masked paths and capabilities).
pub fn spec(bundle: &Path, rootless: bool) -> Result<()> {
    let path = bundle.join("config.json");
    if path.exists() {
        return Err(RuncError::Usage(format!(
            "{} exists; remove it first",
            path.display()
        )));
    }
    let caps = ["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"];
    let mut namespaces = vec!["pid", "network", "ipc", "uts", "mount", "cgroup"];
    let mut mounts = serde_json::json!([
        {"destination": "/proc", "type": "proc", "source": "proc"},
        {"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
        {"destination": "/dev/pts", "type": "devpts", "source": "devpts", "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]},
        {"destination": "/dev/shm", "type": "tmpfs", "source": "shm", "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]},
        {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue", "options": ["nosuid", "noexec", "nodev"]},
        {"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", "ro"]},
        {"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup", "options": ["nosuid", "noexec", "nodev", "relatime", "ro"]}
    ]);
    let mut linux = serde_json::json!({
        "namespaces": [],
        "maskedPaths": ["/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
            "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/sys/firmware", "/proc/scsi"],
        "readonlyPaths": ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"]
    });
    if rootless {
        namespaces.push("user");
        // SAFETY: getuid/getgid cannot fail.
        let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
        linux["uidMappings"] = serde_json::json!([{"containerID": 0, "hostID": uid, "size": 1}]);
        linux["gidMappings"] = serde_json::json!([{"containerID": 0, "hostID": gid, "size": 1}]);
        namespaces.retain(|n| *n != "network" && *n != "cgroup");
        let m = mounts.as_array_mut().expect("an array");
        m.retain(|x| x["type"] != "cgroup" && x["type"] != "sysfs");
        m.push(serde_json::json!({"destination": "/sys", "type": "none", "source": "/sys", "options": ["rbind", "nosuid", "noexec", "nodev", "ro"]}));
        for x in m.iter_mut() {
            if x["type"] == "devpts" {
                x["options"] = serde_json::json!([
                    "nosuid",
                    "noexec",
                    "newinstance",
                    "ptmxmode=0666",
                    "mode=0620"
                ]);
            }
        }
    }
    linux["namespaces"] = namespaces
        .iter()
        .map(|n| serde_json::json!({"type": n}))
        .collect();
    let config = serde_json::json!({
        "ociVersion": "1.2.0",
        "process": {
            "terminal": true,
            "user": {"uid": 0, "gid": 0},
            "args": ["sh"],
            "env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "TERM=xterm"],
            "cwd": "/",
            "capabilities": {"bounding": caps, "effective": caps, "permitted": caps},
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
            "noNewPrivileges": true
        },
        "root": {"path": "rootfs", "readonly": true},
        "hostname": "pyrt",
        "mounts": mounts,
        "linux": linux
    });
    std::fs::write(
        &path,
        serde_json::to_string_pretty(&config).expect("serialises"),
    )
    .map_err(io_err(format!("writing {}", path.display())))
}

/// Whether mount_setattr(2) exists here: called on no descriptor, it fails with EBADF where it
/// does and ENOSYS where it does not.
fn kernel_has_mount_setattr() -> bool {
    // SAFETY: an invalid descriptor and no attribute struct: the kernel touches no memory.
    let r = unsafe { libc::syscall(libc::SYS_mount_setattr, -1, c"".as_ptr(), 0, 0usize, 0usize) };
    r == 0 || std::io::Error::last_os_error().raw_os_error() != Some(libc::ENOSYS)
}

/// `features` (runtime-spec features.md): what this runtime implements.
pub fn features() {
    let mut caps: Vec<String> = caps::all().iter().map(|c| c.to_string()).collect();
    caps.sort();
    let f = serde_json::json!({
        "ociVersionMin": "1.0.0",
        "ociVersionMax": "1.2.0",
        "hooks": ["prestart", "createRuntime", "createContainer", "startContainer", "poststart", "poststop"],
        "mountOptions": ["async", "atime", "bind", "defaults", "dev", "diratime", "dirsync", "exec",
            "idmap", "mand", "noatime", "nodev", "nodiratime", "noexec", "nomand", "norelatime",
            "nostrictatime", "nosuid", "private", "ratime", "rbind", "rdev", "rdiratime", "relatime",
            "remount", "rexec", "ridmap", "rnoatime", "rnodev", "rnodiratime", "rnoexec",
            "rnorelatime", "rnostrictatime", "rnosuid", "rnosymfollow", "ro", "rprivate", "rrelatime",
            "rro", "rrw", "rshared", "rslave", "rstrictatime", "rsuid", "rsymfollow", "runbindable",
            "rw", "shared", "slave", "strictatime", "suid", "sync", "unbindable"],
        "linux": {
            "namespaces": ["cgroup", "ipc", "mount", "network", "pid", "user", "uts"],
            "capabilities": caps,
            "cgroup": {"v1": true, "v2": true, "systemd": true, "systemdUser": false, "rdma": false},
            "seccomp": {
                "enabled": true,
                "actions": ["SCMP_ACT_ALLOW", "SCMP_ACT_ERRNO", "SCMP_ACT_KILL", "SCMP_ACT_KILL_PROCESS",
                    "SCMP_ACT_KILL_THREAD", "SCMP_ACT_LOG", "SCMP_ACT_TRACE", "SCMP_ACT_TRAP"],
                "operators": ["SCMP_CMP_EQ", "SCMP_CMP_GE", "SCMP_CMP_GT", "SCMP_CMP_LE", "SCMP_CMP_LT",
                    "SCMP_CMP_MASKED_EQ", "SCMP_CMP_NE"],
                "archs": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"]
            },
            "apparmor": {"enabled": false},
            // Idmapped bind mounts need mount_setattr (Linux 5.12): reported as this kernel has it.
            "mountExtensions": {"idmap": {"enabled": kernel_has_mount_setattr()}},
            "selinux": {"enabled": false},
            "intelRdt": {"enabled": false}
        },
        "annotations": {
            "run.pyrt.version": env!("CARGO_PKG_VERSION"),
            "run.pyrt.rootless": "true"
        }
    });
    println!("{}", serde_json::to_string_pretty(&f).expect("serialises"));
}
