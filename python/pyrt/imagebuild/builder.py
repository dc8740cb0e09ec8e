"""``pyrt.build``: a Containerfile's stages built in order of need, each instruction by
``steps``, the result written as one image config over the layers the steps left.

Only the stages the target needs are built (its FROM and COPY --from chain), each once. The
whole build holds the store's loading lock shared, so `pyrt gc` cannot collect a layer a later
step is about to stack on.
"""

from __future__ import annotations

import os
import stat
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import IO, Optional, Union

from pyrt.config import checks
from pyrt.errors import BuildError, ImageNotFound, PyrtError
from pyrt.image import Image, ImageConfig, store
from pyrt.image.image import overlay_supported
from pyrt.imagebuild import cache, ignore, parser
from pyrt.imagebuild.context import Context
from pyrt.imagebuild.parser import Instruction
from pyrt.imagebuild.steps import State, Steps, now
from pyrt.oci.spec import DEFAULT_PATH

PathLike = Union[str, "os.PathLike[str]"]
#: A Containerfile larger than this is refused (they are a few kilobytes).
MAX_FILE = 1 << 20


@dataclass
class Stage:
    index: int
    name: Optional[str]
    base: Instruction
    instructions: list[Instruction] = field(default_factory=list)


def build(
    context: PathLike,
    file: Optional[PathLike] = None,
    tag: Optional[str] = None,
    build_args: Optional[Mapping[str, str]] = None,
    target: Optional[str] = None,
    pull: bool = False,
    *,
    progress: Optional[bool] = None,
) -> Image:
    """Builds the Containerfile ``file`` (default: ``context/Containerfile``, else
    ``context/Dockerfile``) with ``context`` as the directory COPY and ADD read from; tags the
    image ``tag`` when given. ``target`` stops at that stage; ``pull`` pulls FROM images from
    their registry even when the store has them. Progress goes to stderr on a terminal."""
    ctx_dir = os.path.abspath(checks.host_path(context, "context"))
    if not os.path.isdir(ctx_dir):
        raise PyrtError(f"build context {ctx_dir}: not a directory")
    if tag is not None:
        checks.text(tag, "tag")
    if target is not None:
        checks.text(target, "target")
    if not isinstance(pull, bool):
        raise TypeError(f"pull must be True or False, not {type(pull).__name__}")
    args = _build_args(build_args)
    path = _containerfile(ctx_dir, file)
    shown = os.path.relpath(path) if not os.path.relpath(path).startswith("..") else path
    text = _read(path)
    stages, global_args = _stages(parser.parse(text, shown), shown)
    want = _pick(stages, target, shown)
    if not overlay_supported():
        raise PyrtError("building needs overlayfs (the kernel has none, or PYRT_NO_OVERLAY=1)")
    show = sys.stderr.isatty() if progress is None else bool(progress)
    ig = ignore.Ignore(ignore.parse(_ignore_text(ctx_dir, path)))
    ctx = Context(ctx_dir, ig)
    try:
        with store.loading():
            b = _Builder(stages, global_args, args, ctx, pull, show)
            st = b.stage(want)
            img = b.finish(st, stages[want])
    finally:
        ctx.close()
    if tag is not None:
        img.tag(tag)
    return img


def _build_args(value: object) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise TypeError(
            f"build_args must be a mapping of names to strings, not {type(value).__name__}"
        )
    out = {}
    for k, v in value.items():
        if not isinstance(k, str) or not isinstance(v, str):
            raise TypeError(f"build_args: {k!r}={v!r}: names and values must be strings")
        if not k or "=" in k or "\0" in k or "\0" in v:
            raise ValueError(f"build_args: {k!r} is not a valid argument name")
        out[k] = v
    return out


def _containerfile(ctx_dir: str, file: Optional[PathLike]) -> str:
    if file is not None:
        given = checks.host_path(file, "file")
        p = os.path.abspath(given)
        if not os.path.isfile(p) and not os.path.isabs(given):
            # Relative to the current directory (docker -f's rule), else to the context.
            p = os.path.join(ctx_dir, given)
        if not os.path.isfile(p):
            raise PyrtError(f"file={given}: no such Containerfile (nor in {ctx_dir})")
        return p
    for name in ("Containerfile", "Dockerfile"):
        p = os.path.join(ctx_dir, name)
        if os.path.isfile(p):
            return p
    raise PyrtError(f"{ctx_dir}: has no Containerfile or Dockerfile (give file=)")


