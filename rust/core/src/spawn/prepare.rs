//! What a request needs before the clone: a first stage for a user namespace joined by path, a
//! network namespace to be born in, a pid namespace taken out of the joins, descriptors handed down (the start gate, idmapped mounts), and
//! whether the child must become its user namespace's root itself.

use std::borrow::Cow;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};

use super::clone::dup_high;
use super::spawn_err;
use crate::plan::{Plan, Request};
use crate::report::{SetupError, Stage};

/// The network namespace the spawner thread steps into for the clone, so that the child is
/// born in it, and the request adjusted for that:
///
/// - A child in a new user namespace has no capability over a network namespace of the host's
///   user namespace, so it cannot join one (a root caller's sandboxed container sharing another
///   container's network): the join is taken out of the plan and done this way instead.
/// - A plan that makes a new network namespace (and no user namespace) gets a ready one from
///   the pool (`host::netns::take_ready`) when there is one: its `lo` is up already.
pub(super) fn prejoin_net(
    request: &Request,
) -> Result<(Cow<'_, Request>, Option<OwnedFd>), SetupError> {
    let newuser = libc::CLONE_NEWUSER as u64;
    let newnet = libc::CLONE_NEWNET as u64;
    let Request::Create(p) = request else {
        return Ok((Cow::Borrowed(request), None));
    };
    if p.clone_flags & newnet != 0 && !p.in_user_namespace() {
        let Some(ns) = crate::host::netns::take_ready() else {
            return Ok((Cow::Borrowed(request), None));
        };
        let mut p = p.clone();
        p.clone_flags &= !newnet;
        p.loopback = false;
        return Ok((Cow::Owned(Request::Create(p)), Some(ns)));
    }
    // An unprivileged caller's first stage joins it instead, from inside the user namespace
    // that owns it (a rootless pyrt.Network's member): the spawner could not.
    // SAFETY: geteuid cannot fail.
    let unprivileged_first_stage = p.user_joined_first && unsafe { libc::geteuid() } != 0;
    if !p.join.iter().any(|(bit, _)| *bit == newnet)
        || !(p.clone_flags & newuser != 0 || p.user_joined_first)
        || unprivileged_first_stage
    {
        return Ok((Cow::Borrowed(request), None));
    }
    let mut p = p.clone();
    let ns = take_join(&mut p, newnet)?;
    Ok((Cow::Owned(Request::Create(p)), ns))
}

/// A plan that joins a user namespace by path and makes other namespaces: those must belong to
/// the joined one (an unprivileged caller could not make them otherwise, and the container's
/// root could not mount in a mount namespace of the host's user namespace). So the clone makes
/// none, and a first stage of pyrt-child enters the user namespace, makes the rest and clones
/// the container's process (`child::stage1`, runc's nsexec does the same). Returns the request
/// with its user join taken out and `user_joined_first` set, and the user namespace, opened
/// high, with the namespaces to make.
pub(super) fn two_stage(
    request: &Request,
) -> Result<(Cow<'_, Request>, Option<FirstStage>), SetupError> {
    let newuser = libc::CLONE_NEWUSER as u64;
    let Request::Create(p) = request else {
        return Ok((Cow::Borrowed(request), None));
    };
    if !p.join.iter().any(|(bit, _)| *bit == newuser) || p.clone_flags == 0 {
        return Ok((Cow::Borrowed(request), None));
    }
    let mut p = p.clone();
    let ns = take_join(&mut p, newuser)?.expect("the plan joins a user namespace");
    let userns = dup_high(ns.as_raw_fd()).map_err(|e| spawn_err("dup of the user namespace", e))?;
    // The other namespaces to join are opened here and handed down: from inside the user
    // namespace, another process's /proc/PID/fd is out of reach (that takes CAP_SYS_PTRACE
    // over the caller's namespace), while the child's own descriptors are not.
    let mut joins = Vec::new();
    for (_, path) in p.join.iter_mut() {
        let opened = std::fs::File::open(&*path).map_err(|e| {
            SetupError::io(
                Stage::Namespaces,
                format!("opening namespace {}", path.display()),
                &e,
            )
        })?;
        let fd = dup_high(opened.as_raw_fd()).map_err(|e| spawn_err("dup of a namespace", e))?;
        *path = format!("/proc/self/fd/{}", fd.as_raw_fd()).into();
        p.handed_joins.push(fd.as_raw_fd());
        joins.push(fd);
    }
    let flags = p.clone_flags;
    p.user_joined_first = true;
    Ok((
        Cow::Owned(Request::Create(p)),
        Some(FirstStage {
            userns,
            flags,
            joins,
        }),
    ))
}

/// What a first stage is handed (`two_stage`).
pub(super) struct FirstStage {
    /// The user namespace to enter, at or above the descriptor floor.
    pub(super) userns: OwnedFd,
    /// The namespaces to make (CLONE_NEW* bits).
    pub(super) flags: u64,
    /// The namespaces the second stage joins, opened (`Plan::handed_joins`).
    pub(super) joins: Vec<OwnedFd>,
}

