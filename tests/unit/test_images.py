"""ImageStore over an in-memory engine: inside parallel() the missing images build side by side, a role
image after its MTA image, one progress line per finished image; failures are reported clearly; outside
it every call builds before it returns, with the same tags."""

from __future__ import annotations

import io
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from docker.errors import ImageNotFound

from harness.errors import ImageBuildError
from harness.report.progress import Progress
from harness.topology.images import ImageStore

MTAS = ("dns", "postfix", "exim", "opensmtpd", "capture")
BUILD_S = 0.2


class FakeImage:
    def __init__(self, ref: str) -> None:
        self.id = f"sha256:{abs(hash(ref)):x}"


class FakeEngine:
    """images.get / api.build, recording when each build ran. ``fail`` names repositories whose build
    ends with an error chunk."""

    def __init__(self, present: set[str] | None = None, fail: set[str] | None = None) -> None:
        self.present = set(present or {"debian:bookworm-slim"})
        self.fail = fail or set()
        self.lock = threading.Lock()
        self.running = 0
        self.most_at_once = 0
        self.spans: dict[str, tuple[float, float]] = {}
        # Builds wait for this before they do anything: a test can ask for every image first, then let
        # them run, and know that asking never waited for a build (no clock involved).
        self.gate = threading.Event()
        self.gate.set()
        self.images = self
        self.api = self

    def get(self, ref: str) -> FakeImage:
        with self.lock:
            if ref not in self.present:
                raise ImageNotFound(ref)
        return FakeImage(ref)

    def build(self, *, tag: str, buildargs: dict[str, str], **_: Any) -> Iterator[dict[str, Any]]:
        base = buildargs.get("MTA_IMAGE") or buildargs.get("BASE_IMAGE") or ""
        with self.lock:
            assert base in self.present, f"{tag} built before {base} exists"
            self.running += 1
            self.most_at_once = max(self.most_at_once, self.running)
        started = time.monotonic()
        try:
            assert self.gate.wait(30), "the test never opened the gate"
            yield {"stream": f"Step 1/2 : FROM {base}\n"}
            time.sleep(BUILD_S if "MTA_IMAGE" not in buildargs else BUILD_S / 4)
            if tag.split(":")[0].rsplit("/", 1)[-1] in self.fail:
                yield {"stream": "E: Unable to locate package nosuch\n"}
                yield {"error": "The command '/bin/sh -c apt-get install nosuch' returned a non-zero code: 100"}
                return
            yield {"stream": "Step 2/2 : RUN true\n"}
            with self.lock:
                self.present.add(tag)
        finally:
            with self.lock:
                self.running -= 1
                self.spans[tag] = (started, time.monotonic())


@pytest.fixture()
def compose(tmp_path: Path) -> Path:
    for name in MTAS:
        (tmp_path / name).mkdir()
        (tmp_path / name / "Dockerfile").write_text(f"ARG BASE_IMAGE\nFROM ${{BASE_IMAGE}}\nRUN echo {name}\n")
        for role in ("mx", "relay"):
            (tmp_path / name / role).mkdir()
            (tmp_path / name / role / "main.cf").write_text(f"{name} {role}\n")
    return tmp_path


def _store(engine: FakeEngine, compose: Path, out: io.StringIO, jobs: int = 4) -> ImageStore:
    return ImageStore(engine, Progress(out), compose, jobs=jobs)  # type: ignore[arg-type]


def _ask_all(store: ImageStore, compose: Path) -> dict[str, str]:
    """What `harness images` asks for: each MTA-level image, then the roles on it."""
    tags = {}
    for name in MTAS:
        tags[name] = store.image(name)
        for role in ("mx", "relay"):
            tags[f"{name}-{role}"] = store.role_image(name, role, compose / name / role, tags[name], "/etc/x/")
    return tags