def _read_bytes(path: str) -> bytes:
    """At most MAX_FILE + 1 bytes of the regular file ``path``: opened non-blocking and
    refused when it is anything else (a FIFO in a checked-out context would wait forever
    for a writer, a device never end)."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise BuildError("not a regular file", path)
        return f.read(MAX_FILE + 1)


def _read(path: str) -> str:
    try:
        raw = _read_bytes(path)
    except OSError as e:
        raise BuildError(f"cannot read: {e.strerror or e}", path) from None
    if len(raw) > MAX_FILE:
        raise BuildError(f"larger than {MAX_FILE} bytes", path)
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise BuildError(f"not UTF-8 text ({e})", path) from None


def _ignore_text(ctx_dir: str, path: str) -> str:
    # BuildKit's rule: "<file>.dockerignore" beside the Containerfile wins over the context's.
    for p in (path + ".dockerignore", os.path.join(ctx_dir, ".dockerignore")):
        try:
            return _read_bytes(p)[:MAX_FILE].decode(errors="replace")
        except OSError:
            continue
    return ""


def _stages(instrs: list[Instruction], file: str) -> tuple[list[Stage], list[Instruction]]:
    global_args: list[Instruction] = []
    stages: list[Stage] = []
    for ins in instrs:
        if ins.keyword == "FROM":
            ws = ins.args.split()
            name = None
            if len(ws) == 3 and ws[1].upper() == "AS":
                name = ws[2].lower()
            elif len(ws) != 1:
                raise ins.error("FROM takes an image and optionally AS name")
            for flag, value in ins.flags.items():
                if flag != "platform":
                    raise ins.error(f"FROM --{flag} is not supported")
                _check_platform(ins, value)
            if name is not None and any(s.name == name for s in stages):
                raise ins.error(f"a stage named {name!r} is defined twice")
            stages.append(Stage(len(stages), name, ins))
        elif not stages:
            if ins.keyword != "ARG":
                raise ins.error("only ARG may come before the first FROM")
            global_args.append(ins)
        else:
            stages[-1].instructions.append(ins)
    if not stages:
        raise BuildError("has no FROM instruction", file)
    return stages, global_args


def _check_platform(ins: Instruction, value: str) -> None:
    from pyrt.image.oci import host_platform

    arch, variant = host_platform()
    here = {f"linux/{arch}", f"linux/{arch}/{variant}" if variant else f"linux/{arch}"}
    if "$" not in value and value not in here:
        raise ins.error(f"--platform={value}: only this machine's platform ({sorted(here)[0]})")


def _pick(stages: list[Stage], target: Optional[str], file: str) -> int:
    if target is None:
        return len(stages) - 1
    for s in stages:
        if s.name == target.lower():
            return s.index
    raise BuildError(f"target stage {target!r} is not defined", file)


class _Builder:
    def __init__(
        self,
        stages: list[Stage],
        global_args: list[Instruction],
        args: dict[str, str],
        ctx: Context,
        pull: bool,
        show: bool,
    ) -> None:
        self.stages = stages
        self.ctx_dir = ctx.path
        self.pull = pull
        self.show = show
        self.done: dict[int, State] = {}
        self.building: set[int] = set()
        self.images: dict[str, Image] = {}
        # Global ARGs: seen by FROM lines, and by stages that declare them again.
        self.globals: dict[str, Optional[str]] = {}
        scratch = State(Image("oci", (), ImageConfig(), "scratch"), "global")
        stream: Optional[IO[bytes]] = sys.stderr.buffer if show else None
        self.steps = Steps(ctx, args, self._source_image, self._say, stream)
        for ins in global_args:
            self.steps.apply(scratch, ins)
        self.globals = dict(scratch.args)

    def _say(self, text: str) -> None:
        if self.show:
            print(text, file=sys.stderr, flush=True)

    def stage(self, index: int) -> State:
        if index in self.done:
            return self.done[index]
        if index in self.building:
            raise self.stages[index].base.error("stages refer to each other in a circle")
        self.building.add(index)
        s = self.stages[index]
        st = self._from(s)
        for ins in s.instructions:
            self._say(f"[{s.name or s.index}] {ins.text}")
            if ins.keyword == "ARG":
                self._declare(st, ins)
                continue
            self.steps.apply(st, ins)
        self.done[index] = st
        return st

    def _declare(self, st: State, ins: Instruction) -> None:
        # A stage's ARG without a default takes the global one of that name.
        for w in parser.words(ins.args):
            name, eq, _ = w.partition("=")
            if not eq and self.globals.get(name) is not None:
                st.args.setdefault(name, self.globals[name])
        self.steps.apply(st, ins)

    def _from(self, s: Stage) -> State:
        ins = s.base
        env = {k: v for k, v in self.globals.items() if v is not None}
        try:
            ref = parser.expand(ins.args.split()[0], env)
        except ValueError as e:
            raise ins.error(str(e)) from None
        earlier = self._stage_named(ref, s.index)
        if earlier is not None:
            prev = self.stage(earlier)
            self._say(f"[{s.name or s.index}] {ins.text}")
            return State(prev.image, prev.key, prev.shell, {}, False, prev.created,
                         list(prev.history))  # fmt: skip
        self._say(f"[{s.name or s.index}] {ins.text}")
        if ref == "scratch":
            st = State(Image("oci", (), ImageConfig(), "scratch"), cache.key("scratch"))
        else:
            img = self._image(ref, ins)
            st = State(img, cache.key("FROM", img.id))
        img = st.image
        if "PATH" not in img.config.env:
            # As buildah and BuildKit do: a base without PATH (scratch too) gets the usual one.
            st.with_cfg(env={"PATH": DEFAULT_PATH, **img.config.env})
        return st

    def _stage_named(self, ref: str, before: int) -> Optional[int]:
        for st in self.stages[:before]:
            if st.name == ref.lower() or (ref.isdigit() and int(ref) == st.index):
                return st.index
        return None

    def _source_image(self, ref: str, ins: Instruction) -> Image:
        """The image COPY --from names: an earlier stage, or an image."""
        idx = self._stage_named(ref, len(self.stages))
        if idx is not None:
            if idx >= self._index_of(ins):
                raise ins.error(f"--from={ref}: a stage can only copy from an earlier one")
            return self.stage(idx).image
        return self._image(ref, ins)

    def _index_of(self, ins: Instruction) -> int:
        for s in self.stages:
            if ins in s.instructions:
                return s.index
        return len(self.stages)

    def _image(self, ref: str, ins: Instruction) -> Image:
        if ref in self.images:
            return self.images[ref]
        try:
            img = self._find(ref)
        except PyrtError as e:
            raise ins.error(str(e)) from None
        self.images[ref] = img
        return img

    def _find(self, ref: str) -> Image:
        from pyrt.image.registry import parse_reference

        # A path is taken relative to the current directory, else to the context.
        local = ref if os.path.exists(ref) else None
        in_ctx = os.path.join(self.ctx_dir, ref)
        if local is None and not os.path.isabs(ref) and os.path.exists(in_ctx):
            local = in_ctx
        if self.pull and local is None:
            return _pull(ref)
        try:
            return Image.get(ref)
        except ImageNotFound:
            pass
        if local is not None:
            return Image.load(local)
        parse_reference(ref)  # a clear error for a name that is no reference
        return _pull(ref)

    def finish(self, st: State, stage: Stage) -> Image:
        from pyrt.rootfs.snapshot import configured

        k = cache.key(st.key, "config", st.cfg.to_dict(), [h["created_by"] for h in st.history])
        hit = cache.lookup(k)
        created = str(hit["created"]) if hit else st.created or now()
        if hit is None:
            cache.record(k, st.image.lower, created)
        history = [{"created": created, **h} if "created" not in h else h for h in st.history]
        what = stage.base.file
        try:
            return configured(st.image, st.cfg, history, created, f"build of {what}")
        except PyrtError as e:
            raise BuildError(str(e), what) from None


def _pull(ref: str) -> Image:
    from pyrt.image.registry import loopback, parse_reference

    return Image.pull(ref, insecure=loopback(parse_reference(ref).registry))