/// Takes the namespace of type `bit` out of the plan's joins, opened, for the spawner to step
/// into before the clone (None: the plan joins no such namespace).
pub(crate) fn take_join(plan: &mut Plan, bit: u64) -> Result<Option<OwnedFd>, SetupError> {
    let Some(i) = plan.join.iter().position(|(b, _)| *b == bit) else {
        return Ok(None);
    };
    let (_, path) = plan.join.remove(i);
    let f = std::fs::File::open(&path).map_err(|e| {
        SetupError::io(
            Stage::Namespaces,
            format!("opening namespace {}", path.display()),
            &e,
        )
    })?;
    Ok(Some(OwnedFd::from(f)))
}

/// Descriptors the child inherits, put in the plan (`Plan::inherited_fds`): `pyrt-runc
/// create`'s start gate, the v1 cgroup layout made ahead (`host::cgrouptree`), and each
/// idmapped bind mount, made here detached (`host::idmount`).
pub(super) fn hand_down<'r>(
    request: Cow<'r, Request>,
    gate: Option<&OwnedFd>,
) -> Result<(Cow<'r, Request>, Vec<OwnedFd>), SetupError> {
    // (A clone of the layout, when there is one to give: the child lays it out otherwise.)
    let mut cgroup_tree = match request.as_ref() {
        Request::Create(p) if p.fits_cgroup_tree() => p
            .host_cgroups
            .as_deref()
            .and_then(crate::host::cgrouptree::clone_for)
            .and_then(|t| dup_high(t.as_raw_fd()).ok()),
        _ => None,
    };
    let needs = match request.as_ref() {
        Request::Create(p) => {
            gate.is_some() || cgroup_tree.is_some() || p.mounts.iter().any(|m| m.idmap.is_some())
        }
        Request::Exec(_) | Request::Forward(_) | Request::Serve(_) => false,
    };
    if !needs {
        return Ok((request, Vec::new()));
    }
    let mut request = request.into_owned();
    let Request::Create(p) = &mut request else {
        unreachable!("only a create hands descriptors down")
    };
    let mut held = Vec::new();
    if let Some(tree) = cgroup_tree.take() {
        p.cgroup_tree_fd = Some(tree.as_raw_fd());
        held.push(tree);
    }
    if let Some(g) = gate {
        let fd = dup_high(g.as_raw_fd()).map_err(|e| spawn_err("dup of the start gate", e))?;
        p.gate_fd = Some(fd.as_raw_fd());
        held.push(fd);
    }
    // One user namespace per distinct mapping, for as long as the mounts are being made.
    let mut namespaces: Vec<(crate::plan::IdMaps, OwnedFd)> = Vec::new();
    for (i, m) in p.mounts.iter_mut().enumerate() {
        let (Some(idmap), crate::plan::MountKind::Bind { source, recursive }) =
            (m.idmap.as_mut(), &m.kind)
        else {
            continue;
        };
        let what = |e: io::Error| {
            SetupError::new(
                Stage::Mount,
                e.raw_os_error().unwrap_or(libc::EINVAL),
                format!("mounts[{i}] ({}): {e}", m.destination.display()),
            )
        };
        let ns = match namespaces.iter().position(|(maps, _)| *maps == idmap.maps) {
            Some(k) => k,
            None => {
                let ns = crate::host::userns::with_maps(&idmap.maps).map_err(|e| {
                    what(io::Error::new(
                        e.kind(),
                        format!("a user namespace for the mapping: {e}"),
                    ))
                })?;
                namespaces.push((idmap.maps.clone(), ns));
                namespaces.len() - 1
            }
        };
        let fd = crate::host::idmount::detached(source, *recursive, idmap, &namespaces[ns].1)
            .and_then(|tree| dup_high(tree.as_raw_fd()))
            .map_err(what)?;
        idmap.fd = Some(fd.as_raw_fd());
        held.push(fd);
    }
    Ok((Cow::Owned(request), held))
}

/// Whether the child must become its user namespace's root itself: a caller whose map gives
/// the namespace's 0 to another id (root mapping the container to a subordinate range, or a
/// user to one of theirs through newuidmap). A caller mapped as 0 is that root already.
pub(super) fn needs_setid(request: &Request) -> bool {
    let Request::Create(p) = request else {
        return false;
    };
    let Some(maps) = &p.id_maps else { return false };
    // SAFETY: geteuid cannot fail.
    let euid = unsafe { libc::geteuid() };
    let root_of = |r: &[(u32, u32, u32)]| r.iter().find(|(i, _, _)| *i == 0).map(|(_, o, _)| *o);
    matches!(root_of(&maps.uid), Some(r) if r != euid)
}
