"""Images with no registry: a base image made by debootstrap when it cannot be pulled, and images
rebuilt only when their build context changed (a content hash in the tag).

Inside ``ImageStore.parallel()`` the images that are missing build side by side: ``image()`` and
``role_image()`` return their tag at once (it is a content hash, known before the build), the MTA-level
images (dns, postfix, exim, opensmtpd; capture for the tests: each an apt-get install on the base image) build at
most ``jobs`` at a time, and a role image builds as soon as its MTA image is there. Leaving the block
waits for every build and raises the first failure. Outside the block every call builds before it
returns, as it always did."""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import shutil
import tarfile
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker
import requests
import urllib3
from docker.errors import APIError, BuildError, DockerException, ImageNotFound

from harness.errors import ImageBuildError
from harness.report.progress import Progress
from harness.topology.engine import BUILD_STALL_S, PULL_TIMEOUT_S, bounded
from harness.topology.hostcmd import run_checked

DEFAULT_BASE_IMAGE = "debian:bookworm-slim"
DEBOOTSTRAP_IMAGE = "mailflow-harness/debian:bookworm"
DEBIAN_MIRROR = "http://deb.debian.org/debian"
IMAGE_PREFIX = "mailflow-harness"
HASH_LABEL = "mailflow-harness.context-hash"
# How many MTA-level images build at once inside ImageStore.parallel() (each is mostly apt-get: network
# and dpkg, one core each); MAILFLOW_BUILD_JOBS overrides it.
BUILD_JOBS_ENV = "MAILFLOW_BUILD_JOBS"
# Worker threads of a parallel block: role images wait in theirs for their MTA image, so more threads
# than builds at once. Dependencies are always submitted before what needs them and the pool hands out
# work in order, so a waiting thread never waits for work that has no thread.
_POOL_THREADS = 16


def default_build_jobs() -> int:
    """2 x cores + 1, between 2 and 6: 5 on 2 cores, where all five MTA-level images at once took
    48-60 s cold against 106-181 s one after the other; with 4 at once the fifth (often capture, the
    longest) waited for a slot: 51-94 s; 3 at once: 66 s (compose/README.md)."""
    text = os.environ.get(BUILD_JOBS_ENV, "").strip()
    if text:
        try:
            return max(1, int(text))
        except ValueError:
            raise ImageBuildError(f"{BUILD_JOBS_ENV}={text!r} is not a number of builds") from None
    return max(2, min(6, 2 * (os.cpu_count() or 1) + 1))


class _DependencyFailed(ImageBuildError):
    """A role image not built because its MTA image failed (that failure is the one reported)."""


def role_dockerfile(config_target: str) -> str:
    """The image a role runs: the MTA's image with the role's configuration directory copied over its own."""
    return f"ARG MTA_IMAGE\nFROM ${{MTA_IMAGE}}\nCOPY . {config_target}\n"


@dataclass(frozen=True)
class BuildContext:
    """Files (relative path -> absolute path) plus an optional generated Dockerfile."""

    files: tuple[tuple[str, Path], ...]
    dockerfile: str | None = None
    generated: tuple[tuple[str, bytes], ...] = ()

    @classmethod
    def from_dir(cls, root: Path, *, top_level_only: bool = False, dockerfile: str | None = None,
                 generated: Mapping[str, bytes] | None = None) -> BuildContext:
        """``top_level_only``: an MTA image's context is the files directly in its directory; its
        subdirectories are role configurations, which must not make the MTA image rebuild.
        ``generated``: files written by the harness, replacing or adding to the directory's."""
        generated = dict(generated or {})
        files: list[tuple[str, Path]] = []
        for path in sorted(root.rglob("*") if not top_level_only else root.iterdir()):
            rel = path.relative_to(root)
            if not path.is_file() or "__pycache__" in rel.parts or rel.as_posix() in generated:
                continue
            files.append((rel.as_posix(), path))
        return cls(tuple(files), dockerfile, tuple(sorted(generated.items())))

    def digest(self, *extra: str) -> str:
        h = hashlib.sha256()
        for rel, path in self.files:
            h.update(rel.encode() + b"\0")
            h.update(oct(path.stat().st_mode & 0o777).encode() + b"\0")
            h.update(path.read_bytes() + b"\0")
        if self.dockerfile is not None:
            h.update(b"Dockerfile\0" + self.dockerfile.encode())
        for rel, data in self.generated:
            h.update(rel.encode() + b"\0" + data + b"\0")
        for item in extra:
            h.update(b"\0" + item.encode())
        return h.hexdigest()[:16]

    def tar(self) -> io.BytesIO:
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tar:
            for rel, path in self.files:
                tar.add(str(path), arcname=rel, recursive=False)
            extra = list(self.generated)
            if self.dockerfile is not None:
                extra.append(("Dockerfile", self.dockerfile.encode()))
            for rel, data in extra:
                info = tarfile.TarInfo(rel)
                info.size = len(data)
                info.mode = 0o644
                info.mtime = int(time.time())
                tar.addfile(info, io.BytesIO(data))
        buf.seek(0)
        return buf


