"""Hostile or broken input (scenario files arrive in pull requests): every case exits 2 at once with a
``file:line:col`` message, through the real command line (``harness validate``), and never hangs, reads
without bound, or reaches outside the scenario's directory tree and the working directory.

A hang would block the test run, so each command runs under an alarm (HANG_S): a generous bound that
only a hang reaches; the real cases take milliseconds."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from types import FrameType

import pytest

from harness.cli import main
from harness.errors import EXIT_OK, EXIT_USAGE, ScenarioError
from harness.report.files import check_destinations, destination_problem
from harness.scenario.inputs import MAX_MESSAGE_BYTES, MAX_SCENARIO_BYTES, MAX_YAML_NODES
from harness.scenario.loader import load_scenario

HANG_S = 5

HEAD = "name: t\ndescription: d\nsteps:\n"
# An smtp step at lines 4-7; a `message:` line after it is line 8, its value at column 23.
SMTP = "  - smtp:\n      host: mx\n      mail_from: a@origin.test\n      rcpt_to: [bob@example.test]\n"
MESSAGE_AT = (8, 23)
# A relay config on Postfix: the value of `config:` at line 5, column 19.
ROLES = "name: t\ndescription: d\nmta: [postfix]\nroles:\n  relay: {{config: {config}}}\nsteps:\n" + SMTP
CONFIG_AT = (5, 19)

# The classic "billion laughs" in YAML: nine levels of nine aliases, 9**9 strings once expanded.
BILLION_LAUGHS = "".join(
    ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n']
    + [f"{name}: &{name} [{','.join([f'*{prev}'] * 9)}]\n" for prev, name in zip("abcdefgh", "bcdefghi", strict=True)]
)

LOCATED = re.compile(r"^harness: (?P<file>[^\n]+?):(?P<line>\d+):(?P<col>\d+): (?P<message>.+)", re.DOTALL)


class Hung(BaseException):
    """Raised by the alarm: not an Exception, so nothing on the way catches it."""


@contextlib.contextmanager
def hang_guard(seconds: int = HANG_S) -> Iterator[None]:
    def on_alarm(signum: int, frame: FrameType | None) -> None:
        raise Hung(f"still running after {seconds} s")

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def harness(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, float]:
    """Exit code, stderr and seconds taken of ``harness ARGV``."""
    capsys.readouterr()
    started = time.monotonic()
    with hang_guard():
        code = main(["-q", *argv])
    took = time.monotonic() - started
    return code, capsys.readouterr().err, took


def refused_at(capsys: pytest.CaptureFixture[str], scenario: Path, line: int, col: int, phrase: str) -> str:
    """Validate ``scenario``: exit 2, ``scenario:line:col: ...`` naming ``phrase``, at once."""
    code, err, took = harness(capsys, "validate", str(scenario))
    assert code == EXIT_USAGE, err
    located = LOCATED.match(err)
    assert located is not None, err
    assert (located["file"], int(located["line"]), int(located["col"])) == (str(scenario), line, col), err
    assert phrase in located["message"], err
    assert "Traceback" not in err
    assert took < HANG_S, took
    return located["message"]


def scenario(tmp_path: Path, text: str, name: str = "s.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def with_message(tmp_path: Path, file: str) -> Path:
    return scenario(tmp_path, HEAD + SMTP + f"      message: {{file: '{file}'}}\n")


def sparse(path: Path, size: int) -> Path:
    """A file of ``size`` bytes that takes no disk (truncate)."""
    with path.open("wb") as f:
        f.truncate(size)
    return path


# --- bounded reads --------------------------------------------------------------------------------


def test_a_scenario_file_over_the_limit(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = sparse(tmp_path / "s.yaml", MAX_SCENARIO_BYTES + 1)
    refused_at(capsys, path, 1, 1, "the scenario file is 1048577 bytes, more than the 1 MiB")


def test_a_message_file_over_the_limit(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    sparse(tmp_path / "big.eml", MAX_MESSAGE_BYTES + 1)
    refused_at(capsys, with_message(tmp_path, "big.eml"), *MESSAGE_AT,
               f"message file 'big.eml' is {MAX_MESSAGE_BYTES + 1} bytes, more than the 64 MiB")


def test_a_fifo_as_scenario_file_never_blocks(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    fifo = tmp_path / "s.yaml"
    os.mkfifo(fifo)
    refused_at(capsys, fifo, 1, 1, "the scenario file is a FIFO (named pipe), not a regular file")


def test_a_fifo_as_message_file_never_blocks(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    os.mkfifo(tmp_path / "m.eml")
    refused_at(capsys, with_message(tmp_path, "m.eml"), *MESSAGE_AT,
               "message file 'm.eml' is a FIFO (named pipe), not a regular file")


def test_a_device_as_scenario_file(capsys: pytest.CaptureFixture[str]) -> None:
    refused_at(capsys, Path("/dev/zero"), 1, 1, "the scenario file is a character device, not a regular file")


def test_a_device_as_message_file(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                  monkeypatch: pytest.MonkeyPatch) -> None:
    # Run from /dev, so that /dev/zero is inside the working directory and it is the device that is refused.
    monkeypatch.chdir("/dev")
    refused_at(capsys, with_message(tmp_path, "/dev/zero"), *MESSAGE_AT,
               "message file '/dev/zero' is a character device, not a regular file")


def test_a_directory_as_message_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "messages").mkdir()
    refused_at(capsys, with_message(tmp_path, "messages"), *MESSAGE_AT,
               "message file 'messages' is a directory, not a regular file")


def test_a_directory_as_scenario_file(tmp_path: Path) -> None:
    # The command line expands a directory into its scenario files; the loader is given one directly.
    with pytest.raises(ScenarioError) as info:
        load_scenario(tmp_path)
    assert str(info.value).startswith(f"{tmp_path}:1:1: the scenario file is a directory, not a regular file")


# --- aliases ----------------------------------------------------------------------------------------


def test_billion_laughs_is_refused_at_once(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert len(BILLION_LAUGHS) < 600
    path = scenario(tmp_path, BILLION_LAUGHS)
    # a: 10 values, b: 91, c: 820, d: 7381, e: 66430, f: 597871, the first collection over the bound.
    message = refused_at(capsys, path, 6, 4, f"more than the {MAX_YAML_NODES} a scenario may hold")
    assert message.startswith("this expands to 597871 values once its aliases are expanded")


def test_billion_laughs_through_merge_keys(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # Merge keys expand too: PyYAML's own flattening would copy 10**8 entries before any count.
    text = "a: &a {" + ", ".join(f"k{i}: [x, x, x, x, x, x, x, x, x, x]" for i in range(10)) + "}\n"
    for prev, name in zip("abcdefgh", "bcdefghi", strict=True):
        text += f"{name}: &{name} {{" + ", ".join(f"{name}{i}: {{<<: *{prev}}}" for i in range(10)) + "}\n"
    refused_at(capsys, scenario(tmp_path, text), 4, 4, "once its aliases are expanded")


def test_many_values_without_aliases(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    # More values than the bound, no alias: refused while composing, at the value over the bound. (With
    # the real bound, a file of 100 000 values parses for seconds; the mechanism is the same.)
    monkeypatch.setattr("harness.scenario.yamlmarks.MAX_YAML_NODES", 1000)
    path = scenario(tmp_path, "x: [" + "0," * 2000 + "0]\n")
    # Composed before the first 0: the document's mapping, the key x and the list; the 998th 0 is value 1001.
    refused_at(capsys, path, 1, 5 + 2 * 997, "the YAML holds more than the 1000 values a scenario may hold")


def test_a_few_aliases_still_load(tmp_path: Path) -> None:
    text = ("name: t\ndescription: d\nsteps:\n"
            "  - smtp: &base {host: mx, mail_from: a@origin.test, rcpt_to: [b@example.test]}\n"
            "  - smtp: {<<: *base, host: relay}\n  - smtp: *base\n")
    steps = load_scenario(scenario(tmp_path, text)).steps
    assert [getattr(step, "host", None) for step in steps] == ["mx", "relay", "mx"]


# --- confinement ------------------------------------------------------------------------------------


def test_config_escaping_with_dot_dot(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    up = "../" * len(tmp_path.parts)
    message = refused_at(capsys, scenario(tmp_path, ROLES.format(config=f"{up}etc")), *CONFIG_AT,
                         f"role config directory '{up}etc' resolves to /etc, outside the scenario's directory tree")
    assert "the working directory" in message


def test_message_file_escaping_with_dot_dot(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    up = "../" * len(tmp_path.parts)
    message = refused_at(capsys, with_message(tmp_path, f"{up}etc/passwd"), *MESSAGE_AT,
                         f"message file '{up}etc/passwd' resolves to /etc/passwd, outside")
    assert "root:" not in message  # nothing of the file is read, let alone shown


def test_message_file_by_absolute_path(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    refused_at(capsys, with_message(tmp_path, "/etc/hostname"), *MESSAGE_AT, "resolves to /etc/hostname, outside")


def test_config_escaping_through_a_symlink(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "relay").symlink_to("/etc")
    refused_at(capsys, scenario(tmp_path, ROLES.format(config="relay")), *CONFIG_AT,
               "role config directory 'relay' resolves to /etc, outside")


def test_message_file_escaping_through_a_symlink(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "m.eml").symlink_to("/etc/passwd")
    refused_at(capsys, with_message(tmp_path, "m.eml"), *MESSAGE_AT, "message file 'm.eml' resolves to /etc/passwd")


def test_a_symlink_inside_a_config_dir_leading_out(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    relay = tmp_path / "relay"
    relay.mkdir()
    (relay / "main.cf").write_text("myhostname = relay.origin.test\n")
    (relay / "header_checks").symlink_to("/etc/shadow")
    refused_at(capsys, scenario(tmp_path, ROLES.format(config="relay")), *CONFIG_AT,
               "role config directory 'relay' has a symlink header_checks to /etc/shadow, outside")


def test_a_symlink_loop_and_a_nul_character(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "loop").symlink_to(tmp_path / "loop")
    refused_at(capsys, with_message(tmp_path, "loop"), *MESSAGE_AT, "message file 'loop' ")
    path = scenario(tmp_path, HEAD + SMTP + '      message: {file: "a\\0b"}\n')
    refused_at(capsys, path, *MESSAGE_AT, "is not a valid path (it contains a NUL character)")


def test_a_scenario_symlink_in_a_directory_leading_out(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    directory = tmp_path / "scenarios"
    directory.mkdir()
    scenario(directory, HEAD + SMTP, "ok.yaml")
    outside = scenario(tmp_path, HEAD + SMTP, "outside.yaml")
    (directory / "evil.yaml").symlink_to(outside)
    code, err, _ = harness(capsys, "validate", str(directory))
    assert code == EXIT_USAGE
    assert err.startswith(f"harness: {directory / 'evil.yaml'}:1:1: the scenario file is a symlink that resolves "
                          f"to {outside}, outside"), err
    # Named on the command line, a file is trusted as typed.
    assert harness(capsys, "validate", str(directory / "evil.yaml"))[0] == EXIT_OK


def test_config_inside_the_working_directory_is_allowed(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """The bundled layout: scenarios/ and compose/ side by side in the checkout the harness runs in."""
    (tmp_path / "compose" / "relay").mkdir(parents=True)
    (tmp_path / "compose" / "relay" / "main.cf").write_text("")
    (tmp_path / "scenarios").mkdir()
    path = scenario(tmp_path / "scenarios", ROLES.format(config="../compose/relay"))
    monkeypatch.chdir(tmp_path)
    assert harness(capsys, "validate", str(path))[0] == EXIT_OK
    monkeypatch.chdir(tmp_path / "scenarios")  # from elsewhere, ../compose is outside both trees
    refused_at(capsys, path, *CONFIG_AT, "resolves to")


def test_a_working_directory_of_root_trusts_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir("/")
    message = refused_at(capsys, scenario(tmp_path, ROLES.format(config="/etc")), *CONFIG_AT, "resolves to /etc")
    assert "working directory" not in message


# --- the implementation's main file -----------------------------------------------------------------


@pytest.mark.parametrize(("mta", "main_file"), [("postfix", "main.cf"), ("exim", "exim4.conf"),
                                                ("opensmtpd", "smtpd.conf")])
def test_a_config_dir_without_its_main_file(tmp_path: Path, capsys: pytest.CaptureFixture[str], mta: str,
                                            main_file: str) -> None:
    (tmp_path / "relay").mkdir()
    (tmp_path / "relay" / "master.cf").write_text("")
    text = ROLES.format(config="relay").replace("mta: [postfix]", f"mta: [{mta}]")
    refused_at(capsys, scenario(tmp_path, text), *CONFIG_AT,
               f"role config directory 'relay' has no {main_file}, the main file of every {mta} configuration")
    (tmp_path / "relay" / main_file).write_text("")
    assert harness(capsys, "validate", str(tmp_path / "s.yaml"))[0] == EXIT_OK


def test_a_config_dir_with_too_much_in_it(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    relay = tmp_path / "relay"
    relay.mkdir()
    (relay / "main.cf").write_text("")
    sparse(relay / "huge.db", 65 * 1024 * 1024)
    refused_at(capsys, scenario(tmp_path, ROLES.format(config="relay")), *CONFIG_AT,
               "role config directory 'relay' holds more than 64 MiB")


# --- results files: checked before anything runs ----------------------------------------------------


def test_results_file_that_is_a_directory(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # The scenario does not exist: the destination is checked first, before anything is loaded or started.
    code, err, took = harness(capsys, "run", "--json", str(tmp_path), str(tmp_path / "nope.yaml"))
    assert code == EXIT_USAGE and took < HANG_S
    assert err.startswith(f"harness: --json {tmp_path}: is a directory; no results could be written there"), err


def test_results_file_in_a_missing_directory_outside_the_working_directory(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    junit = tmp_path / "no" / "such" / "junit.xml"
    code, err, _ = harness(capsys, "run", "--junit", str(junit), str(tmp_path / "nope.yaml"))
    assert code == EXIT_USAGE
    assert f"--junit {junit}: cannot be created: directory {junit.parent} does not exist" in err, err
    assert not (tmp_path / "no").exists()  # nothing made outside the working directory


def test_two_options_naming_one_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "r.out"
    code, err, _ = harness(capsys, "report", str(tmp_path / "a.json"), "--json", str(out), "--markdown", str(out))
    assert code == EXIT_USAGE
    assert "--json and --markdown both name" in err, err


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write anywhere")
def test_results_file_in_a_directory_that_is_not_writable(tmp_path: Path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    assert destination_problem(locked / "r.json") == f"cannot be created: directory {locked} is not writable"


def test_results_directories_are_made_inside_the_working_directory(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    check_destinations({"--json": Path("build/deep/r.json"), "--junit": tmp_path / "build" / "j.xml"})
    assert destination_problem(Path("/dev/null")) is None  # an existing writable file, e.g. a device
    assert destination_problem(tmp_path / "file" / "r.json") is None  # made on write, inside
    (tmp_path / "file").write_text("")
    assert destination_problem(tmp_path / "file" / "r.json") == f"cannot be created: {tmp_path / 'file'} is not a " \
                                                                "directory"
