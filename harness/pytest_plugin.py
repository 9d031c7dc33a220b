"""pytest plugin (``pytest11`` entry point ``mailflow_harness``): scenario files as pytest items, and
the ``mailflow_topology`` fixture for Python tests against a running topology.

    pytest scenarios/ -n 2 --mta postfix,exim

Collected: ``*.yaml``/``*.yml`` files below a directory named ``scenarios`` that pytest was pointed at
(a command-line path, or a ``testpaths`` entry, is that directory or lies inside it), and any YAML file
named on the command line. Nothing else: the plugin is active in every pytest run of the environment,
and a bare ``pytest`` recursing into tests/ must not pick up the YAML there (loader fixtures, some
deliberately broken, in tests/unit/fixtures/scenarios; scenarios meant for other options).
One item per scenario and implementation, ``scenarios/02-relay-354.yaml::postfix``; a file that does not
load is one failing item, ``...::load``, showing the loader's ``file:line:col: message``.

Items of one process (one xdist worker) share topologies as ``harness run`` does: one
``SharedTopology`` per topology key (implementation and role changes), reset before each scenario, all
closed when the session ends, also after ``-x`` or Ctrl-C. A failure shows what ``harness run`` prints
for it. Under pytest-xdist each worker keeps its own topologies.

Heavy modules (docker, testcontainers) are imported only when a scenario or the fixture runs.
"""

from __future__ import annotations

import asyncio
import io
import os
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from harness.errors import HarnessError, InfrastructureError, UsageError

if TYPE_CHECKING:
    from _pytest._code.code import TerminalRepr, TracebackStyle

    from harness.expect.results import ScenarioResult
    from harness.runner import RunContext, ScenarioSequence
    from harness.scenario.model import Scenario
    from harness.scenario.roleoptions import RoleOptions
    from harness.smtp.transcript import Transcript
    from harness.topology.topology import Topology

__all__ = ["MailflowTopology", "ScenarioFile", "ScenarioItem", "mailflow_topology"]

SCENARIO_DIR = "scenarios"
SUFFIXES = (".yaml", ".yml")
KEEP_CHOICES = ("never", "on-failure", "always")
LOAD_ITEM = "load"


# -- options ----------------------------------------------------------------------------------------

def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("mailflow-harness", "mailflow-harness: scenario files as test items")
    group.addoption("--mta", dest="mailflow_mta", default=None, metavar="LIST",
                    help="comma-separated MTA implementations to run each scenario on (postfix, exim, "
                         "opensmtpd; default: postfix); a scenario's own `mta:` list narrows it further")
    group.addoption("--role", dest="mailflow_role", action="append", default=[], metavar="ROLE=DIR",
                    help="run the scenarios with this configuration directory for ROLE "
                         "(ROLE=IMPLEMENTATION:DIR to name its implementation); repeatable")
    group.addoption("--set", dest="mailflow_set", action="append", default=[], metavar="ROLE.PARAM=VALUE",
                    help="a setting laid over ROLE's configuration ([IMPLEMENTATION:]ROLE.PARAM=VALUE); "
                         "repeatable")
    group.addoption("--keep", dest="mailflow_keep", choices=KEEP_CHOICES, default="never",
                    help="keep the topologies after the session: never (default), on-failure, always "
                         "(list with `harness status`, remove with `harness down`)")


@dataclass(frozen=True)
class _Options:
    mtas: tuple[str, ...]
    roles: RoleOptions | None
    keep: str


_OPTIONS = pytest.StashKey[_Options]()


def _parse_mtas(text: str | None, option: str = "--mta") -> tuple[str, ...]:
    from harness.mta import parse_mtas

    return ("postfix",) if text is None else tuple(parse_mtas(text, option))


def pytest_configure(config: pytest.Config) -> None:
    try:
        mtas = _parse_mtas(config.option.mailflow_mta)
        roles: RoleOptions | None = None
        if config.option.mailflow_role or config.option.mailflow_set:
            from harness.scenario.roleoptions import parse_role_options

            roles = parse_role_options(config.option.mailflow_role, config.option.mailflow_set,
                                       base=config.invocation_params.dir)
    except UsageError as exc:
        raise pytest.UsageError(str(exc)) from exc
    config.stash[_OPTIONS] = _Options(mtas, roles, config.option.mailflow_keep)


