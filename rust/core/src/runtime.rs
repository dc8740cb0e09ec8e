//! Container operations, written once for both front doors (the PyO3 module and pyrt-runc):
//! creating a container with its cgroup, and starting a process inside a running one. Each
//! door adds only what is its own (Python's held start and fault points; runc's hooks, state
//! records and console sockets).

use std::os::fd::{OwnedFd, RawFd};
use std::path::PathBuf;

use crate::cgroups::{self, Cgroup};
use crate::plan::{ExecPlan, Plan, Request};
use crate::report::{SetupError, Stage};
use crate::spawn::{self, Child, ChildImage, Pending, Placement};

/// A container's first process, with its cgroup, and (when created held) what `release`
/// needs to let it go on.
pub struct Created {
    pub child: Child,
    pub cgroup: Option<Cgroup>,
    pub pending: Option<Pending>,
}

/// Creates the container's cgroup (when the plan names one), then its first process: running
/// its command on return, or with `hold` stopped before its plan until `spawn::release`. If
/// the process cannot be made, the cgroup is removed again: a failed create leaves nothing.
/// `after_cgroup` runs between the two (the Python door's fault points use it).
pub fn create(
    image: &ChildImage,
    plan: Plan,
    stdio: [RawFd; 3],
    hold: bool,
    after_cgroup: impl FnOnce(),
) -> Result<Created, SetupError> {
    let cgroup = match &plan.cgroup {
        None => None,
        Some(cp) => Some(
            cgroups::layout()
                .and_then(|l| Cgroup::create(l, cp))
                .map_err(|e| SetupError::new(Stage::Cgroup, e.errno(), e.to_string()))?,
        ),
    };
    after_cgroup();
    let place = Placement {
        cgroup: cgroup.as_ref(),
        pidns: None,
    };
    let request = Request::Create(plan);
    let spawned = if hold {
        spawn::spawn_held(image, &request, stdio, place).map(|(c, p)| (c, Some(p)))
    } else {
        spawn::spawn(image, &request, stdio, place).map(|c| (c, None))
    };
    match spawned {
        Ok((child, pending)) => Ok(Created {
            child,
            cgroup,
            pending,
        }),
        Err(e) => {
            if let Some(c) = cgroup {
                let _ = c.destroy();
            }
            Err(e)
        }
    }
}

/// The cgroup of a running container, from the directories recorded when it was created
/// (none: a container without one).
pub fn cgroup_of(paths: &[PathBuf]) -> Option<Cgroup> {
    if paths.is_empty() {
        return None;
    }
    Cgroup::from_paths(cgroups::layout().ok()?, paths)
}

/// Starts the process of `plan` inside the running container whose first process is
/// `plan.target`, in its cgroup when given. The pid namespace is joined by the spawner, except
/// for a container in a user namespace of its own: a multi-threaded process may not enter
/// that, so the child joins the user namespace, then the pid namespace, and forks
/// (`ExecPlan::fork_into_pidns`).
pub fn exec_into(
    image: &ChildImage,
    plan: ExecPlan,
    stdio: [RawFd; 3],
    cgroup: Option<&Cgroup>,
) -> Result<Child, SetupError> {
    let target = plan.target;
    let pidns = std::fs::File::open(format!("/proc/{target}/ns/pid"))
        .map(OwnedFd::from)
        .map_err(|e| {
            SetupError::io(
                Stage::Namespaces,
                format!("the container's pid namespace (pid {target})"),
                &e,
            )
        })?;
    let place = Placement {
        cgroup,
        pidns: (!plan.fork_into_pidns).then_some(&pidns),
    };
    spawn::spawn(image, &Request::Exec(plan), stdio, place)
}
