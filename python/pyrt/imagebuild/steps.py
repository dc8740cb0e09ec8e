"""What each instruction does to a stage's state: metadata instructions change the config,
layer instructions (RUN, COPY, ADD, a WORKDIR that must make its directory) run in a container
of the state's image and become one layer by ``Container.commit``.

A layer step first computes its cache key (the state so far, the instruction as substituted,
and the digest of what it reads); a key found in the cache gives its layers without running.
"""

from __future__ import annotations

import dataclasses
import math
import os
import posixpath
import re
import signal
import stat
import tarfile
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import IO, Any, Optional

from pyrt.errors import BuildError, PyrtError
from pyrt.host import userns
from pyrt.image import Image, ImageConfig, merged, store
from pyrt.imagebuild import cache, parser
from pyrt.imagebuild.context import Context, ContextError, Entry
from pyrt.imagebuild.parser import Instruction

DEFAULT_SHELL = ("/bin/sh", "-c")
#: Docker's HEALTHCHECK flags and the config field each one sets.
_HEALTH_FLAGS = {
    "interval": "Interval",
    "timeout": "Timeout",
    "start-period": "StartPeriod",
    "start-interval": "StartInterval",
}
_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)")
_UNITS = {"ns": 1, "us": 1e3, "µs": 1e3, "ms": 1e6, "s": 1e9, "m": 60e9, "h": 3600e9}


@dataclass
class State:
    """A stage as built so far."""

    image: Image
    #: The cache key of everything so far (the base image's id, then each step's key).
    key: str
    shell: tuple[str, ...] = DEFAULT_SHELL
    #: ARGs declared in this stage: their values (None: declared without a value).
    args: dict[str, Optional[str]] = field(default_factory=dict)
    #: Whether this stage set CMD (ENTRYPOINT resets an inherited CMD only).
    cmd_set: bool = False
    created: str = ""
    history: list[dict[str, Any]] = field(default_factory=list)

    @property
    def cfg(self) -> ImageConfig:
        return self.image.config

    def with_cfg(self, **changes: Any) -> None:
        cfg = dataclasses.replace(self.cfg, **changes)
        # An image's id is its config's digest: until the builder writes the config at the end,
        # the state's key stands in for it.
        self.image = Image(self.image.kind, self.image.lower, cfg, self.key, source="build")

    def scope(self) -> dict[str, str]:
        """The variables substitution sees: the stage's ARGs, then its ENV over them."""
        out = {k: v for k, v in self.args.items() if v is not None}
        out.update(self.cfg.env)
        return out