def _options(config: pytest.Config) -> _Options:
    return config.stash[_OPTIONS]


# -- collection -------------------------------------------------------------------------------------

def pytest_collect_file(file_path: Path, parent: pytest.Collector) -> pytest.Collector | None:
    if file_path.suffix not in SUFFIXES or file_path.name.startswith("."):
        return None
    session = parent.session
    if session.isinitpath(file_path) or _in_scenario_dir(file_path, session):
        return ScenarioFile.from_parent(parent, path=file_path)
    return None


def _in_scenario_dir(file_path: Path, session: pytest.Session) -> bool:
    """Below a ``scenarios`` directory that is a command-line path or contains one (looking no higher
    than the rootdir); a ``scenarios`` directory found only by recursing from above does not count."""
    pointed_at = False
    for directory in file_path.parents:
        pointed_at = pointed_at or session.isinitpath(directory)
        if pointed_at and directory.name == SCENARIO_DIR:
            return True
        if directory == session.config.rootpath:
            break
    return False


def _as_given(path: Path) -> Path:
    """The path messages name the file by: relative to the working directory where it is below it."""
    try:
        return path.relative_to(Path.cwd())
    except ValueError:
        return path


class ScenarioFile(pytest.File):
    """One scenario file: an item per implementation it runs on, or one failing item when it does not load."""

    def collect(self) -> Iterable[pytest.Item | pytest.Collector]:
        from harness.runner import implementations_for
        from harness.scenario.loader import load_scenarios

        options = _options(self.config)
        try:
            scenarios = load_scenarios([_as_given(self.path)])
        except HarnessError as exc:
            yield BrokenScenarioItem.from_parent(self, name=LOAD_ITEM, error=str(exc))
            return
        if options.roles is not None:
            from harness.scenario.roleoptions import apply_role_options

            scenarios = apply_role_options(scenarios, options.roles)
        for scenario in scenarios:
            for mta in implementations_for(scenario, options.mtas):
                yield ScenarioItem.from_parent(self, name=mta, scenario=scenario, mta=mta)


class ScenarioFailed(Exception):
    """The scenario failed (FAILED: an expectation; ERROR: infrastructure). Rendered by repr_failure."""

    def __init__(self, result: ScenarioResult) -> None:
        super().__init__(result.error or f"{result.name} [{result.mta}] {result.status}")
        self.result = result


class ScenarioLoadFailed(Exception):
    pass


def _text_repr(text: str, summary: str, path: Path, line: int | None) -> TerminalRepr:
    """``text`` as the failure's body, ``summary`` as its one-line message (short test summary, JUnit's
    failure message); an exception repr, so pytest-xdist carries it to the controller intact."""
    from _pytest._code.code import ReprExceptionInfo, ReprFileLocation, ReprTracebackNative

    return ReprExceptionInfo(reprtraceback=ReprTracebackNative([text]),
                             reprcrash=ReprFileLocation(str(path), line or 1, summary))


class ScenarioItem(pytest.Item):
    """One scenario on one implementation, run on this process's shared topology of that implementation."""

    def __init__(self, *, scenario: Scenario, mta: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.scenario = scenario
        self.mta = mta
        self.result: ScenarioResult | None = None
        self.user_properties.append(("mta", mta))

    def runtest(self) -> None:
        from harness.expect.results import PASSED

        self.result = _topologies(self.config).run(self.scenario, self.mta)
        if self.result.run_id:
            self.user_properties.append(("run_id", self.result.run_id))  # JUnit <property>: which topology
        if self.result.status != PASSED:
            raise ScenarioFailed(self.result)

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException],
                     style: TracebackStyle | None = None) -> str | TerminalRepr:
        if isinstance(excinfo.value, ScenarioFailed):
            from harness.report.console import details, print_result

            result = excinfo.value.result
            text = io.StringIO()
            print_result(result, text)  # what `harness run` prints for it
            # The short summary and JUnit's failure message: the first failure (file:line:col) or the error.
            first = (details(result).strip() or text.getvalue()).splitlines()[0]
            line = result.failures[0].mark.line if result.failures and result.failures[0].mark else None
            return _text_repr(text.getvalue(), first, self.path, line)
        return super().repr_failure(excinfo, style)

    def reportinfo(self) -> tuple[Path, int | None, str]:
        return self.path, None, f"{self.scenario.name} [{self.mta}]"


