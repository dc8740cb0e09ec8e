//! What a request needs before the clone: a network namespace to be born in, a pid namespace
//! taken out of the joins, descriptors handed down (the start gate, idmapped mounts), and
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
    if p.clone_flags & newnet != 0 && p.clone_flags & newuser == 0 {
        let Some(ns) = crate::host::netns::take_ready() else {
            return Ok((Cow::Borrowed(request), None));
        };
        let mut p = p.clone();
        p.clone_flags &= !newnet;
        p.loopback = false;
        return Ok((Cow::Owned(Request::Create(p)), Some(ns)));
    }
    if !p.join.iter().any(|(bit, _)| *bit == newnet) || p.clone_flags & newuser == 0 {
        return Ok((Cow::Borrowed(request), None));
    }
    let mut p = p.clone();
    let ns = take_join(&mut p, newnet)?;
    Ok((Cow::Owned(Request::Create(p)), ns))
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
/// create`'s start gate, and each idmapped bind mount, made here detached (`host::idmount`).
pub(super) fn hand_down<'r>(
    request: Cow<'r, Request>,
    gate: Option<&OwnedFd>,
) -> Result<(Cow<'r, Request>, Vec<OwnedFd>), SetupError> {
    let needs = match request.as_ref() {
        Request::Create(p) => gate.is_some() || p.mounts.iter().any(|m| m.idmap.is_some()),
        Request::Exec(_) => false,
    };
    if !needs {
        return Ok((request, Vec::new()));
    }
    let mut request = request.into_owned();
    let Request::Create(p) = &mut request else {
        unreachable!("only a create hands descriptors down")
    };
    let mut held = Vec::new();
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
                let ns = crate::host::idmount::userns_with(&idmap.maps).map_err(|e| {
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