class Steps:
    """Runs instructions against a state; ``resolve`` gives the image a COPY --from names."""

    def __init__(
        self,
        ctx: Context,
        build_args: Mapping[str, str],
        resolve: Callable[[str, Instruction], Image],
        say: Callable[[str], None],
        stream: Optional[IO[bytes]],
    ) -> None:
        self.ctx = ctx
        self.build_args = build_args
        self.resolve = resolve
        self.say = say
        self.stream = stream

    def apply(self, st: State, ins: Instruction) -> None:
        handler = getattr(self, "_" + ins.keyword.lower())
        try:
            handler(st, ins)
        except BuildError:
            raise
        except ContextError as e:
            raise ins.error(str(e)) from None
        except (PyrtError, ValueError, TypeError, OSError) as e:
            raise ins.error(str(e)) from e
        if ins.keyword not in ("ARG",):
            # Metadata steps get their time when the image is written (builder.finish), so that
            # a cached build's config, and so its id, is the same.
            layered = ins.keyword in ("RUN", "COPY", "ADD")
            st.history.append(
                {"created": st.created, "created_by": ins.text}
                if layered
                else {"created_by": ins.text, "empty_layer": True}
            )

    # --- metadata ----------------------------------------------------------------------

    def _sub(self, st: State, text: str) -> str:
        try:
            return parser.expand(text, st.scope())
        except ValueError as e:
            raise ValueError(f"substitution: {e}") from None

    def _arg(self, st: State, ins: Instruction) -> None:
        for w in parser.words(ins.args):
            name, eq, default = w.partition("=")
            if not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", name):
                raise ins.error(f"ARG name {name!r} is not a valid name")
            if name in self.build_args:
                st.args[name] = self.build_args[name]
            elif eq:
                st.args[name] = self._sub(st, default)
            else:
                st.args.setdefault(name, None)
        parser.bounded(st.args, "stage's ARGs")

    def _env(self, st: State, ins: Instruction) -> None:
        scope = st.scope()
        env = dict(st.cfg.env)
        for k, v in parser.pairs(ins.args, "ENV"):
            env[k] = parser.expand(v, scope)
        parser.bounded(env, "environment")
        st.with_cfg(env=env)

    def _label(self, st: State, ins: Instruction) -> None:
        scope = st.scope()
        labels = dict(st.cfg.labels)
        for k, v in parser.pairs(ins.args, "LABEL"):
            labels[parser.expand(k, scope)] = parser.expand(v, scope)
        parser.bounded(labels, "labels")
        st.with_cfg(labels=labels)

    def _user(self, st: State, ins: Instruction) -> None:
        user = self._sub(st, ins.args).strip()
        if not user or any(c.isspace() for c in user):
            raise ins.error("USER needs one user name or id ([user][:group])")
        st.with_cfg(user=user)

    def _expose(self, st: State, ins: Instruction) -> None:
        ports = set(st.cfg.exposed_ports)
        for w in self._sub(st, ins.args).split():
            num, _, proto = w.partition("/")
            proto = (proto or "tcp").lower()
            if not num.isdigit() or not 0 < int(num) < 65536 or proto not in ("tcp", "udp", "sctp"):
                raise ins.error(f"EXPOSE: {w!r} is not PORT[/tcp|udp|sctp]")
            ports.add(f"{int(num)}/{proto}")
        st.with_cfg(exposed_ports=sorted(ports))

    def _volume(self, st: State, ins: Instruction) -> None:
        paths = ins.exec_form()
        if paths is None:
            paths = self._sub(st, ins.args).split()
        else:
            paths = [self._sub(st, p) for p in paths]
        if not paths:
            raise ins.error("VOLUME needs at least one path")
        st.with_cfg(volumes=sorted(set(st.cfg.volumes) | set(paths)))

    def _stopsignal(self, st: State, ins: Instruction) -> None:
        sig = self._sub(st, ins.args).strip()
        name = sig.upper()
        ok = (
            (sig.isdigit() and 0 < int(sig) < 65)
            or name in signal.Signals.__members__
            or ("SIG" + name in signal.Signals.__members__)
        )
        if not ok:
            raise ins.error(f"STOPSIGNAL: {sig!r} is not a signal name or number")
        st.with_cfg(stop_signal=sig)

    def _shell(self, st: State, ins: Instruction) -> None:
        form = ins.exec_form()
        if not form:
            raise ins.error('SHELL must be a JSON array, as SHELL ["/bin/sh", "-c"]')
        st.shell = tuple(form)

    def _command(self, st: State, ins: Instruction) -> list[str]:
        form = ins.exec_form()
        if form is not None:
            return form
        if not ins.args.strip():
            raise ins.error(f"{ins.keyword} needs a command")
        return [*st.shell, ins.args]

    def _cmd(self, st: State, ins: Instruction) -> None:
        st.with_cfg(cmd=self._command(st, ins))
        st.cmd_set = True

    def _entrypoint(self, st: State, ins: Instruction) -> None:
        ep = self._command(st, ins)
        st.with_cfg(entrypoint=ep or None, cmd=st.cfg.cmd if st.cmd_set else None)

    def _healthcheck(self, st: State, ins: Instruction) -> None:
        kind, _, rest = ins.args.strip().partition(" ")
        if kind.upper() == "NONE":
            if rest.strip() or ins.flags:
                raise ins.error("HEALTHCHECK NONE takes no arguments")
            st.with_cfg(healthcheck={"Test": ["NONE"]})
            return
        if kind.upper() != "CMD":
            raise ins.error("HEALTHCHECK must be HEALTHCHECK [OPTIONS] CMD command, or NONE")
        hc: dict[str, Any] = {}
        for flag, value in ins.flags.items():
            if flag == "retries":
                if not value.isdigit():
                    raise ins.error(f"--retries={value!r}: must be a whole number")
                hc["Retries"] = int(value)
            elif flag in _HEALTH_FLAGS:
                hc[_HEALTH_FLAGS[flag]] = _duration(value, f"--{flag}")
            else:
                raise ins.error(f"unknown flag --{flag} for HEALTHCHECK")
        form = Instruction(ins.file, ins.line, "CMD", rest, {}, ins.text).exec_form()
        if not rest.strip():
            raise ins.error("HEALTHCHECK CMD needs a command")
        hc = {"Test": ["CMD", *form] if form is not None else ["CMD-SHELL", rest.strip()], **hc}
        st.with_cfg(healthcheck=hc)

    def _workdir(self, st: State, ins: Instruction) -> None:
        path = self._sub(st, ins.args).strip()
        if not path:
            raise ins.error("WORKDIR needs a path")
        full = posixpath.normpath(posixpath.join(st.cfg.workdir or "/", path))
        st.with_cfg(workdir=full)
        if st.image.lower and merged.kind(st.image.lower, full) == "dir":
            return
        # Docker makes the directory (owned by root): a layer of its own.
        k = cache.key(st.key, "WORKDIR", full)
        self._layer(st, ins, k, lambda c: c.put_archive(full, _empty_tar()))

    # --- layers ------------------------------------------------------------------------

    def _run(self, st: State, ins: Instruction) -> None:
        for flag in ins.flags:
            raise ins.error(f"RUN --{flag} is not supported")
        form = ins.exec_form()
        command = form if form is not None else [*st.shell, ins.args]
        if not command or not command[0]:
            raise ins.error("RUN needs a command")
        env = {k: v for k, v in st.args.items() if v is not None and k not in st.cfg.env}
        k = cache.key(st.key, "RUN", command, env, st.cfg.to_dict(), st.shell)
        self._layer(st, ins, k, None, command=command, env=env)

    def _copy(self, st: State, ins: Instruction) -> None:
        self._copy_or_add(st, ins, add=False)

    def _add(self, st: State, ins: Instruction) -> None:
        self._copy_or_add(st, ins, add=True)

    def _copy_or_add(self, st: State, ins: Instruction, add: bool) -> None:
        allowed = {"chown", "chmod"} | ({"from"} if not add else set())
        for flag, value in ins.flags.items():
            if flag not in allowed:
                raise ins.error(f"{ins.keyword} --{flag} is not supported")
            if not value:
                raise ins.error(f"--{flag} needs a value (--{flag}=...)")
        form = ins.exec_form()
        items = (
            [self._sub(st, w) for w in form]
            if form is not None
            else ([self._sub(st, w) for w in parser.words(ins.args)])
        )
        if len(items) < 2:
            raise ins.error(f"{ins.keyword} needs a source and a destination")
        srcs, dest = items[:-1], items[-1]
        for s in srcs:
            if re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*://", s) or s.startswith("git@"):
                raise ins.error(f"{ins.keyword} of a URL ({s}) is not supported")
        full = posixpath.join(st.cfg.workdir or "/", dest)
        as_dir = dest.endswith("/") or dest in (".", "./")
        owner = self._owner(st, ins)
        mode = None
        if "chmod" in ins.flags:
            if not re.match(r"^[0-7]{3,4}$", ins.flags["chmod"]):
                raise ins.error(f"--chmod={ins.flags['chmod']!r}: must be octal, as 0755")
            mode = int(ins.flags["chmod"], 8)
        if "from" in ins.flags:
            self._copy_from(st, ins, srcs, full, as_dir, owner, mode)
            return
        rels = [r for s in srcs for r in self.ctx.sources(s)]
        if len(rels) > 1 and not as_dir:
            raise ins.error(f"{ins.keyword} of several sources needs a destination ending in /")
        if not as_dir and (
            self.ctx.is_dir(rels[0])
            or (st.image.lower and merged.kind(st.image.lower, full) == "dir")
        ):
            # A directory's contents go into the destination; so does a file copied onto an
            # existing directory.
            as_dir = True
        target = full if as_dir else posixpath.dirname(posixpath.normpath(full)) or "/"
        plain: list[Entry] = []
        archives: list[str] = []
        for rel in rels:
            if add and self._is_archive(rel):
                archives.append(rel)
                continue
            if self.ctx.is_dir(rel):
                arc = ""
            else:
                arc = posixpath.basename(rel if as_dir else posixpath.normpath(full))
            plain.extend(self.ctx.entries(rel, arc))
        digest = self.ctx.digest(plain)
        arch_digests = [self.ctx.digest(list(self.ctx.entries(a, "x"))) for a in archives]
        k = cache.key(st.key, ins.keyword, target, digest, arch_digests, owner, mode)

        def put(c: Any) -> None:
            base, missing = _existing(st.image.lower, target)
            if plain or missing:
                with tempfile.TemporaryFile(dir=store.tmp_dir()) as f:
                    with tarfile.open(fileobj=f, mode="w", format=tarfile.PAX_FORMAT) as tf:
                        prefix = _made_dirs(tf, missing, owner)
                        for e in plain:
                            e = dataclasses.replace(e, arc=posixpath.join(prefix, e.arc))
                            self.ctx.add_to(tf, e, owner, None if e.link else mode)
                    f.seek(0)
                    c.put_archive(base, f)
            for a in archives:
                with self.ctx.open(a) as f:
                    c.put_archive(full, f)

        self._layer(st, ins, k, put)

    def _copy_from(
        self,
        st: State,
        ins: Instruction,
        srcs: list[str],
        full: str,
        as_dir: bool,
        owner: tuple[int, int],
        mode: Optional[int],
    ) -> None:
        from pyrt.container.container import Container

        src_img = self.resolve(ins.flags["from"], ins)
        if len(srcs) > 1 and not as_dir:
            raise ins.error("COPY of several sources needs a destination ending in /")
        if not as_dir and st.image.lower and merged.kind(st.image.lower, full) == "dir":
            as_dir = True
        target = full if as_dir else posixpath.dirname(posixpath.normpath(full)) or "/"
        k = cache.key(st.key, "COPY", src_img.id, srcs, target, as_dir, owner, mode,
                      posixpath.basename(posixpath.normpath(full)))  # fmt: skip

        def put(c: Any) -> None:
            src = Container(src_img, ["true"], entrypoint=[])
            try:
                for s in srcs:
                    if re.search(r"[*?\[]", s):
                        raise ins.error(f"COPY --from with a wildcard ({s}) is not supported")
                    data = src.get_archive(posixpath.join("/", s))
                    into = as_dir or _top_is_dir(data)
                    base, missing = _existing(st.image.lower, full if into else target)
                    name = None if into else posixpath.basename(posixpath.normpath(full))
                    c.put_archive(base, _renamed(data, name, owner, mode, missing))
            finally:
                src.remove()

        self._layer(st, ins, k, put)

    def _owner(self, st: State, ins: Instruction) -> tuple[int, int]:
        spec = ins.flags.get("chown")
        if spec is None:
            return (0, 0)
        spec = self._sub(st, spec)
        try:
            ids = st.image.resolve_user(spec) if st.image.lower else _numeric(spec)
        except ValueError as e:
            raise ins.error(f"--chown={spec}: {e}") from None
        if (ids.uid, ids.gid) != (0, 0) and os.geteuid() != 0 and not userns.has_range():
            raise ins.error(
                f"--chown={spec}: a rootless build can only own files as root without a "
                "subordinate id range (/etc/subuid and /etc/subgid)"
            )
        return ids.uid, ids.gid

    def _is_archive(self, rel: str) -> bool:
        if not rel:
            return False
        with self.ctx.open(rel) as f:
            if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
                return False
            head = f.read(512)
        if head[:2] == b"\x1f\x8b" or head[:3] == b"BZh" or head[:6] == b"\xfd7zXZ\x00":
            return True
        return len(head) == 512 and head[257:262] == b"ustar"

    def _layer(
        self,
        st: State,
        ins: Instruction,
        k: str,
        put: Optional[Callable[[Any], None]],
        command: Optional[list[str]] = None,
        env: Optional[dict[str, str]] = None,
    ) -> None:
        """One layer made by ``put`` (files into a made container) or by running ``command``,
        or taken from the cache under ``k``."""
        from pyrt.container.container import Container

        hit = cache.lookup(k)
        if hit is not None:
            self.say("  --> cached")
            st.image = Image("oci", tuple(hit["lower"]), st.cfg, k, source="build")
            st.key, st.created = k, str(hit.get("created") or now())
            return
        img = st.image
        if not img.lower:
            from pyrt.rootfs.snapshot import empty_layer

            img = Image("oci", (empty_layer("scratch"),), st.cfg, None, source="scratch")
        if command is not None:
            c = Container(img, command, entrypoint=[], env=env, network="private")
            try:
                c.start()
                if self.stream is not None:
                    for chunk in c.follow_logs():
                        self.stream.write(chunk)
                        self.stream.flush()
                code = c.wait()
                if code != 0:
                    raise BuildError(
                        f"the command exited with status {code}",
                        ins.file,
                        ins.line,
                        ins.text,
                        output=c.logs(),
                        returncode=code,
                    )
                new = c.commit()
            finally:
                c.remove()
        else:
            assert put is not None
            c = Container(img, ["true"], entrypoint=[])
            try:
                put(c)
                new = c.commit()
            finally:
                c.remove()
        created = now()
        cache.record(k, new.lower, created)
        st.image = Image("oci", new.lower, st.cfg, k, source="build")
        st.key, st.created = k, created


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _duration(text: str, what: str) -> int:
    """A Go duration ("30s", "1m30s", "500ms") in nanoseconds."""
    pos, total = 0, 0.0
    for m in _DURATION.finditer(text):
        if m.start() != pos:
            break
        total += float(m.group(1)) * _UNITS[m.group(2)]
        pos = m.end()
    if pos != len(text) or not text:
        raise ValueError(f"{what}={text!r}: not a duration such as 30s or 1m30s")
    if not math.isfinite(total):
        raise ValueError(f"{what}={text!r}: too long a duration")
    return int(total)


