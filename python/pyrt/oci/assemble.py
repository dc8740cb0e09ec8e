"""Options and image -> the OCI runtime spec of a container: a pure function of what it is
given (no directory made, no file copied, no state kept), so that it can be read, tested and
compared with what runc or crun get. ``Container.build_spec`` gathers the inputs."""

from __future__ import annotations

import dataclasses
import functools
import json
import secrets
import weakref
from dataclasses import dataclass
from typing import Any, Optional

from pyrt.config.mounts import Tmpfs
from pyrt.config.options import ContainerOptions
from pyrt.config.users import UserIds
from pyrt.errors import PyrtError, SpawnError
from pyrt.host import userns
from pyrt.image import Image, ImageConfig
from pyrt.oci import spec
from pyrt.oci.seccomp import default_profile, default_profile_json


@dataclass(frozen=True)
class Layers:
    """Where a container's root comes from: an overlay of ``lower`` (topmost first) with the
    writable ``upper`` and ``work`` directories (or, ``scratch``, a writable layer that the
    container makes in its own mount namespace and loses with it), or, on a kernel without
    overlayfs, ``copy``, the container's private copy of its flattened image."""

    lower: tuple[str, ...] = ()
    upper: str = ""
    work: str = ""
    copy: Optional[str] = None
    scratch: bool = False


@dataclass(frozen=True, eq=False)
class Assembled:
    #: Its process: what every exec into the container starts from.
    process: spec.ProcessSpec
    #: The seccomp filter, None for a privileged container.
    seccomp: Optional[dict[str, Any]]
    #: The same as JSON text (one string per profile, made once), which the core takes beside
    #: a spec without ``linux.seccomp`` (see ``without_seccomp``).
    seccomp_json: Optional[str]
    #: The spec, when it was made as a dict; else it is decoded from ``sent`` when first asked
    #: for (``config``), which a container run to completion never does.
    made: Optional[dict[str, Any]] = None
    #: The JSON the core is sent (without ``linux.seccomp`` when ``seccomp_json`` is given).
    sent: str = ""

    @functools.cached_property
    def config(self) -> dict[str, Any]:
        """The spec as a JSON-able dict (a bundle's config.json)."""
        if self.made is not None:
            return self.made
        config: dict[str, Any] = json.loads(self.sent)
        if self.seccomp_json is not None:
            config["linux"]["seccomp"] = self.seccomp
        return config

    def __eq__(self, other: object) -> bool:
        """The same container described, however each was made (a dict or JSON text)."""
        if not isinstance(other, Assembled):
            return NotImplemented
        mine = (self.config, self.process, self.seccomp, self.seccomp_json)
        return mine == (other.config, other.process, other.seccomp, other.seccomp_json)


@dataclass(frozen=True)
class Placement:
    """What a container's spec takes besides its options, image, id and command: where its
    root is mounted (``root_dir``) and made from (``layers``, None for the host image); its
    user namespace's maps, if it has one (``userns_path``: joined, a rootless network's,
    which has these maps); its limits; the network namespace it joins; ``cgroup``: in a
    cgroup of its own, ``pyrt-<id>``; ``idle``: the command is ``pyrt.config.idle``'s, and
    with init nothing is executed."""

    root_dir: str
    layers: Optional[Layers]
    id_maps: Optional[userns.IdMaps] = None
    limits: Optional[spec.Limits] = None
    netns_path: Optional[str] = None
    cgroup: bool = False
    userns_path: Optional[str] = None
    idle: bool = False


def container_spec(
    o: ContainerOptions, image: Image, cid: str, args: list[str], at: Placement
) -> Assembled:
    """The spec of container ``cid`` running ``args``, placed as ``at`` says."""
    return _assemble(o, image, _user(o, image), cid, args, at)


def _user(o: ContainerOptions, image: Image) -> UserIds:
    try:
        return image.resolve_user(o.user or image.config.user)
    except ValueError as e:
        raise SpawnError(str(e), stage="user", errno=22) from None


def _assemble(
    o: ContainerOptions,
    image: Image,
    ids: UserIds,
    cid: str,
    args: list[str],
    at: Placement,
    default_hostname: Optional[str] = None,
) -> Assembled:
    root_dir, layers, id_maps, idle = at.root_dir, at.layers, at.id_maps, at.idle
    hostname = o.hostname or default_hostname or cid[:12]
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
            scratch=layers.scratch,
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
        netns_path=at.netns_path,
        userns_path=at.userns_path,
        mounts=extra_mounts + [m.to_spec() for m in o.mounts],
        masked_paths=() if privileged else spec.DEFAULT_MASKED_PATHS,
        readonly_paths=() if privileged else spec.DEFAULT_READONLY_PATHS,
        annotations=annotations,
        cgroups_path=f"pyrt-{cid}" if at.cgroup else None,
        uid_map=id_maps.uid if id_maps else (),
        gid_map=id_maps.gid if id_maps else (),
        resources=at.limits,
        # Docker's rule: privileged containers run without a filter.
        seccomp=None if privileged else default_profile(frozenset(process.capabilities)),
    )
    seccomp = dict(c.seccomp) if c.seccomp is not None else None
    text = None if privileged else default_profile_json(frozenset(process.capabilities))
    return Assembled(process, seccomp, text, made=spec.build(c))


