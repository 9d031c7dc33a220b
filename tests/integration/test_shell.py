"""The shell kept running in a container: what a command returns through it is what an exec returns,
byte for byte; one session serves every command; a container restarted, paused or stopped is answered
as an exec would answer it."""

from __future__ import annotations

import hashlib
import io
import tarfile
import time
from collections.abc import Iterator

import docker
import pytest
from docker.errors import DockerException
from docker.models.containers import Container

from harness.runner import RunContext
from harness.topology.labels import new_run_id, remove_run, run_labels
from harness.topology.shell import LOOK_AFTER_S, ContainerShell
from harness.topology.topology import Host


@pytest.fixture
def container(run_context: RunContext) -> Iterator[Container]:
    run_id = new_run_id()
    started = run_context.client.containers.run(run_context.images.image("postfix"), ["sleep", "infinity"],
                                                detach=True, labels=run_labels(run_id))
    try:
        yield started
    finally:
        remove_run(run_context.client, run_id)


def _exec(container: Container, argv: list[str]) -> tuple[int, bytes, bytes]:
    result = container.exec_run(argv, demux=True)
    out, err = result.output
    return int(result.exit_code), out or b"", err or b""


@pytest.mark.parametrize("argv", [
    ["sh", "-c", "printf 'out\\000\\377\\n'; printf 'err\\n' >&2; exit 3"],
    ["true"],
    ["sh", "-c", "head -c 3000000 /dev/urandom > /tmp/big; cat /tmp/big"],
    ["ls", "/no/such/path"],
    ["printf", "%s|", "a b", "$HOME", "'quoted'", "semi;colon", "new\nline"],
])
def test_a_command_returns_what_an_exec_returns(container: Container, argv: list[str]) -> None:
    shell = ContainerShell(lambda: container)
    done = shell.run(argv)
    if argv[-1].endswith("cat /tmp/big"):
        # Random bytes: compared with the file's own digest, not with a second (different) draw.
        code, digest, _ = _exec(container, ["sha256sum", "/tmp/big"])
        assert code == 0 and hashlib.sha256(done.stdout).hexdigest() == digest.split()[0].decode()
        assert len(done.stdout) == 3_000_000
    else:
        assert (done.exit_code, done.stdout, done.stderr) == _exec(container, argv)
    assert (shell.sessions, shell.fallbacks) == (1, 0)


def test_one_session_serves_every_command(container: Container) -> None:
    shell = ContainerShell(lambda: container)
    outputs = [shell.run(["echo", str(i)]).stdout for i in range(30)]
    assert outputs == [f"{i}\n".encode() for i in range(30)]
    assert (shell.sessions, shell.fallbacks) == (1, 0)
    processes = _exec(container, ["sh", "-c", "ps -e -o comm= 2>/dev/null || ls /proc | grep -c '^[0-9]'"])[1]
    assert processes.count(b"sh") <= 2, processes  # the session's shell (and ps's own sh -c), nothing piling up


def test_an_output_that_looks_like_the_end_of_a_reply_is_returned_whole(container: Container) -> None:
    shell = ContainerShell(lambda: container)
    looks = "x\\n0123456789abcdef0123456789abcdef 0 0\\n\\ny 1 2 "
    done = shell.run(["printf", looks])
    assert done.stdout == b"x\n0123456789abcdef0123456789abcdef 0 0\n\ny 1 2 " and done.exit_code == 0
    assert shell.run(["echo", "next"]).stdout == b"next\n"
    assert (shell.sessions, shell.fallbacks) == (1, 0)


def test_a_command_costs_one_process_in_the_container_not_a_frame_of_its_own(container: Container) -> None:
    """Each process is CPU a matrix pays thousands of times: the reply's frame is the shell's own
    builtins (the PIDs two commands apart say how many processes were started in between)."""
    shell = ContainerShell(lambda: container)
    pids = [int(shell.run(["sh", "-c", "echo $$"]).stdout) for _ in range(3)]
    assert pids[2] - pids[1] == pids[1] - pids[0] == 1, pids


def test_a_restarted_container_gets_a_new_session(container: Container) -> None:
    shell = ContainerShell(lambda: container)
    assert shell.run(["echo", "before"]).stdout == b"before\n"
    container.restart(timeout=0)
    # The session ended with the container: this command goes through an exec, the next one opens a new session.
    assert shell.run(["echo", "after"]).stdout == b"after\n"
    assert shell.run(["echo", "again"]).stdout == b"again\n"
    assert shell.sessions == 2 and shell.fallbacks == 1