def test_parallel_builds_side_by_side_roles_after_their_mta_image(compose: Path) -> None:
    engine, out = FakeEngine(), io.StringIO()
    engine.gate.clear()
    store = _store(engine, compose, out, jobs=3)
    with store.parallel():
        # Every tag is known while no build has even begun: asking never waits for a build.
        tags = _ask_all(store, compose)
        assert engine.spans == {}
        engine.gate.set()
    assert set(tags.values()) <= engine.present
    # Builds ran side by side, at most the three package builds plus the light role builds at once.
    assert engine.most_at_once >= 3 and engine.most_at_once <= 3 + 2 * len(MTAS)
    for name in MTAS:
        mta_end = engine.spans[tags[name]][1]
        for role in ("mx", "relay"):
            assert engine.spans[tags[f"{name}-{role}"]][0] >= mta_end
    lines = out.getvalue().splitlines()
    for tag in tags.values():
        done = [line for line in lines if f"{tag}: built in " in line]
        assert len(done) == 1, (tag, lines)
    assert not [line for line in lines if "Step " in line]  # steps of builds side by side would interleave
    assert lines[-1].split("] ", 1)[1].startswith(f"images: {len(tags)} built in ")


def test_heavy_builds_are_capped_at_jobs(compose: Path) -> None:
    engine = FakeEngine()
    store = _store(engine, compose, io.StringIO(), jobs=2)
    with store.parallel():
        for name in MTAS:
            store.image(name)
    assert engine.most_at_once == 2


def test_same_tags_as_one_at_a_time_and_nothing_rebuilt(compose: Path) -> None:
    engine, out = FakeEngine(), io.StringIO()
    sequential = _ask_all(_store(engine, compose, out), compose)
    assert "Step 1/2" in out.getvalue()  # one build at a time still shows its steps
    engine2 = FakeEngine()
    store = _store(engine2, compose, io.StringIO())
    with store.parallel():
        parallel = _ask_all(store, compose)
    assert parallel == sequential
    built = dict(engine2.spans)
    again = _store(engine2, compose, io.StringIO())
    with again.parallel():
        assert _ask_all(again, compose) == parallel
    assert engine2.spans == built  # every tag was there already: no build at all


def test_a_failure_names_the_image_its_log_and_the_others_that_failed(compose: Path) -> None:
    engine, out = FakeEngine(fail={"exim", "capture"}), io.StringIO()
    store = _store(engine, compose, out)
    with pytest.raises(ImageBuildError) as caught, store.parallel():
        tags = _ask_all(store, compose)
    text = str(caught.value)
    assert text.startswith(f"building {tags['exim']} failed: The command '/bin/sh -c apt-get install nosuch'")
    assert "E: Unable to locate package nosuch" in text
    assert f"(also failed: {tags['capture']})" in text
    # The roles on a failed image are not built and not reported as failures of their own.
    assert tags["exim-mx"] not in engine.spans and "exim-mx" not in text
    # The independent ones were built anyway.
    assert tags["postfix-relay"] in engine.present and tags["dns"] in engine.present
    assert f"{tags['exim']}: FAILED after " in out.getvalue()
    # A failed tag is not remembered as built: once the cause is fixed, asking again builds it.
    engine.fail.clear()
    assert store.image("exim") == tags["exim"] and tags["exim"] in engine.present


def test_an_error_inside_the_block_cancels_what_has_not_started(compose: Path) -> None:
    engine = FakeEngine()
    store = _store(engine, compose, io.StringIO(), jobs=1)
    with pytest.raises(RuntimeError, match="interrupted"), store.parallel():
        for name in MTAS:
            store.image(name)
        raise RuntimeError("interrupted")
    assert len(engine.spans) <= 2  # the one running when the error came (and at most one more)


def test_nested_blocks_join_the_outer_one(compose: Path) -> None:
    engine = FakeEngine()
    store = _store(engine, compose, io.StringIO())
    with store.parallel():
        with store.parallel():
            tag = store.image("dns")
        assert tag not in engine.present  # the inner block did not wait for it
    assert tag in engine.present  # the outer one did