def container_spec_sent(
    o: ContainerOptions, image: Image, cid: str, args: list[str], at: Placement
) -> tuple[Assembled, str]:
    """``container_spec``'s result, and the JSON of its config as the core is sent it (without
    ``linux.seccomp`` when the profile goes beside it as text). Made once per set of inputs
    that differ only in the container's id (its default hostname, its cgroup's name, its
    layers' directories) and its command: a template is assembled with placeholders for
    those, and each container's text is the template's with the placeholders replaced."""
    ids = _user(o, image)
    key = _template_key(o, image, ids, cid, at)
    if key is None:  # (an input that cannot be a key: assembled as it is)
        made = _assemble(o, image, ids, cid, args, at)
        return made, _sent(made)
    _check_args(args)
    per_image = _templates.setdefault(image, {})
    t = per_image.get(key)
    if t is None or t.config is not image.config:
        if len(per_image) >= _TEMPLATES_PER_IMAGE:
            per_image.clear()
        t = per_image[key] = _template(o, image, ids, cid, at)
    text = (
        t.text.replace(t.host, cid[:12])
        .replace(t.cid, cid)
        .replace(t.command, json.dumps(args), 1)  # last: nothing is looked for in the command
    )
    env = [e.replace(t.host, cid[:12]) for e in t.made.process.env]
    process = dataclasses.replace(t.made.process, args=list(args), env=env)
    return Assembled(process, t.made.seccomp, t.made.seccomp_json, sent=text), text


@dataclass(frozen=True)
class _Template:
    made: Assembled
    #: The JSON the core is sent, with the placeholders below for the id, the default
    #: hostname and the command (its JSON).
    text: str
    cid: str
    host: str
    command: str
    #: The image config it was made from: held, so that its id in the key stays its own.
    config: ImageConfig


def _template(
    o: ContainerOptions, image: Image, ids: UserIds, cid: str, at: Placement
) -> _Template:
    # Placeholders of 32 random letters, each from an alphabet of its own that is not hex: an
    # id (hex) put in by one replacement cannot be taken for another's placeholder, and no
    # input can hold one by chance (1 in 10^32) or on purpose (they are never shown).
    def token(alphabet: str) -> str:
        return "".join(secrets.choice(alphabet) for _ in range(32))

    id_, host, command = token("ghijklmnop"), token("qrstuvwxyz"), token("GHIJKLMNOPQRSTUVWXYZ")
    at = dataclasses.replace(at, layers=_with_id(at.layers, cid, id_))
    made = _assemble(o, image, ids, id_, [command], at, default_hostname=host)
    return _Template(made, _sent(made), id_, host, json.dumps([command]), image.config)


#: Templates by image (dropped with it), then by the rest of the inputs (`_template_key`).
_templates: weakref.WeakKeyDictionary[Image, dict[tuple[Any, ...], _Template]] = (
    weakref.WeakKeyDictionary()
)
_TEMPLATES_PER_IMAGE = 64

#: The options `_assemble` reads, each part of a template's key; the others do not change
#: the spec (a test holds the two lists to the options' fields).
KEYED_OPTIONS = (
    "env", "workdir", "user", "hostname", "mounts", "readonly_rootfs", "network", "cap_add",
    "cap_drop", "privileged", "init", "tty",
)  # fmt: skip
UNKEYED_OPTIONS = ("name", "aliases", "limits", "disk", "output_limit")


def _template_key(
    o: ContainerOptions, image: Image, ids: UserIds, cid: str, at: Placement
) -> Optional[tuple[Any, ...]]:
    """Every input of ``_assemble`` but the id and the command, or None when one cannot be a
    dict key, or names the id elsewhere than in the layers' directories."""
    if cid in at.root_dir or cid in (at.netns_path or "") or cid in (at.userns_path or ""):
        return None
    where = dataclasses.replace(at, layers=_with_id(at.layers, cid, "/"))
    key = (tuple(o.env.items()), o.workdir, o.user, o.hostname, o.mounts, o.readonly_rootfs,
           o.network, o.cap_add, o.cap_drop, o.privileged, o.init, o.tty, id(image.config),
           image.kind, image.lower, ids, where)  # fmt: skip
    try:
        hash(key)
    except TypeError:
        return None
    return key


def _with_id(layers: Optional[Layers], cid: str, new: str) -> Optional[Layers]:
    """``layers`` with the container's id in its directories' paths replaced by ``new``."""
    if layers is None:
        return None
    return dataclasses.replace(
        layers,
        upper=layers.upper.replace(cid, new),
        work=layers.work.replace(cid, new),
        copy=None if layers.copy is None else layers.copy.replace(cid, new),
    )


def _check_args(args: list[str]) -> None:
    """What ``spec.process_dict`` checks of a command (the template's is a placeholder)."""
    if not args:
        raise ValueError("no command: the image has no Entrypoint or Cmd and none was given")
    for a in args:
        if not isinstance(a, str):
            raise TypeError(f"command arguments must be str, not {type(a).__name__}: {a!r}")


def _sent(made: Assembled) -> str:
    return json.dumps(without_seccomp(made.config) if made.seccomp_json else made.config)


def without_seccomp(config: dict[str, Any]) -> dict[str, Any]:
    """The spec without ``linux.seccomp`` (a shallow copy): what the core is given when the
    profile travels beside it as text it has compiled before."""
    linux = {k: v for k, v in config["linux"].items() if k != "seccomp"}
    return {**config, "linux": linux}