def test_a_paused_container_is_answered_as_an_exec_answers(container: Container) -> None:
    shell = ContainerShell(lambda: container)
    assert shell.run(["true"]).exit_code == 0
    container.pause()
    try:
        started = time.monotonic()
        with pytest.raises(DockerException, match="paused"):
            shell.run(["true"])
        assert time.monotonic() - started < LOOK_AFTER_S + 5
    finally:
        container.unpause()
    assert shell.run(["echo", "back"]).stdout == b"back\n"


def test_a_stopped_container_is_answered_as_an_exec_answers(engine: docker.DockerClient, container: Container) -> None:
    shell = ContainerShell(lambda: container)
    assert shell.run(["true"]).exit_code == 0
    container.stop(timeout=0)
    with pytest.raises(DockerException, match="not running"):
        shell.run(["true"])


class _Wrapped:
    def __init__(self, container: Container) -> None:
        self.container = container

    def get_wrapped_container(self) -> Container:
        return self.container


def test_a_tree_read_through_the_shell_is_the_archive_the_engine_gives(container: Container) -> None:
    host = Host("mx", "mx.example.test", "10.0.0.10", "image", "postfix", _Wrapped(container))  # type: ignore[arg-type]
    _exec(container, ["sh", "-c", "mkdir -p /var/mail/example.test/bob/new /var/mail/empty && "
                                  "printf 'Subject: x\\n\\n\\000body' > /var/mail/example.test/bob/new/1.mx"])
    stream, _ = container.get_archive("/var/mail")
    with tarfile.open(fileobj=io.BytesIO(b"".join(stream))) as tar:
        expected = {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}  # type: ignore[union-attr]
    assert host.read_tree("/var/mail") == expected and expected
    assert host.read_tree("/no/such/dir") == {}
    assert host.shell.fallbacks == 0


def test_files_written_through_the_shell_are_as_the_archive_call_wrote_them(container: Container) -> None:
    host = Host("dns", "ns.harness.test", "10.0.0.2", "image", None, _Wrapped(container))  # type: ignore[arg-type]
    _exec(container, ["mkdir", "-p", "/etc/nsd/harness"])
    before = time.time() - 1
    host.put_files("/etc/nsd/harness", {"a.zone": b"$ORIGIN a.\n\x00\xff", "zones.conf": b"zone:\n"})
    code, out, _ = _exec(container, ["stat", "-c", "%a %u %Y %s %n", "/etc/nsd/harness/a.zone",
                                     "/etc/nsd/harness/zones.conf"])
    lines = [line.split() for line in out.decode().splitlines()]
    sizes = [("644", "0", "13"), ("644", "0", "6")]  # rw-r--r--, root's, every byte
    assert code == 0 and [(mode, uid, size) for mode, uid, _, size, _ in lines] == sizes
    assert all(int(mtime) >= before for _, _, mtime, _, _ in lines)  # NSD reloads only a file whose mtime moved
    assert _exec(container, ["cat", "/etc/nsd/harness/a.zone"])[1] == b"$ORIGIN a.\n\x00\xff"
    assert host.shell.fallbacks == 0


@pytest.mark.parametrize("through", ["shell", "archive"])
def test_files_written_with_an_age_carry_an_mtime_that_far_back(
        container: Container, through: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A role's configuration rewritten in place (reconfigure_role) is not "hot" to Postfix, which reads
    a main.cf changed within the last second again and again until it is older."""
    host = Host("mx", "mx.example.test", "10.0.0.10", "image", "postfix", _Wrapped(container))  # type: ignore[arg-type]
    # Each way alone: the other one refused, so a write that fails on its way cannot pass on the other.
    if through == "archive":
        monkeypatch.setattr(host.shell, "run", _refused)
    else:
        monkeypatch.setattr(container, "put_archive", _refused)
    _exec(container, ["mkdir", "-p", "/etc/postfix"])
    host.put_files("/etc/postfix", {"main.cf": b"smtpd_banner = x\n", "master.cf": b"smtp inet n - n - - smtpd\n"},
                   age_s=30)
    now = time.time()
    code, out, _ = _exec(container, ["stat", "-c", "%Y %s", "/etc/postfix/main.cf", "/etc/postfix/master.cf"])
    lines = [line.split() for line in out.decode().splitlines()]
    assert code == 0 and [size for _, size in lines] == ["17", "26"], out
    # 30 s back, give or take the second the write took.
    assert all(now - 32 <= int(mtime) <= now - 28 for mtime, _ in lines), (now, lines)
    assert _exec(container, ["cat", "/etc/postfix/main.cf"])[1] == b"smtpd_banner = x\n"


def _refused(*args: object, **kwargs: object) -> object:
    raise DockerException("refused by the test")
