//! `create`, `start`, `run`, `kill` and `delete`: the runtime spec's lifecycle (runtime.md,
//! "Lifecycle" and "Operations") with runc's exit codes and messages.

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use oci_spec::runtime::Spec;
use pyrt_core::cgroups::{self, Cgroup, CgroupPlan, Resources};
use pyrt_core::hooks::{self, Hook};
use pyrt_core::plan::{self, Plan};
use pyrt_core::report::{SetupError, Stage};
use pyrt_core::runtime;
use pyrt_core::spawn::{self, Child, ChildImage};

use crate::error::{io_err, Result, RuncError};
use crate::log;
use crate::state::{self, Record, Status};
use crate::systemd;

pub struct CreateOpts<'a> {
    pub root: &'a Path,
    pub id: &'a str,
    pub bundle: PathBuf,
    pub pid_file: Option<PathBuf>,
    pub console_socket: Option<PathBuf>,
    /// `--systemd-cgroup`: the cgroup is a systemd scope (`systemd.rs`).
    pub systemd_cgroup: bool,
}

/// pyrt-child as pyrt's build made it (see `build.rs`): empty when this crate was built alone.
static EMBEDDED_CHILD: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/pyrt-child"));

/// The pyrt-child image in a sealed memfd, so that a container can reach only that copy through
/// /proc/self/exe (CVE-2019-5736): the small embedded child (a few hundred KB to copy), or,
/// in a build without one, this very binary (it contains the child's code too).
pub fn child_image() -> Result<ChildImage> {
    if !EMBEDDED_CHILD.is_empty() {
        return ChildImage::from_bytes(EMBEDDED_CHILD)
            .map_err(io_err("making the sealed copy of pyrt-child"));
    }
    let exe = std::fs::read("/proc/self/exe").map_err(io_err("reading /proc/self/exe"))?;
    ChildImage::from_bytes(&exe).map_err(io_err("making the sealed copy of pyrt-runc"))
}

pub fn load_spec(bundle: &Path) -> Result<Spec> {
    let path = bundle.join("config.json");
    let text =
        std::fs::read_to_string(&path).map_err(io_err(format!("reading {}", path.display())))?;
    serde_json::from_str(&text).map_err(|e| RuncError::Spec(format!("{}: {e}", path.display())))
}

fn hook_list(v: &Option<Vec<oci_spec::runtime::Hook>>) -> Vec<Hook> {
    v.iter().flatten().map(Hook::from_spec).collect()
}

/// Connects to the console socket: fd 0 of the child, which sends the pty master over it.
fn console(path: &Path) -> Result<UnixStream> {
    UnixStream::connect(path).map_err(io_err(format!(
        "connecting to the console socket {}",
        path.display()
    )))
}

fn cgroup_plan(spec: &Spec, plan: &Plan, id: &str) -> Result<Option<CgroupPlan>> {
    let path = spec.linux().as_ref().and_then(|l| l.cgroups_path().clone());
    if let Some(p) = &path {
        let s = p.to_string_lossy();
        if !s.starts_with('/') && s.matches(':').count() == 2 {
            return Err(RuncError::Spec(format!(
                "linux.cgroupsPath {s:?} is a systemd slice:prefix:name; pyrt-runc has no systemd cgroup driver (use cgroupfs)"
            )));
        }
    }
    // SAFETY: geteuid cannot fail.
    let root = unsafe { libc::geteuid() } == 0;
    Ok(match (&plan.cgroup, root) {
        (Some(c), _) => Some(c.clone()),
        // Without a path, a cgroup of our own naming: `kill --all`, `ps` and `delete` need one.
        (None, true) => Some(CgroupPlan {
            path: PathBuf::from(format!("/pyrt-runc-{id}")),
            // (Device rules alone need no path: they apply here.)
            resources: plan::cgroup_resources(spec).map_err(|e| RuncError::Spec(e.to_string()))?,
        }),
        (None, false) => None,
    })
}

/// What `create` leaves running: the init, blocked at the start gate.
pub struct Created {
    pub child: Child,
}

