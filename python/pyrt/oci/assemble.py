"""Options and image -> the OCI runtime spec of a container: a pure function of what it is
given (no directory made, no file copied, no state kept), so that it can be read, tested and
compared with what runc or crun get. ``Container.build_spec`` gathers the inputs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

from pyrt.config.mounts import Tmpfs
from pyrt.config.options import ContainerOptions
from pyrt.errors import PyrtError, SpawnError
from pyrt.host import userns
from pyrt.image import Image
from pyrt.oci import spec
from pyrt.oci.seccomp import default_profile, default_profile_json


@dataclass(frozen=True)
class Layers:
    """Where a container's root comes from: an overlay of ``lower`` (topmost first) with the
    writable ``upper`` and ``work`` directories, or, on a kernel without overlayfs, ``copy``,
    the container's private copy of its flattened image."""

    lower: tuple[str, ...] = ()
    upper: str = ""
    work: str = ""
    copy: Optional[str] = None


@dataclass(frozen=True)
class Assembled:
    #: The spec as a JSON-able dict (a bundle's config.json).
    config: dict[str, Any]
    #: Its process: what every exec into the container starts from.
    process: spec.ProcessSpec
    #: The seccomp filter, None for a privileged container.
    seccomp: Optional[dict[str, Any]]
    #: The same as JSON text (one string per profile, made once), which the core takes beside
    #: a spec without ``linux.seccomp`` (see ``without_seccomp``).
    seccomp_json: Optional[str]


def container_spec(
    o: ContainerOptions,
    image: Image,
    cid: str,
    args: list[str],
    *,
    root_dir: str,
    layers: Optional[Layers],
    id_maps: Optional[userns.IdMaps],
    limits: Optional[spec.Limits],
    netns_path: Optional[str],
    cgroup: bool,
    userns_path: Optional[str] = None,
    idle: bool = False,
) -> Assembled:
    """The spec of container ``cid`` running ``args``, its root mounted on ``root_dir``;
    ``layers`` is None for the host image; ``id_maps`` the user namespace's maps, if it has
    one (``userns_path``: joined, a rootless network's, which has these maps). ``cgroup``: in
    a cgroup of its own, ``pyrt-<cid>``. ``idle``: ``args`` is ``pyrt.config.idle``'s, and
    with init nothing is executed."""
    try:
        ids = image.resolve_user(o.user or image.config.user)
    except ValueError as e:
        raise SpawnError(str(e), stage="user", errno=22) from None
    hostname = o.hostname or cid[:12]
    base_env = {"PATH": spec.DEFAULT_PATH, "HOSTNAME": hostname, "HOME": ids.home}
    env = spec.merge_env(base_env, image.config.env, o.env)
    cwd = o.workdir or image.config.workdir or "/"
    if not cwd.startswith("/"):
        raise PyrtError(f"workdir must be an absolute path: {cwd!r}")
    extra_mounts: list[dict[str, Any]] = []
    annotations = {"run.pyrt.cwd.create": "true"}
    if o.init:
        # "idle": init runs nothing (`pyrt.config.idle`).
        annotations["run.pyrt.init"] = "idle" if idle else "true"
    if layers is None:
        root = spec.RootSpec(path=root_dir, readonly=True, bind="/")
        # The host's /tmp and /run hold its sockets and scratch files: give the container
        # its own, writable ones instead.
        extra_mounts = [Tmpfs("/tmp").to_spec(), Tmpfs("/run", mode=0o755).to_spec()]
    elif layers.copy is not None:
        root = spec.RootSpec(path=root_dir, readonly=bool(o.readonly_rootfs), bind=layers.copy)
    else:
        root = spec.RootSpec(
            path=root_dir,
            readonly=bool(o.readonly_rootfs),
            lower=layers.lower,
            upper=layers.upper,
            work=layers.work,
        )
    privileged = bool(o.privileged)
    if id_maps is not None:
        ids = userns.fit(ids, id_maps)
    process = spec.ProcessSpec(
        args=args,
        env=env,
        cwd=cwd,
        uid=ids.uid,
        gid=ids.gid,
        additional_gids=ids.additional_gids,
        capabilities=spec.capability_set(o.cap_add, o.cap_drop, privileged),
        no_new_privileges=not privileged,
        terminal=bool(o.tty),
    )
    c = spec.ContainerSpec(
        root=root,
        process=process,
        hostname=hostname,
        network="none" if o.network in ("private", "joined", "shared") else o.network,
        netns_path=netns_path,
        userns_path=userns_path,
        mounts=extra_mounts + [m.to_spec() for m in o.mounts],
        masked_paths=() if privileged else spec.DEFAULT_MASKED_PATHS,
        readonly_paths=() if privileged else spec.DEFAULT_READONLY_PATHS,
        annotations=annotations,
        cgroups_path=f"pyrt-{cid}" if cgroup else None,
        uid_map=id_maps.uid if id_maps else (),
        gid_map=id_maps.gid if id_maps else (),
        resources=limits,
        # Docker's rule: privileged containers run without a filter.
        seccomp=None if privileged else default_profile(frozenset(process.capabilities)),
    )
    seccomp = dict(c.seccomp) if c.seccomp is not None else None
    text = None if privileged else default_profile_json(frozenset(process.capabilities))
    return Assembled(spec.build(c), process, seccomp, text)


def without_seccomp(config: dict[str, Any]) -> dict[str, Any]:
    """The spec without ``linux.seccomp`` (a shallow copy): what the core is given when the
    profile travels beside it as text it has compiled before."""
    linux = {k: v for k, v in config["linux"].items() if k != "seccomp"}
    return {**config, "linux": linux}