class ImageStore:
    """Builds and caches the harness's images on one engine."""

    def __init__(self, client: docker.DockerClient, progress: Progress, compose_dir: Path,
                 base_image: str | None = None, *, jobs: int | None = None) -> None:
        self._client = client
        self._progress = progress
        self._compose = compose_dir
        self._requested_base = base_image or os.environ.get("MAILFLOW_BASE_IMAGE") or DEFAULT_BASE_IMAGE
        self._base: str | None = None
        self._built: dict[str, str] = {}
        self._jobs = jobs if jobs is not None else default_build_jobs()
        self._lock = threading.Lock()  # _built, _pending, _pool
        self._say_lock = threading.Lock()  # one progress line at a time
        self._pool: ThreadPoolExecutor | None = None
        self._pending: dict[str, Future[None]] = {}  # tag -> its build, inside parallel()
        self._heavy = threading.BoundedSemaphore(self._jobs)
        self._abort = threading.Event()
        self._batch_started = 0.0

    # -- building side by side --------------------------------------------------------------------
    @contextlib.contextmanager
    def parallel(self) -> Iterator[None]:
        """Within the block, missing images build side by side (see the module docstring); their tags
        must not be used to start containers before the block is left. Leaving waits for every build
        and raises the first failure (naming the others that failed too). An exception inside the block
        cancels what has not started and stops following what has. Nested blocks join the outer one."""
        with self._lock:
            if self._pool is not None:
                nested = True
            else:
                nested = False
                self._pool = ThreadPoolExecutor(max_workers=_POOL_THREADS, thread_name_prefix="image-build")
                self._pending = {}
                self._abort.clear()
                self._batch_started = 0.0
        if nested:
            yield
            return
        completed = False
        try:
            yield
            completed = True
        finally:
            with self._lock:
                pool, pending = self._pool, self._pending
                self._pool, self._pending = None, {}
            assert pool is not None
            if not completed:
                self._abort.set()
            pool.shutdown(wait=True, cancel_futures=not completed)
            # A tag whose build did not end well is not remembered as built: asking again builds again.
            unbuilt = {tag for tag, future in pending.items() if future.cancelled() or future.exception()}
            with self._lock:
                for key in [key for key, tag in self._built.items() if tag in unbuilt]:
                    del self._built[key]
        self._raise_failures(pending)
        if pending:
            self._say(f"images: {len(pending)} built in {time.monotonic() - self._batch_started:.1f}s")

    def _raise_failures(self, pending: Mapping[str, Future[None]]) -> None:
        failed: list[tuple[str, BaseException]] = []
        for tag, future in pending.items():
            exc = future.exception()
            if exc is not None and not isinstance(exc, _DependencyFailed):
                failed.append((tag, exc))
        if not failed:
            return
        first_tag, first = failed[0]
        others = [tag for tag, _ in failed[1:]]
        also = f"\n(also failed: {', '.join(others)})" if others else ""
        if isinstance(first, ImageBuildError):
            raise ImageBuildError(first.message + also) from first
        raise ImageBuildError(f"building {first_tag} failed: {type(first).__name__}: {first}{also}") from first

    def _say(self, message: str) -> None:
        with self._say_lock:
            self._progress.line(message)

    # -- base image ---------------------------------------------------------------------------------
    def base_image(self) -> str:
        if self._base is None:
            self._base = self._resolve_base()
        return self._base

    def _has(self, ref: str) -> bool:
        try:
            self._client.images.get(ref)
            return True
        except ImageNotFound:
            return False

    def _resolve_base(self) -> str:
        wanted = self._requested_base
        if self._has(wanted):
            return wanted
        # Made by an earlier run: no registry round trip on every run of a machine without one.
        if wanted == DEFAULT_BASE_IMAGE and self._has(DEBOOTSTRAP_IMAGE):
            return DEBOOTSTRAP_IMAGE
        try:
            with self._progress.task(f"pulling base image {wanted}"):
                bounded(lambda: self._client.images.pull(wanted), PULL_TIMEOUT_S, f"pulling {wanted}")
            return wanted
        except DockerException as exc:
            reason = _reason(exc)
            if wanted != DEFAULT_BASE_IMAGE:
                raise ImageBuildError(
                    f"base image {wanted} is not available locally and cannot be pulled: {reason}") from exc
            self._progress.line(f"base image {wanted} cannot be pulled ({reason}): making an equivalent one")
        self._debootstrap()
        return DEBOOTSTRAP_IMAGE

    def _debootstrap(self) -> None:
        if shutil.which("debootstrap") is None:
            if os.geteuid() != 0:
                raise ImageBuildError(
                    f"base image {DEFAULT_BASE_IMAGE} cannot be pulled and debootstrap is not installed: "
                    "install debootstrap (as root) or make the image available"
                )
            with self._progress.task("installing debootstrap with apt-get"):
                run_checked(["apt-get", "install", "-y", "-qq", "debootstrap"], ImageBuildError)
        with (self._progress.task(f"making {DEBOOTSTRAP_IMAGE} with debootstrap + docker import (about 45 s)"),
              tempfile.TemporaryDirectory(prefix="mailflow-rootfs-") as tmp):
            root = Path(tmp) / "rootfs"
            run_checked(["debootstrap", "--variant=minbase", "bookworm", str(root), DEBIAN_MIRROR], ImageBuildError)
            archive = Path(tmp) / "rootfs.tar"
            run_checked(["tar", "-C", str(root), "-cf", str(archive), "."], ImageBuildError)
            repo, tag = DEBOOTSTRAP_IMAGE.split(":")
            try:
                bounded(lambda: self._client.api.import_image_from_file(str(archive), repository=repo, tag=tag),
                        PULL_TIMEOUT_S, f"docker import of {DEBOOTSTRAP_IMAGE}")
            except DockerException as exc:
                raise ImageBuildError(f"docker import of the debootstrap root file system failed: {exc}") from exc

    # -- images from compose/ ---------------------------------------------------------------------
    def image(self, name: str) -> str:
        """The image built from the files directly in ``compose/<name>/``."""
        key = f"image:{name}"
        if key not in self._built:
            context_dir = self._compose / name
            if not (context_dir / "Dockerfile").is_file():
                raise ImageBuildError(f"no Dockerfile in {context_dir}")
            context = BuildContext.from_dir(context_dir, top_level_only=True)
            base = self.base_image()
            self._built[key] = self._build(f"{IMAGE_PREFIX}/{name}", context, {"BASE_IMAGE": base},
                                           base_id=self._image_id(base))
        return self._built[key]

    def role_image(self, mta: str, role: str, config_dir: Path, mta_image: str, config_target: str,
                   generated: Mapping[str, bytes] | None = None) -> str:
        """The MTA image with ``config_dir`` (plus ``generated`` files) copied over its configuration."""
        key = f"role:{mta_image}:{config_dir.resolve()}:{sorted((generated or {}).items())}"
        if key not in self._built:
            if not config_dir.is_dir():
                raise ImageBuildError(f"configuration directory {config_dir} for role {role} does not exist")
            context = BuildContext.from_dir(config_dir, dockerfile=role_dockerfile(config_target),
                                            generated=generated)
            self._built[key] = self._build(f"{IMAGE_PREFIX}/{mta}-{role}", context, {"MTA_IMAGE": mta_image},
                                           base_id=mta_image)
        return self._built[key]

    def _image_id(self, ref: str) -> str:
        return str(self._client.images.get(ref).id)

    def _build(self, repo: str, context: BuildContext, buildargs: dict[str, str], *, base_id: str) -> str:
        """The tag for ``context``; built now, or inside parallel() submitted (after the image it is
        built on, when that one is still building: ``base_id`` is then its tag)."""
        digest = context.digest(base_id, *sorted(f"{k}={v}" for k, v in buildargs.items()))
        tag = f"{repo}:{digest}"
        heavy = "MTA_IMAGE" not in buildargs  # a role image is a COPY; the others install packages
        with self._lock:
            if tag in self._pending:
                return tag
            pool, after = self._pool, self._pending.get(base_id)
        if self._has(tag):
            return tag
        if pool is None:
            with self._progress.task(f"building image {tag}"):
                self._build_one(tag, context, buildargs, digest, steps=True)
            return tag
        with self._lock:
            if tag in self._pending:
                return tag
            if not self._pending:
                self._batch_started = time.monotonic()
                self._say(f"building missing images side by side (up to {self._jobs} package installs at "
                          "once), a line as each is done ...")
            self._pending[tag] = pool.submit(self._build_after, after, tag, context, buildargs, digest, heavy)
        return tag

    def _build_after(self, after: Future[None] | None, tag: str, context: BuildContext, buildargs: dict[str, str],
                     digest: str, heavy: bool) -> None:
        if after is not None:
            try:
                after.result()
            except BaseException as exc:
                raise _DependencyFailed(f"{tag} not built: the image it is built on failed") from exc
        with self._heavy if heavy else contextlib.nullcontext():
            if self._abort.is_set():
                raise _DependencyFailed(f"{tag} not built: cancelled")
            started = time.monotonic()
            try:
                self._build_one(tag, context, buildargs, digest, steps=False)
            except BaseException as exc:
                if self._abort.is_set():
                    self._say(f"  {tag}: cancelled after {time.monotonic() - started:.1f}s")
                    raise _DependencyFailed(f"{tag} not built: cancelled") from exc
                self._say(f"  {tag}: FAILED after {time.monotonic() - started:.1f}s")
                raise
            self._say(f"  {tag}: built in {time.monotonic() - started:.1f}s")

    def _build_one(self, tag: str, context: BuildContext, buildargs: dict[str, str], digest: str, *,
                   steps: bool) -> None:
        try:
            self._stream_build(context, tag, buildargs, digest, steps=steps)
        except (BuildError, APIError) as exc:
            raise ImageBuildError(f"building {tag} failed: {exc}") from exc

    def _stream_build(self, context: BuildContext, tag: str, buildargs: dict[str, str], digest: str, *,
                      steps: bool = True) -> None:
        """One build, its output read as it comes: the last lines go into the error when it fails.
        ``steps``: a progress line per Dockerfile step (one build at a time only: side by side they
        would interleave). A build the engine says nothing about for BUILD_STALL_S is given up."""
        log: list[str] = []
        try:
            self._follow_build(context, tag, buildargs, digest, log, steps=steps)
        except (OSError, requests.RequestException, urllib3.exceptions.HTTPError) as exc:
            tail = "\n".join(log[-20:])
            raise ImageBuildError(f"building {tag}: the Docker engine sent nothing for {BUILD_STALL_S:.0f} s or "
                                  f"broke off ({type(exc).__name__}: {exc})\n{tail}") from exc

    def _follow_build(self, context: BuildContext, tag: str, buildargs: dict[str, str], digest: str,
                      log: list[str], *, steps: bool) -> None:
        stream: Iterable[dict[str, Any]] = self._client.api.build(
            fileobj=context.tar(), custom_context=True, tag=tag, buildargs=buildargs, rm=True, forcerm=True,
            decode=True, labels={HASH_LABEL: digest}, timeout=BUILD_STALL_S,
        )
        for chunk in stream:
            if self._abort.is_set():
                # Stop following it (closing the stream makes the engine cancel the build).
                with contextlib.suppress(Exception):
                    getattr(stream, "close", lambda: None)()
                raise ImageBuildError(f"building {tag}: cancelled")
            if "error" in chunk:
                tail = "\n".join(log[-20:])
                raise ImageBuildError(f"building {tag} failed: {chunk['error'].strip()}\n{tail}")
            text = str(chunk.get("stream", "")).rstrip()
            if not text:
                continue
            log.extend(text.splitlines())
            if steps and text.startswith("Step "):
                self._say(f"  {tag}: {text[:100]}")


def _reason(exc: DockerException) -> str:
    text = str(getattr(exc, "explanation", None) or exc).strip()
    return text.splitlines()[0][:160] if text else type(exc).__name__