pub fn create(o: &CreateOpts) -> Result<Created> {
    let dir = state::dir(o.root, o.id)?;
    let bundle = std::fs::canonicalize(&o.bundle)
        .map_err(io_err(format!("the bundle {}", o.bundle.display())))?;
    let mut spec = load_spec(&bundle)?;
    let terminal = spec
        .process()
        .as_ref()
        .and_then(|p| p.terminal())
        .unwrap_or(false);
    match (terminal, &o.console_socket) {
        (true, None) => {
            return Err(RuncError::Usage(
                "process.terminal is true: a --console-socket is needed to receive the pty".into(),
            ))
        }
        (false, Some(_)) => {
            return Err(RuncError::Usage(
                "--console-socket given but process.terminal is false".into(),
            ))
        }
        _ => {}
    }
    // root.path is relative to the bundle.
    let rootfs = match spec.root().as_ref() {
        Some(r) => bundle.join(r.path()),
        None => return Err(RuncError::Spec("config.json: root: missing".into())),
    };
    let rootfs = std::fs::canonicalize(&rootfs)
        .map_err(io_err(format!("root.path {}", rootfs.display())))?;
    if let Some(r) = spec.root_mut() {
        r.set_path(rootfs.clone());
    }
    let mut plan = Plan::from_spec(&spec).map_err(|e| RuncError::Spec(e.to_string()))?;
    let (cg_plan, unit) = if o.systemd_cgroup {
        let path = spec.linux().as_ref().and_then(|l| l.cgroups_path().clone());
        let unit = systemd::unit_of(path.as_deref().and_then(|p| p.to_str()), o.id)?;
        let resources =
            plan::cgroup_resources(&spec).map_err(|e| RuncError::Spec(e.to_string()))?;
        (None, Some((unit, resources)))
    } else {
        (cgroup_plan(&spec, &plan, o.id)?, None)
    };
    plan.detached = true;

    std::fs::create_dir_all(o.root).map_err(io_err(format!(
        "creating the state root {}",
        o.root.display()
    )))?;
    match std::fs::create_dir(&dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            return Err(RuncError::Exists(o.id.into()))
        }
        Err(e) => return Err(io_err(format!("creating {}", dir.display()))(e)),
    }
    let gate = open_gate(&dir)?;
    let hooks = spec.hooks().clone().unwrap_or_default();
    let record = Record {
        id: o.id.into(),
        pid: 0,
        start_time: 0,
        bundle: bundle.clone(),
        rootfs,
        created: log::now_rfc3339(),
        owner: String::new(),
        annotations: spec
            .annotations()
            .clone()
            .unwrap_or_default()
            .into_iter()
            .collect(),
        cgroup: Vec::new(),
        poststart: hook_list(hooks.poststart()),
        poststop: hook_list(hooks.poststop()),
        systemd_unit: None,
    };
    #[allow(deprecated)]
    let runtime_hooks: Vec<Hook> = hook_list(hooks.prestart())
        .into_iter()
        .chain(hook_list(hooks.create_runtime()))
        .collect();
    let r = start_init(
        o,
        &plan,
        cg_plan.as_ref(),
        unit.as_ref(),
        record,
        &runtime_hooks,
        &gate,
    );
    if r.is_err() {
        let _ = std::fs::remove_dir_all(&dir);
    }
    r
}