class BrokenScenarioItem(pytest.Item):
    """A scenario file that did not load: fails with the loader's ``file:line:col: message``."""

    def __init__(self, *, error: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.error = error

    def runtest(self) -> None:
        raise ScenarioLoadFailed(self.error)

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException],
                     style: TracebackStyle | None = None) -> str | TerminalRepr:
        if isinstance(excinfo.value, ScenarioLoadFailed):
            return _text_repr(self.error + "\n", self.error.splitlines()[0], self.path, None)
        return super().repr_failure(excinfo, style)

    def reportinfo(self) -> tuple[Path, int | None, str]:
        return self.path, None, f"{self.path.name}: does not load"


# -- running ----------------------------------------------------------------------------------------

@dataclass
class _Topologies:
    """This process's engine context and one ``ScenarioSequence`` (a shared topology) per sharing key,
    made on first use: scenario items and the fixture run on them as `harness run` would."""

    keep: str
    ctx: RunContext | None = None
    ctx_error: str | None = None
    sequences: dict[object, ScenarioSequence] = field(default_factory=dict)

    def context(self) -> RunContext:
        if self.ctx is not None:
            return self.ctx
        if self.ctx_error is not None:
            raise InfrastructureError(self.ctx_error)
        os.environ.setdefault("TESTCONTAINERS_RYUK_DISABLED", "true")
        from harness.cli import _default_compose_dir
        from harness.report.progress import Progress
        from harness.runner import RunContext
        from harness.topology.engine import ensure_engine
        from harness.topology.images import ImageStore

        compose = _default_compose_dir()
        progress = Progress()
        try:
            if not compose.is_dir():
                raise UsageError(f"compose directory {compose} does not exist (set MAILFLOW_COMPOSE_DIR)")
            client = ensure_engine(progress)
        except HarnessError as exc:
            self.ctx_error = str(exc)  # said once per item, tried once per session
            raise
        ctx = RunContext(client, ImageStore(client, progress, compose), compose, progress, keep=self.keep)
        ctx.reap()
        self.ctx = ctx
        return ctx

    def sequence(self, scenario: Scenario | None, mta: str) -> ScenarioSequence:
        """The sequence of ``scenario``'s topology (its implementation and what of its topology cannot be
        changed on a running one, as ``harness run`` groups them); the standard topology's for None."""
        from harness.runner import ScenarioSequence
        from harness.shard import TopologyKey, sharing_key

        key: TopologyKey = sharing_key(scenario, mta) if scenario is not None else (mta, ())
        if key not in self.sequences:
            self.sequences[key] = ScenarioSequence(self.context())
        return self.sequences[key]

    def run(self, scenario: Scenario, mta: str) -> ScenarioResult:
        from harness.expect.results import ERROR, ScenarioResult

        try:
            return self.sequence(scenario, mta).run(scenario, mta)
        except HarnessError as exc:  # no engine context: said once per item
            return ScenarioResult(file=str(scenario.path), name=scenario.name, mta=mta, status=ERROR, error=str(exc))

    def close(self, *, interrupted: bool) -> None:
        problems = []
        for key, sequence in self.sequences.items():
            try:
                sequence.close()
            except HarnessError as exc:
                problems.append(f"{key}: {exc}")
        self.sequences.clear()
        if interrupted and self.ctx is not None:
            # A topology half started when Ctrl-C came is in no list: remove what this process made.
            from harness.commands import cleanup_own_runs

            cleanup_own_runs()
        if problems:
            raise InfrastructureError("could not remove topologies: " + "; ".join(problems))


_TOPOLOGIES = pytest.StashKey[_Topologies]()