@dataclass(frozen=True)
class _Ids:
    uid: int
    gid: int


def _numeric(spec: str) -> _Ids:
    u, _, g = spec.partition(":")
    if not u.isdigit() or (g and not g.isdigit()):
        raise ValueError("an image with no files has no user names: use numbers")
    return _Ids(int(u), int(g or u))


def _empty_tar() -> bytes:
    return b"\0" * 1024


def _top_is_dir(data: bytes) -> bool:
    import io

    with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tf:
        first = tf.next()
        return first is not None and first.isdir()


def _existing(lowers: tuple[str, ...], path: str) -> tuple[str, list[str]]:
    """The deepest directory of ``path`` the image has, and the names below it still to make."""
    parts = [p for p in posixpath.normpath(path).split("/") if p]
    for i in range(len(parts), 0, -1):
        if not lowers or merged.kind(lowers, "/" + "/".join(parts[:i])) == "dir":
            return "/" + "/".join(parts[:i]), parts[i:]
    return "/", parts


def _made_dirs(tf: tarfile.TarFile, missing: list[str], owner: tuple[int, int]) -> str:
    """Entries for the destination's missing directories, owned as the copied files are (as
    buildah and BuildKit make them); returns their path, the prefix of what follows."""
    prefix = ""
    for part in missing:
        prefix = posixpath.join(prefix, part)
        ti = tarfile.TarInfo(prefix)
        ti.type, ti.mode, ti.mtime = tarfile.DIRTYPE, 0o755, int(time.time())
        ti.uid, ti.gid = owner
        tf.addfile(ti)
    return prefix


