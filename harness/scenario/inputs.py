"""Scenario files and what they name are hostile input: they arrive in pull requests, and CI runs them.

Every file the loader reads is read through ``read_limited``: looked at before it is opened (a FIFO would
block the open, a device never ends, a directory is no file), opened without blocking, and read to at most
its limit plus one byte, so a file that grows meanwhile is caught too. A path the scenario names (a role's
``config`` directory, a ``message: {file: ...}``) must resolve, symlinks followed, inside a trusted root:
the scenario file's own directory tree, or the working directory's tree (the checkout the harness runs in,
which holds both the bundled scenarios and ``compose/``). Directories given on the command line
(``--role ROLE=DIR``) are trusted as typed and never pass through here.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "MAX_CONFIG_BYTES",
    "MAX_CONFIG_FILES",
    "MAX_MESSAGE_BYTES",
    "MAX_SCENARIO_BYTES",
    "MAX_YAML_NODES",
    "InputRefused",
    "Root",
    "config_tree_problem",
    "outside_problem",
    "read_limited",
    "resolve_named",
    "trusted_roots",
]

# A scenario file is a few kilobytes; 1 MiB is far beyond any real one, and what PyYAML (pure Python)
# parses in a couple of seconds.
MAX_SCENARIO_BYTES = 1024 * 1024
# A message file is sent as one SMTP transaction and parsed whole at load time.
MAX_MESSAGE_BYTES = 64 * 1024 * 1024
# Values in one YAML document, counted as composed and again with every alias expanded (a "billion
# laughs" file of a few hundred bytes expands to 10**9); the bundled scenarios have a few hundred.
MAX_YAML_NODES = 100_000
# What a role's config directory may hold: its files are hashed and copied into an image.
MAX_CONFIG_FILES = 1000
MAX_CONFIG_BYTES = 64 * 1024 * 1024

_READ_CHUNK = 1024 * 1024


class InputRefused(Exception):
    """A file the loader will not read. ``problem`` continues a sentence naming the file ("is a FIFO
    ..."); the caller puts it at the right ``file:line:col``."""

    def __init__(self, problem: str) -> None:
        super().__init__(problem)
        self.problem = problem


def size_text(limit: int) -> str:
    return f"{limit // (1024 * 1024)} MiB ({limit} bytes)" if limit >= 1024 * 1024 else f"{limit} bytes"


def _kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISCHR(mode):
        return "a character device"
    if stat.S_ISBLK(mode):
        return "a block device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file"


def _os_problem(exc: OSError, path: Path) -> str:
    if isinstance(exc, FileNotFoundError):
        return f"does not exist (resolved to {path})"
    if isinstance(exc, PermissionError):
        return "cannot be read: permission denied"
    return f"cannot be read: {exc.strerror or exc}"


def read_limited(path: Path, limit: int, what: str) -> bytes:
    """The bytes of the regular file ``path``, at most ``limit`` of them. ``what`` names the kind of file
    in messages ("a scenario file"). InputRefused for anything else; FileNotFoundError is raised as is,
    for callers that word a missing file their own way."""
    try:
        info = os.stat(path)
    except FileNotFoundError:
        raise
    except (OSError, ValueError) as exc:
        raise InputRefused(_os_problem(exc, path) if isinstance(exc, OSError) else "is not a valid path") from None
    if not stat.S_ISREG(info.st_mode):
        raise InputRefused(f"is {_kind(info.st_mode)}, not a regular file: {what} must be a plain file")
    if info.st_size > limit:
        raise InputRefused(f"is {info.st_size} bytes, more than the {size_text(limit)} {what} may have")
    try:
        # O_NONBLOCK: should the path have become a FIFO since the stat, the open must not wait for a writer.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOCTTY", 0) | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise InputRefused(_os_problem(exc, path)) from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise InputRefused(f"is {_kind(info.st_mode)}, not a regular file: {what} must be a plain file")
        chunks: list[bytes] = []
        remaining = limit + 1
        while remaining > 0:
            chunk = os.read(fd, min(remaining, _READ_CHUNK))
            if not chunk:
                break
            chunks.append(chunk)
            remaining -= len(chunk)
    except OSError as exc:
        raise InputRefused(_os_problem(exc, path)) from None
    finally:
        os.close(fd)
    data = b"".join(chunks)
    if len(data) > limit:
        raise InputRefused(f"holds more than the {size_text(limit)} {what} may have")
    return data


@dataclass(frozen=True)
class Root:
    """A directory tree the paths a scenario names may resolve into, and how messages name it."""

    path: Path
    name: str

    def holds(self, path: Path) -> bool:
        return path == self.path or path.is_relative_to(self.path)


def trusted_roots(scenario: Path) -> tuple[Root, ...]:
    """The scenario file's directory tree and the working directory's tree (unless the working directory
    is the file system's root, which would trust everything). Both with symlinks resolved."""
    roots = [Root(scenario.absolute().parent.resolve(), "the scenario's directory tree")]
    try:
        cwd = Path.cwd().resolve()
    except OSError:  # the working directory was removed
        return tuple(roots)
    if cwd != Path(cwd.anchor) and not roots[0].holds(cwd):
        roots.append(Root(cwd, "the working directory"))
    return tuple(roots)


def resolve_named(base: Path, name: str) -> Path:
    """``name`` (as the scenario writes it, relative to ``base``) with every symlink resolved.
    InputRefused for what cannot be a path at all (a NUL byte, a symlink loop)."""
    try:
        return (base / name).resolve()
    except ValueError:
        raise InputRefused("is not a valid path (it contains a NUL character)") from None
    except (RuntimeError, OSError) as exc:  # a symlink loop: RuntimeError before Python 3.13
        raise InputRefused(f"cannot be resolved: {exc}") from None


def outside_problem(resolved: Path, roots: tuple[Root, ...]) -> str | None:
    """Why ``resolved`` may not be used (it is outside every root), or None. Continues a sentence naming
    the path: "config directory '../x' resolves to /x, outside ..."."""
    if any(root.holds(resolved) for root in roots):
        return None
    return f"resolves to {resolved}, outside " + " and ".join(f"{root.name} ({root.path})" for root in roots)


def config_tree_problem(directory: Path, roots: tuple[Root, ...]) -> str | None:
    """What is wrong with the contents of a role's config directory (hashed and copied into an image):
    more than MAX_CONFIG_FILES entries or MAX_CONFIG_BYTES in all, or a symlink leading out of the
    trusted roots. None when it is fine."""
    entries = 0
    total = 0
    for top, dirs, files in os.walk(directory):
        for name in (*dirs, *files):
            entries += 1
            if entries > MAX_CONFIG_FILES:
                return f"holds more than {MAX_CONFIG_FILES} files and directories"
            path = Path(top) / name
            if path.is_symlink():
                try:
                    target = path.resolve()
                except (RuntimeError, OSError):
                    return f"has a symlink {path.relative_to(directory)} that cannot be resolved (a loop)"
                if not any(root.holds(target) for root in roots):
                    return f"has a symlink {path.relative_to(directory)} to {target}, outside " + \
                        " and ".join(f"{root.name} ({root.path})" for root in roots)
        for name in files:
            try:
                info = os.stat(Path(top) / name)
            except OSError:
                continue
            if stat.S_ISREG(info.st_mode):
                total += info.st_size
                if total > MAX_CONFIG_BYTES:
                    return f"holds more than {size_text(MAX_CONFIG_BYTES)} of files"
    return None