def _topologies(config: pytest.Config) -> _Topologies:
    if _TOPOLOGIES not in config.stash:
        config.stash[_TOPOLOGIES] = _Topologies(_options(config).keep)
    return config.stash[_TOPOLOGIES]


@pytest.hookimpl(tryfirst=True)
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    topologies = session.config.stash.get(_TOPOLOGIES, None)
    if topologies is None:
        return
    interrupted = exitstatus == pytest.ExitCode.INTERRUPTED
    if interrupted:
        from harness.observe.polling import CANCELLED

        CANCELLED.set()  # waits still running in helper threads end now
    topologies.close(interrupted=interrupted)


# -- the fixture ------------------------------------------------------------------------------------

@dataclass
class MailflowTopology:
    """A running standard topology (dns, mx, relay, nomail) of one implementation, reset for each test.

    ``address(role)`` is a role's container address (port 25); ``topology`` the harness's ``Topology``;
    ``send()`` (or ``await send_async()``) runs one SMTP session from the harness's client and returns
    its ``Transcript``: every reply as data (``transcript.first("END-OF-DATA").code == 250``).
    """

    mta: str
    topology: Topology
    _sessions: dict[str, int] = field(default_factory=dict)

    def address(self, role: str) -> str:
        return self.topology.address(role)

    @property
    def client_address(self) -> str:
        """Where the harness's client connects from (the network's gateway)."""
        return self.topology.gateway

    async def send_async(self, host: str = "mx", *, mail_from: str = "alice@origin.test",
                         rcpt_to: Sequence[str] = ("bob@example.test",),
                         headers: Mapping[str, str] | None = None, body: str = "Hello from mailflow-harness.\n",
                         ehlo: str = "client.origin.test", timeout_s: float = 30.0) -> Transcript:
        """One session to ``host``: EHLO, MAIL, RCPT, DATA, the message, QUIT (stopping where refused)."""
        from harness.scenario.model import Mark, Message, SmtpSessionStep
        from harness.smtp.client import run_session
        from harness.smtp.message import render_message

        message = Message(tuple((headers if headers is not None else {"Subject": "mailflow-harness"}).items()),
                          body)
        step = SmtpSessionStep(host=host, ehlo=ehlo, mail_from=mail_from, rcpt_to=tuple(rcpt_to), message=message,
                               expect={}, expect_rcpt={}, mark=Mark("mailflow_topology", 1, 1), timeout_s=timeout_s)
        data, message_id = render_message(message, mail_from=mail_from, rcpt_to=step.rcpt_to,
                                          domain=mail_from.rpartition("@")[2] or "mailflow-harness.test")
        hop = f"client->{host}"
        self._sessions[hop] = self._sessions.get(hop, 0) + 1
        started = time.monotonic()
        return await run_session(self.address(host), 25, step, hop=hop, session=self._sessions[hop],
                                 clock=lambda: time.monotonic() - started, message_bytes=data, message_id=message_id)

    def send(self, host: str = "mx", **kwargs: Any) -> Transcript:
        """``send_async`` for synchronous tests (not from inside a running event loop)."""
        return asyncio.run(self.send_async(host, **kwargs))


@pytest.fixture
def mailflow_topology(request: pytest.FixtureRequest) -> MailflowTopology:
    """The standard topology of the first ``--mta`` (default: postfix), or of the implementation given by
    indirect parametrization: ``@pytest.mark.parametrize("mailflow_topology", ["exim"], indirect=True)``.
    Started once per session (shared with the scenario items), reset like between two scenarios for
    every test; the address of a role with ``mailflow_topology.address("mx")``."""
    mta: str = getattr(request, "param", None) or _options(request.config).mtas[0]
    try:
        mta = _parse_mtas(mta, "mailflow_topology's parameter")[0]
        from harness.plan import plan_scenario

        sequence = _topologies(request.config).sequence(None, mta)
        shared = sequence.ready(plan_scenario(None, sequence.ctx.compose_dir, mta=mta), f"mailflow_topology [{mta}]")
    except HarnessError as exc:
        pytest.fail(f"mailflow_topology [{mta}]: {exc}", pytrace=False)
    shared.window_start = time.time()  # the next scenario resets what this test's mail reached
    return MailflowTopology(mta, shared.topology)