def _renamed(
    data: bytes,
    name: Optional[str],
    owner: tuple[int, int],
    mode: Optional[int],
    missing: list[str],
) -> IO[bytes]:
    """The archive ``get_archive`` gave, its top entry renamed to ``name`` (None: its contents
    at the top, for a directory source), under the ``missing`` directories, with the owners and
    mode COPY gives."""
    import io

    src = tarfile.open(fileobj=io.BytesIO(data), mode="r:")  # noqa: SIM115 - closed below
    out = tempfile.TemporaryFile(dir=store.tmp_dir())  # noqa: SIM115 - the caller's to close
    with src, tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tf:
        prefix = _made_dirs(tf, missing, owner)
        members = src.getmembers()
        top = members[0].name.rstrip("/") if members else ""
        top_is_dir = bool(members) and members[0].isdir()
        for m in members:
            rest = m.name[len(top) :].lstrip("/") if m.name.startswith(top) else m.name
            if top_is_dir:
                if not rest:
                    continue
                m.name = rest
            else:
                m.name = name or posixpath.basename(top)
            m.name = posixpath.join(prefix, m.name)
            m.uid, m.gid = owner
            m.uname = m.gname = ""
            if mode is not None and not m.issym():
                m.mode = mode
            tf.addfile(m, src.extractfile(m) if m.isfile() else None)
    out.seek(0)
    return out
