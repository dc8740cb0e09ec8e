"""The part of an image's configuration that decides how its containers run."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Optional


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
    def from_oci(cls, cfg: Mapping[str, Any]) -> ImageConfig:
        """From the ``config`` object of an OCI image configuration (or Docker's)."""
        env: dict[str, str] = {}
        for kv in cfg.get("Env") or []:
            k, _, v = str(kv).partition("=")
            env[k] = v
        return cls(
            entrypoint=list(cfg["Entrypoint"]) if cfg.get("Entrypoint") else None,
            cmd=list(cfg["Cmd"]) if cfg.get("Cmd") else None,
            env=env,
            workdir=cfg.get("WorkingDir") or None,
            user=cfg.get("User") or None,
            exposed_ports=_keys(cfg.get("ExposedPorts")),
            labels=dict(cfg.get("Labels") or {}),
            healthcheck=dict(hc) if isinstance(hc := cfg.get("Healthcheck"), Mapping) else None,
            stop_signal=str(cfg["StopSignal"]) if cfg.get("StopSignal") else None,
            volumes=_keys(cfg.get("Volumes")),
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


def _keys(obj: Any) -> list[str]:
    """The names of a JSON object whose values do not matter (ExposedPorts, Volumes)."""
    return sorted(str(k) for k in obj) if isinstance(obj, Mapping) else []


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