fn start_init(
    o: &CreateOpts,
    plan: &Plan,
    cg_plan: Option<&CgroupPlan>,
    unit: Option<&(systemd::Unit, Resources)>,
    mut record: Record,
    runtime_hooks: &[Hook],
    gate: &OwnedFd,
) -> Result<Created> {
    let console = o.console_socket.as_deref().map(console).transpose()?;
    let stdin: RawFd = console.as_ref().map_or(0, |c| c.as_raw_fd());
    let image = child_image()?;
    let mut plan = plan.clone();
    plan.cgroup = cg_plan.cloned();
    let created = runtime::create(&image, plan, [stdin, 1, 2], true, Some(gate), || {})?;
    let (child, mut cgroup) = (created.child, created.cgroup);
    let released = (|| -> Result<()> {
        if let Some((unit, resources)) = unit {
            record.systemd_unit = Some(unit.name.clone());
            cgroup = Some(systemd_cgroup(unit, resources, child.pid)?);
        }
        let pid = child.pid;
        record.pid = pid;
        record.start_time = state::start_time(pid).unwrap_or(0);
        let rec = &record;
        let Some(pending) = created.pending else {
            return Ok(()); // (created held: always there)
        };
        spawn::release_with(&child, pending, |pid| {
            let mut state = rec.oci_state(Status::Created);
            state["status"] = "creating".into();
            state["pid"] = pid.into();
            let text = state.to_string();
            hooks::run_all(runtime_hooks, &text).map_err(|e| {
                SetupError::new(Stage::Hooks, libc::EIO, format!("createRuntime {e}"))
            })?;
            Ok(text)
        })?;
        Ok(())
    })();
    if let Err(e) = released {
        let _ = child.kill(libc::SIGKILL);
        if let Some(cg) = &cgroup {
            let _ = cg.kill_all();
        }
        if let Some(name) = &record.systemd_unit {
            let dir = cgroup.as_ref().and_then(|c| c.paths().into_iter().next());
            systemd::stop(name, dir.as_deref());
        }
        if let Some(cg) = &cgroup {
            let _ = cg.destroy();
        }
        return Err(e);
    }
    record.cgroup = cgroup.as_ref().map(|c| c.paths()).unwrap_or_default();
    let kill = |child: &Child| {
        let _ = child.kill(libc::SIGKILL);
        if let Some(cg) = &cgroup {
            let _ = cg.destroy();
        }
    };
    if let Err(e) = record.save(o.root) {
        kill(&child);
        return Err(e);
    }
    if let Some(p) = &o.pid_file {
        if let Err(e) = write_pid_file(p, child.pid) {
            kill(&child);
            return Err(e);
        }
    }
    Ok(Created { child })
}

/// The container's cgroup as a systemd scope: the held init is handed to systemd, then the
/// limits are written where systemd put it (and on v1, into directories of the same path in
/// the hierarchies systemd does not manage, which the init joins).
fn systemd_cgroup(unit: &systemd::Unit, resources: &Resources, pid: i32) -> Result<Cgroup> {
    let scope = systemd::start(unit, pid, resources)?;
    let layout = cgroups::layout()?;
    let cg = Cgroup::create(
        layout,
        &CgroupPlan {
            path: scope,
            resources: resources.clone(),
        },
    )?;
    cg.adopt(pid)?;
    Ok(cg)
}

/// The pid, written to a temporary file and renamed: a reader never sees half of it.
pub fn write_pid_file(path: &Path, pid: i32) -> Result<()> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.pyrt-tmp"));
    std::fs::write(&tmp, pid.to_string()).map_err(io_err(format!("writing {}", tmp.display())))?;
    std::fs::rename(&tmp, path).map_err(io_err(format!("writing {}", path.display())))
}

pub fn start(root: &Path, id: &str) -> Result<()> {
    let rec = Record::load(root, id)?;
    match rec.status(root) {
        Status::Created => {}
        Status::Running | Status::Paused => {
            return Err(RuncError::State(
                "cannot start an already running container".into(),
            ))
        }
        Status::Stopped => {
            return Err(RuncError::State(
                "cannot start a container that has stopped".into(),
            ))
        }
    }
    let dir = state::dir(root, id)?;
    let gate = dir.join(state::gate());
    let mut conn =
        connect_gate(&dir).map_err(io_err(format!("opening the start gate {}", gate.display())))?;
    // From here the container is started, whatever follows: the gate goes, so that the status
    // reads "running" (or "stopped", when the init failed).
    let _ = std::fs::remove_file(&gate);
    conn.write_all(b"s")
        .map_err(io_err("releasing the container"))?;
    let mut report = Vec::new();
    let read = conn.read_to_end(&mut report);
    if report.is_empty() && read.is_err() {
        return Err(RuncError::State(
            "the container's init ended before its command ran".into(),
        ));
    }
    if !report.is_empty() {
        return Err(RuncError::Setup(SetupError::decode(&report)));
    }
    let state = rec.oci_state(Status::Running).to_string();
    for h in &rec.poststart {
        if let Err(e) = hooks::run(h, &state) {
            log::write("warning", &format!("poststart {e}"));
        }
    }
    Ok(())
}

