"""The exceptions pyrt raises. Everything derives from :class:`PyrtError`."""

from __future__ import annotations

import errno as _errno
from typing import Any, Optional, Union


class PyrtError(Exception):
    """Base of everything pyrt raises."""

    def __reduce__(self) -> tuple[Any, ...]:
        # Pickled as what it is, attributes and all: the default calls the class with the
        # message alone, which the subclasses that take their fields (TimeoutExpired,
        # OutputLimitExceeded, BuildError) refuse, so an error raised in another process
        # (multiprocessing, a ProcessPoolExecutor) came back as a TypeError.
        return (_restored, (type(self), self.args, self.__dict__))


def _restored(cls: type[PyrtError], args: tuple[Any, ...], state: dict[str, Any]) -> PyrtError:
    e = cls.__new__(cls, *args)
    e.args = args
    e.__dict__.update(state)
    return e


class ImageError(PyrtError):
    """A bad or unreadable image."""


class ImageNotFound(ImageError):
    """No image of that name or path."""


class UnsafeImageError(ImageError):
    """A layer tried to write outside its root; nothing was written outside."""


class InvalidOption(PyrtError, ValueError):
    """A value pyrt was given is not one it can use (also a ``ValueError``); the message names
    the option and the value."""


class PathNotFound(PyrtError, FileNotFoundError):
    """A path inside a container does not exist (also a ``FileNotFoundError``)."""

    def __init__(self, path: str) -> None:
        super().__init__(2, f"no such file or directory in the container: {path}")
        self.filename = path

    def __reduce__(self) -> tuple[Any, ...]:
        return (PathNotFound, (self.filename,))

    def __str__(self) -> str:
        return f"no such file or directory in the container: {self.filename}"


class SpawnError(PyrtError):
    """The container could not start.

    ``stage`` names the setup step that failed ("mount", "cwd", "exec", ...; "state" for the
    container's own directory and files on the host, on a full or read-only disk) and
    ``errno`` the kernel's error number; the message names the path or value at fault.
    """

    def __init__(self, message: str, *, stage: str = "spawn", errno: int = 0) -> None:
        super().__init__(message)
        self.stage = stage
        self.errno = errno

    @property
    def strerror(self) -> str:
        return _errno.errorcode.get(self.errno, str(self.errno))


class InvalidArgument(SpawnError, ValueError):
    """A command's argument or environment the kernel cannot take (a NUL byte): refused before
    anything starts (also a ``ValueError``)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, stage="args", errno=22)


class ContainerError(PyrtError):
    """Raised by ``check=True`` when the command exits with a non-zero status, and by the
    readiness waits when the container exits while they wait."""

    def __init__(
        self,
        returncode: int,
        cmd: list[str],
        stdout: Union[bytes, str, None] = None,
        stderr: Union[bytes, str, None] = None,
        *,
        waiting_for: Optional[str] = None,
    ) -> None:
        super().__init__(returncode, cmd, stdout, stderr)
        self.returncode = returncode
        self.cmd = cmd
        self.stdout = stdout
        self.stderr = stderr
        #: Set when a readiness wait saw the container exit: what it waited for.
        self.waiting_for = waiting_for

    def __str__(self) -> str:
        if self.returncode < 0:
            said = f"command {self.cmd!r} was killed by signal {-self.returncode}"
        else:
            said = f"command {self.cmd!r} exited with status {self.returncode}"
        return said + (f" while waiting for {self.waiting_for}" if self.waiting_for else "")


class TimeoutExpired(PyrtError, TimeoutError):
    """The time ran out; for ``run`` the whole container was killed."""

    def __init__(
        self,
        cmd: list[str],
        timeout: float,
        stdout: Optional[bytes] = None,
        stderr: Optional[bytes] = None,
        *,
        waiting_for: Optional[str] = None,
    ) -> None:
        super().__init__(
            f"command {cmd!r} timed out after {timeout} seconds"
            if waiting_for is None
            else f"waited {timeout} seconds for {waiting_for} in vain (the container, "
            f"command {cmd!r}, keeps running)"
        )
        self.cmd = cmd
        self.timeout = timeout
        self.stdout = stdout
        self.stderr = stderr


class OutputLimitExceeded(PyrtError):
    """A captured output (``stream``: "stdout" or "stderr") of ``run`` or ``exec`` had more than
    the container's ``output_limit`` bytes: the process was killed (for ``run``, the whole
    container), and ``stdout``/``stderr`` hold what was kept, at most ``limit`` bytes each."""

    def __init__(
        self, cmd: list[str], stream: str, limit: int, stdout: bytes, stderr: bytes
    ) -> None:
        super().__init__(
            f"command {cmd!r}: its {stream} passed output_limit={limit} bytes, and it was "
            f"killed (give the container a larger output_limit, or None, or send {stream} to a "
            "file)"
        )
        self.cmd = cmd
        self.stream = stream
        self.limit = limit
        self.stdout = stdout
        self.stderr = stderr


class BuildError(PyrtError):
    """A build failed: ``file`` and ``line`` say where, ``instruction`` is the line as written;
    for a failing RUN, ``output`` is what it printed and ``returncode`` its status."""

    def __init__(
        self,
        message: str,
        file: str,
        line: int = 0,
        instruction: str = "",
        *,
        output: Optional[bytes] = None,
        returncode: Optional[int] = None,
    ) -> None:
        where = f"{file}:{line}" if line else file
        text = f"{where}: {instruction}: {message}" if instruction else f"{where}: {message}"
        if output:
            tail = output[-4000:].decode(errors="replace").rstrip()
            text += "\n" + tail
        super().__init__(text)
        self.file, self.line, self.instruction = file, line, instruction
        self.output, self.returncode = output, returncode


def os_message(e: OSError) -> str:
    """An OSError's cause and path ("No space left on device: /run/pyrt/..."), for the typed
    error that carries it."""
    return f"{e.strerror or e}: {e.filename}" if e.filename else str(e.strerror or e)


def state_error(e: OSError) -> SpawnError:
    """An OSError of the host's side of a start or reset (the container's directory, log or
    state file on a full or read-only disk) as what it is: the container could not start.
    Stage "state"; the message names the path."""
    return SpawnError(os_message(e), stage="state", errno=e.errno or 0)
