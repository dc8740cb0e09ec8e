"""The part of an image's configuration that decides how its containers run."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Optional

from pyrt.errors import ImageError


@dataclass(frozen=True)
class ImageConfig:
    entrypoint: Optional[list[str]] = None
    cmd: Optional[list[str]] = None
    env: dict[str, str] = field(default_factory=dict)
    workdir: Optional[str] = None
    user: Optional[str] = None
    exposed_ports: list[str] = field(default_factory=list)
    labels: dict[str, str] = field(default_factory=dict)
    #: Docker's ``Healthcheck`` object as the image has it (Test, Interval, Timeout,
    #: StartPeriod in nanoseconds, Retries); read by ``pyrt.Healthcheck.from_image``.
    healthcheck: Optional[dict[str, Any]] = None
    #: The signal that stops the container ("SIGTERM", "9"); kept through commit and build.
    stop_signal: Optional[str] = None
    volumes: list[str] = field(default_factory=list)

    @classmethod
    def from_oci(cls, cfg: object, what: str = "image") -> ImageConfig:
        """From the ``config`` object of an OCI image configuration (or Docker's). A field of
        the wrong shape is the image's fault, and an ImageError naming ``what`` and the field
        (the spec's types: a list of strings, an object, a string), not a TypeError from
        whoever reads it later."""
        if cfg is None:
            cfg = {}
        if not isinstance(cfg, Mapping):
            raise ImageError(f"{what}: its config is not a JSON object")
        env: dict[str, str] = {}
        for kv in _strings(cfg, "Env", what) or []:
            k, _, v = kv.partition("=")
            if not k or "\0" in kv:
                raise ImageError(f"{what}: config.Env: {kv!r} is not NAME=value")
            env[k] = v
        hc = cfg.get("Healthcheck")
        return cls(
            entrypoint=_strings(cfg, "Entrypoint", what) or None,
            cmd=_strings(cfg, "Cmd", what) or None,
            env=env,
            workdir=_string(cfg, "WorkingDir", what),
            user=_string(cfg, "User", what),
            exposed_ports=_keys(cfg, "ExposedPorts", what),
            labels={
                k: _string(cfg["Labels"], k, what, "Labels") or ""
                for k in _keys(cfg, "Labels", what)
            },
            healthcheck=dict(hc) if isinstance(hc, Mapping) else None,
            stop_signal=_string(cfg, "StopSignal", what),
            volumes=_keys(cfg, "Volumes", what),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "Entrypoint": self.entrypoint,
            "Cmd": self.cmd,
            "Env": [f"{k}={v}" for k, v in self.env.items()],
            "WorkingDir": self.workdir or "",
            "User": self.user or "",
            "ExposedPorts": {p: {} for p in self.exposed_ports},
            "Labels": self.labels,
            **({"Healthcheck": self.healthcheck} if self.healthcheck is not None else {}),
            **({"StopSignal": self.stop_signal} if self.stop_signal else {}),
            **({"Volumes": {v: {} for v in self.volumes}} if self.volumes else {}),
        }


def _strings(cfg: Mapping[str, Any], key: str, what: str) -> Optional[list[str]]:
    """A field that is a list of strings (or null)."""
    v = cfg.get(key)
    if v is None:
        return None
    if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
        raise ImageError(f"{what}: config.{key} must be a list of strings, not {_shown(v)}")
    return list(v)


def _string(cfg: Mapping[str, Any], key: str, what: str, within: str = "") -> Optional[str]:
    """A field that is a string (or null); an empty one is None."""
    v = cfg.get(key)
    if v is not None and not isinstance(v, str):
        field = f"{within}.{key}" if within else key
        raise ImageError(f"{what}: config.{field} must be a string, not {_shown(v)}")
    return v or None


def _keys(cfg: Mapping[str, Any], key: str, what: str) -> list[str]:
    """The names of a field that is a JSON object (or null): ExposedPorts, Volumes, Labels."""
    v = cfg.get(key)
    if v is None:
        return []
    if not isinstance(v, Mapping):
        raise ImageError(f"{what}: config.{key} must be an object, not {_shown(v)}")
    return sorted(str(k) for k in v)


def _shown(v: object) -> str:
    return f"{type(v).__name__} {repr(v)[:40]}"


def command_for(
    cfg: ImageConfig,
    command: Optional[list[str]],
    entrypoint: Optional[list[str]],
) -> list[str]:
    """Docker's rule: a given command replaces Cmd and keeps Entrypoint; a given entrypoint
    replaces Entrypoint (and then the image's Cmd is dropped unless a command is given)."""
    if entrypoint is not None:
        ep = list(entrypoint)
        cmd = list(command) if command is not None else []
    else:
        ep = list(cfg.entrypoint or [])
        cmd = list(command) if command is not None else list(cfg.cmd or [])
    return ep + cmd