/// The start gate: a listening socket in the state directory's `gate/`, bound here and handed
/// to the child, so that a container in a user namespace (whose root may be a subordinate id
/// with no right to the caller's directory) never needs to reach it.
fn open_gate(dir: &Path) -> Result<OwnedFd> {
    use std::os::unix::fs::DirBuilderExt;
    let gate = dir.join(state::GATE_DIR);
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&gate)
        .map_err(io_err(format!("creating {}", gate.display())))?;
    pyrt_core::child::gate::bind(&gate).map_err(io_err(format!(
        "binding the start gate in {}",
        gate.display()
    )))
}

/// The gate's name is short and relative: connect from inside the state directory, through a
/// descriptor so that no path length limit applies.
fn connect_gate(dir: &Path) -> std::io::Result<UnixStream> {
    let d = std::fs::File::open(dir)?;
    let path = format!(
        "/proc/self/fd/{}/{}",
        d.as_raw_fd(),
        state::gate().display()
    );
    UnixStream::connect(path)
}

/// Kills what is left of the container and waits for the init to be gone.
fn stop(rec: &Record, all: bool) {
    if all {
        if let Some(cg) = rec.cgroup_handle() {
            let _ = cg.kill_all();
        }
    }
    if state::alive(rec.pid, rec.start_time) {
        let _ = signal_init(rec, libc::SIGKILL);
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while state::alive(rec.pid, rec.start_time) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Signals the init through a pidfd, after checking that the pid is still the init's.
fn signal_init(rec: &Record, sig: i32) -> std::io::Result<()> {
    runtime::signal_recorded(rec.pid, rec.start_time, sig)
}

/// The container's processes: its cgroup's, or the init alone.
pub fn pids(rec: &Record) -> Vec<i32> {
    let cg = rec.cgroup_handle();
    let init = state::alive(rec.pid, rec.start_time).then_some(rec.pid);
    runtime::pids(cg.as_ref(), init)
}

pub fn kill(root: &Path, id: &str, sig: i32, all: bool) -> Result<()> {
    let rec = Record::load(root, id)?;
    if rec.status(root) == Status::Stopped {
        return Err(RuncError::State("container not running".into()));
    }
    if all {
        let init = state::alive(rec.pid, rec.start_time).then_some(rec.pid);
        runtime::signal_all(rec.cgroup_handle().as_ref(), init, sig);
        return Ok(());
    }
    signal_init(&rec, sig).map_err(|e| match e.raw_os_error() {
        Some(libc::ESRCH) => RuncError::State("container not running".into()),
        _ => io_err("signalling the container")(e),
    })
}

pub fn delete(root: &Path, id: &str, force: bool) -> Result<()> {
    let rec = match Record::load(root, id) {
        Ok(r) => r,
        // A directory without a record: a create killed half-way. --force removes it.
        Err(RuncError::NotExist(_) | RuncError::State(_)) if force => {
            let _ = std::fs::remove_dir_all(state::dir(root, id)?);
            return Ok(());
        }
        Err(e) => return Err(e),
    };
    let status = rec.status(root);
    if matches!(status, Status::Running | Status::Paused) && !force {
        return Err(RuncError::State(format!(
            "cannot delete container {id} that is not stopped: {}",
            status.name()
        )));
    }
    // A created container is killed and deleted without --force, as runc does (the spec asks
    // for an error: see tests/conformance).
    stop(&rec, true);
    if let Some(name) = &rec.systemd_unit {
        let dir = rec.cgroup.iter().find(|d| d.ends_with(name));
        systemd::stop(name, dir.map(|d| d.as_path()));
    }
    if let Some(cg) = rec.cgroup_handle() {
        if let Err(e) = cg.destroy() {
            log::write("warning", &format!("removing the cgroup of {id}: {e}"));
        }
    }
    std::fs::remove_dir_all(state::dir(root, id)?)
        .map_err(io_err(format!("removing the state of {id}")))?;
    let state = rec.oci_state(Status::Stopped).to_string();
    for h in &rec.poststop {
        if let Err(e) = hooks::run(h, &state) {
            log::write("warning", &format!("poststop {e}"));
        }
    }
    Ok(())
}
