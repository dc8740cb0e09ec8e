//! `exec`: a process in a running container, from a `process.json` (`--process`, what
//! containerd and conmon send) or from the container's own `process` with the command line's
//! changes (`pyrt-runc exec ID CMD...`).

use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

use pyrt_core::plan::ExecPlan;
use pyrt_core::runtime;

use crate::error::{io_err, Result, RuncError};
use crate::lifecycle::{self, load_spec, write_pid_file};
use crate::state::{Record, Status};

#[derive(Default)]
pub struct ExecOpts {
    pub process: Option<PathBuf>,
    pub args: Vec<String>,
    pub detach: bool,
    pub pid_file: Option<PathBuf>,
    pub console_socket: Option<PathBuf>,
    pub tty: bool,
    pub cwd: Option<String>,
    pub env: Vec<String>,
    pub user: Option<String>,
    pub caps: Vec<String>,
    pub no_new_privs: bool,
    pub additional_gids: Vec<u32>,
}

fn process_json(rec: &Record, o: &ExecOpts) -> Result<serde_json::Value> {
    if let Some(p) = &o.process {
        let text =
            std::fs::read_to_string(p).map_err(io_err(format!("reading {}", p.display())))?;
        return serde_json::from_str(&text)
            .map_err(|e| RuncError::Spec(format!("{}: {e}", p.display())));
    }
    if o.args.is_empty() {
        return Err(RuncError::Usage(
            "exec needs a command, or --process".into(),
        ));
    }
    let spec = load_spec(&rec.bundle)?;
    let mut p = serde_json::to_value(spec.process().clone().unwrap_or_default())
        .map_err(|e| RuncError::Spec(e.to_string()))?;
    p["args"] = o.args.clone().into();
    p["terminal"] = o.tty.into();
    if let Some(c) = &o.cwd {
        p["cwd"] = c.clone().into();
    }
    if !o.env.is_empty() {
        let mut env: Vec<String> = serde_json::from_value(p["env"].clone()).unwrap_or_default();
        env.extend(o.env.iter().cloned());
        p["env"] = env.into();
    }
    if let Some(u) = &o.user {
        let (uid, gid) = u.split_once(':').unwrap_or((u, "0"));
        let bad = || RuncError::Usage(format!("--user {u:?}: give UID[:GID] as numbers"));
        p["user"] = serde_json::json!({
            "uid": uid.parse::<u32>().map_err(|_| bad())?,
            "gid": gid.parse::<u32>().map_err(|_| bad())?,
        });
    }
    if !o.additional_gids.is_empty() {
        p["user"]["additionalGids"] = o.additional_gids.clone().into();
    }
    if !o.caps.is_empty() {
        for set in ["bounding", "effective", "permitted"] {
            let mut v: Vec<String> =
                serde_json::from_value(p["capabilities"][set].clone()).unwrap_or_default();
            v.extend(o.caps.iter().cloned());
            p["capabilities"][set] = v.into();
        }
    }
    if o.no_new_privs {
        p["noNewPrivileges"] = true.into();
    }
    Ok(p)
}

/// Runs the process; returns its exit code (0 at once with `--detach`).
pub fn exec(root: &Path, id: &str, o: &ExecOpts) -> Result<i32> {
    let rec = Record::load(root, id)?;
    match rec.status(root) {
        Status::Stopped => {
            return Err(RuncError::State(
                "cannot exec in a stopped container".into(),
            ))
        }
        Status::Paused => {
            return Err(RuncError::State(
                "cannot exec in a paused container (resume it first)".into(),
            ))
        }
        _ => {}
    }
    let process = process_json(&rec, o)?;
    let terminal = process["terminal"].as_bool().unwrap_or(false);
    if terminal != o.console_socket.is_some() {
        return Err(RuncError::Usage(if terminal {
            "a terminal needs --console-socket to send the pty to".into()
        } else {
            "--console-socket given but the process has no terminal".into()
        }));
    }
    // The container's seccomp filter applies to every process in it: a bundle whose config can
    // no longer be read is an error, never an exec without the filter.
    let spec = load_spec(&rec.bundle)
        .map_err(|e| RuncError::Spec(format!("the container's seccomp filter: {e}")))?;
    let seccomp = spec
        .linux()
        .clone()
        .and_then(|l| l.seccomp().clone())
        .map(|s| serde_json::to_string(&s))
        .transpose()
        .map_err(|e| RuncError::Spec(format!("the container's seccomp spec: {e}")))?;
    let mut plan = ExecPlan::from_process_json(&process.to_string(), rec.pid, seccomp.as_deref())
        .map_err(|e| RuncError::Spec(e.to_string()))?;
    plan.detached = o.detach;
    let cgroup = rec.cgroup_handle();
    let console = o
        .console_socket
        .as_deref()
        .map(|p| {
            UnixStream::connect(p).map_err(io_err(format!(
                "connecting to the console socket {}",
                p.display()
            )))
        })
        .transpose()?;
    let stdin = console.as_ref().map_or(0, |c| c.as_raw_fd());
    let image = lifecycle::child_image()?;
    let child = runtime::exec_into(&image, plan, [stdin, 1, 2], cgroup.as_ref())?;
    if let Some(p) = &o.pid_file {
        write_pid_file(p, child.pid)?;
    }
    if o.detach {
        return Ok(0);
    }
    crate::signals::wait_forwarding(&child)
}
