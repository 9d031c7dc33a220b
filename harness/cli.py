"""The `harness` command. Exit codes: 0 all passed, 1 an expectation failed, 2 bad scenario or usage,
3 infrastructure failure (130/143 when interrupted by SIGINT/SIGTERM, after cleaning up)."""

from __future__ import annotations

import argparse
import os
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from types import FrameType
from typing import Any

from harness.errors import EXIT_INFRA, EXIT_USAGE, HarnessError
from harness.mta import NAMES

DESCRIPTION = """\
Run mail-flow scenarios against real MTAs and a real DNS server in containers.

Scenarios are YAML files (see README.md and `harness schema`). Each scenario gets its own
hermetic network with a DNS server and an MTA (Postfix, Exim or OpenSMTPD) in the roles mx,
relay and nomail; the harness sends mail with its own SMTP client, records every reply of its
own sessions and, from packet captures, of every hop between the MTAs, and checks the
expectations. `harness run --matrix` runs each scenario on all three and prints who replied what.
"""

EPILOG = """\
exit codes: 0 all passed, 1 an expectation failed, 2 bad scenario or usage,
            3 infrastructure failure (engine, images, containers, DNS)
"""


HTML_HELP = ("write one self-contained HTML page (no network needed to view it): per scenario and "
             "implementation the verdict, the failures and every hop as a sequence diagram, a lane per host, an "
             "arrow per command and per reply, the failing reply marked")


class Terminated(KeyboardInterrupt):
    """SIGTERM, delivered like Ctrl-C so the same cleanup paths run."""


def _on_signal(signum: int, frame: FrameType | None) -> None:
    """The first SIGINT or SIGTERM: raised where the main thread is (KeyboardInterrupt, Terminated), so
    every cleanup path runs. From then on both are only noted: the cleanup must not be cut short (it is
    bounded, as every engine call is). SIGKILL still ends the process; what it leaves, the next run or
    `harness down` reaps."""
    _signalled.append(signum)
    _shield()
    raise Terminated() if signum == signal.SIGTERM else KeyboardInterrupt()


_signalled: list[int] = []
_noted: list[int] = []


def _while_cleaning(signum: int, frame: FrameType | None) -> None:
    if not _noted:
        # os.write, not print: a signal handler may run while the main thread is inside a print.
        os.write(2, f"harness: still removing this process's containers and networks (pid {os.getpid()}; "
                    "kill -9 leaves them to the next run or `harness down`)\n".encode())
    _noted.append(signum)


def _shield() -> None:
    """SIGINT and SIGTERM noted, never raised (SIGINT stays ignored where it was)."""
    for sig in (signal.SIGINT, signal.SIGTERM):
        if signal.getsignal(sig) is not signal.SIG_IGN:
            signal.signal(sig, _while_cleaning)


_Handler = Callable[[int, FrameType | None], Any] | int


def _handle_signals() -> dict[int, _Handler]:
    """Install _on_signal; return the handlers it replaced."""
    previous: dict[int, _Handler] = {}
    for sig in (signal.SIGINT, signal.SIGTERM):
        handler = signal.getsignal(sig)
        if handler is not None:  # None: set outside Python, nothing to restore
            previous[sig] = handler
    signal.signal(signal.SIGTERM, _on_signal)
    # Started with SIGINT ignored (in the background): it stays ignored.
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        signal.signal(signal.SIGINT, _on_signal)
    return previous


def _interrupted(exc: KeyboardInterrupt, cleaned: int) -> int:
    what = "terminated" if isinstance(exc, Terminated) else "interrupted"
    print(f"harness: {what}; removed {cleaned} container(s)/network(s) of this process", file=sys.stderr)
    return 143 if isinstance(exc, Terminated) else 130


def _default_compose_dir() -> Path:
    env = os.environ.get("MAILFLOW_COMPOSE_DIR")
    if env:
        return Path(env)
    local = Path("compose")
    if (local / "postfix").is_dir():
        return local
    return Path(__file__).resolve().parent.parent / "compose"


def _common_options(parser: argparse.ArgumentParser, default: object) -> None:
    """Accepted before or after the subcommand; after it, they only override when given."""
    parser.add_argument("--compose", type=Path, default=default, metavar="DIR",
                        help="directory with the Dockerfiles and role configurations (default: ./compose)")
    parser.add_argument("--base-image", default=default, metavar="IMAGE",
                        help="base image for all images (default: debian:bookworm-slim, or one made with "
                             "debootstrap when it cannot be pulled)")
    parser.add_argument("-q", "--quiet", action="store_true", default=default if default is not None else False,
                        help="no progress lines on stderr")


def _shard_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--shard", default=None, metavar="K/N",
                        help="run only shard K of N (1 <= K <= N) of the (scenario, implementation) pairs, "
                             "those sharing a topology kept together; the same on every machine, for CI "
                             "matrices (merge the results with `harness report`). An empty shard exits 0 "
                             "with empty results")


def _pace_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-j", "--jobs", type=_jobs, default=None, metavar="N",
                        help="topologies running side by side (default: 3 per core, at most 8): the "
                             "implementations of a matrix at once, independent topologies of one, and the "
                             "back of a long queue of scenarios once a slot has nothing else to run")
    parser.add_argument("--fresh", action="store_true",
                        help="a fresh topology for every scenario, instead of sharing one between the "
                             "scenarios that need the same (reset in between; see README, Shared topologies)")


def role_options(parser: argparse.ArgumentParser) -> None:
    """--role/--set: the same scenario files against any configuration (harness.scenario.roleoptions)."""
    parser.add_argument("--role", action="append", default=[], metavar="ROLE=DIR",
                        help="use DIR as ROLE's configuration (mx, relay, nomail) instead of what the "
                             "scenarios say; the implementation is recognised by DIR's main file (main.cf, "
                             "exim4.conf, smtpd.conf) or named: ROLE=exim:DIR. Repeatable")
    parser.add_argument("--set", action="append", default=[], metavar="ROLE.PARAM=VALUE", dest="settings",
                        help="lay one parameter over ROLE's configuration (Postfix main.cf parameter, Exim "
                             "macro), winning over the scenarios' settings; postfix:ROLE.PARAM=VALUE for "
                             "one implementation only. Repeatable")


def _jobs(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of jobs") from None
    if value < 1:
        raise argparse.ArgumentTypeError("-j needs at least 1")
    return value


# --- harness diff -----------------------------------------------------------------------------------
DIFF_DESCRIPTION = """\
Compare how mail flows with two configurations, before the change ships.

Run mode: run the same scenarios (default: scenarios/) twice, once with the baseline's role options and
once with the candidate's, side by side in one run, then print what changed:

  harness diff --baseline relay=compose/postfix/relay --candidate relay=./new-relay
  harness diff --candidate relay=./new-relay --set-candidate postfix:relay.smtpd_delay_reject=no scenarios/04-*.yaml

--baseline/--candidate take what --role takes (ROLE=DIR or ROLE=IMPLEMENTATION:DIR), --set-baseline/
--set-candidate what --set takes (ROLE.PARAM=VALUE); a side with none runs the standard configuration.

File mode: compare two results files written by `harness run --json`:

  harness diff before.json after.json

Scenario runs are matched by scenario file and implementation. For each that changed: the verdict
(passed -> failed ...) and the key replies that changed, e.g.
  null MX recipient refused at RCPT [postfix]: RCPT 556 5.1.10 -> 250 2.1.5
(the client's replies per command; hops, bounces, queue states and deliveries as in the matrix).
Reply texts, times, run ids, queue ids, dates and Message-IDs are ignored. An MTA refusing a side's
configuration shows as config-error, with the MTA's first line.
"""

DIFF_EPILOG = """\
exit codes: 0 identical behaviour, 1 behaviour changed (including scenarios on one side only and
            configuration errors), 2 usage error, 3 infrastructure error on either side
"""


def _diff_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    diff = sub.add_parser("diff", help="compare mail flow between two configurations (or two results files)",
                          description=DIFF_DESCRIPTION, epilog=DIFF_EPILOG,
                          formatter_class=argparse.RawDescriptionHelpFormatter)
    diff.add_argument("paths", nargs="*", type=Path, default=[], metavar="PATH",
                      help="run mode: scenario files or directories (default: scenarios/); file mode: the two "
                           "results files, baseline first")
    diff.add_argument("--baseline", action="append", default=[], metavar="ROLE=DIR",
                      help="the baseline's configuration directory for ROLE (as --role). Repeatable")
    diff.add_argument("--candidate", action="append", default=[], metavar="ROLE=DIR",
                      help="the candidate's configuration directory for ROLE (as --role). Repeatable")
    diff.add_argument("--set-baseline", action="append", default=[], metavar="ROLE.PARAM=VALUE",
                      help="a parameter laid over the baseline's ROLE (as --set). Repeatable")
    diff.add_argument("--set-candidate", action="append", default=[], metavar="ROLE.PARAM=VALUE",
                      help="a parameter laid over the candidate's ROLE (as --set). Repeatable")
    diff.add_argument("--mta", default=None, metavar="LIST",
                      help=f"run mode: comma-separated implementations ({', '.join(NAMES)}; default: postfix)")
    diff.add_argument("--json-baseline", type=Path, metavar="FILE", help="run mode: write the baseline's results")
    diff.add_argument("--json-candidate", type=Path, metavar="FILE", help="run mode: write the candidate's results")
    diff.add_argument("--markdown", type=Path, metavar="FILE",
                      help="also write the changes as a Markdown table (scenario, implementation, before, after), "
                           "for a merge request")
    _pace_options(diff)
    diff.set_defaults(matrix=False)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="harness", description=DESCRIPTION, epilog=EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    _common_options(parser, None)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    run = sub.add_parser("run", help="run scenarios and report", description="Run scenario files (or "
                         "directories of them) and print a line per scenario and a summary table.")
    run.add_argument("paths", nargs="*", type=Path, default=[Path("scenarios")], metavar="PATH",
                     help="scenario files or directories (default: scenarios/)")
    run.add_argument("--json", type=Path, metavar="FILE", help="write results as JSON")
    run.add_argument("--junit", type=Path, metavar="FILE", help="write results as JUnit XML")
    run.add_argument("--html", type=Path, metavar="FILE", help=HTML_HELP)
    run.add_argument("--mta", default=None, metavar="LIST",
                     help=f"comma-separated MTA implementations to run each scenario on ({', '.join(NAMES)}; "
                          "default: postfix). A scenario's own `mta:` list narrows it further")
    run.add_argument("--matrix", action="store_true",
                     help="run on every implementation (unless --mta) and print the who-replied-what matrix")
    run.add_argument("--keep", choices=["never", "on-failure", "always"], default="never",
                     help="keep a scenario's containers after it ends, for debugging (remove with `harness down`)")
    role_options(run)
    _shard_option(run)
    _pace_options(run)

    matrix = sub.add_parser(
        "matrix", help="run scenarios on every implementation and print who replied what",
        description="Run each scenario on Postfix, Exim and OpenSMTPD (or --mta) and print a table: "
                    "scenarios down, implementations across, each cell the key replies observed and "
                    "pass/fail. --from-json renders an earlier `harness run --json` file instead of running.")
    matrix.add_argument("paths", nargs="*", type=Path, default=[Path("scenarios")], metavar="PATH")
    matrix.add_argument("--mta", default=None, metavar="LIST", help="comma-separated implementations")
    matrix.add_argument("--markdown", type=Path, metavar="FILE",
                        help="also write the table as Markdown (the project keeps docs/compatibility.md)")
    matrix.add_argument("--from-json", type=Path, metavar="FILE", help="render this results file; run nothing")
    matrix.add_argument("--json", type=Path, metavar="FILE", help="write the run's results as JSON")
    role_options(matrix)
    _shard_option(matrix)
    _pace_options(matrix)
    matrix.set_defaults(matrix=True, keep="never", junit=None)

    report = sub.add_parser(
        "report", help="merge results files (e.g. of CI shards) into one report",
        description="Merge the results files of `harness run --json` (e.g. one per CI shard) into one "
                    "report, ordered by scenario file, then implementation; print the summary and the "
                    "matrix. Exit code as for `harness run`: 0 all passed, 1 a failure, 3 an error. The "
                    "same scenario and implementation in two files is a usage error (exit 2).")
    report.add_argument("inputs", nargs="+", type=Path, metavar="RESULTS.json",
                        help="results files written by `harness run --json` / `harness matrix --json`")
    report.add_argument("--json", type=Path, metavar="FILE", help="write the merged results as JSON")
    report.add_argument("--junit", type=Path, metavar="FILE", help="write the merged results as JUnit XML")
    report.add_argument("--html", type=Path, metavar="FILE", help=HTML_HELP)
    report.add_argument("--markdown", type=Path, metavar="FILE", help="write the matrix as Markdown")

    val = sub.add_parser("validate", help="check scenario files without starting anything")
    val.add_argument("paths", nargs="*", type=Path, default=[Path("scenarios")], metavar="PATH")

    up = sub.add_parser("up", help="start the standard topology (or a scenario's) and leave it running",
                        description="Start dns, mx, relay and nomail and print each host's role, address "
                                    "and container id, so you can talk to them (e.g. with swaks). Given a "
                                    "scenario file, start that scenario's topology: its DNS records, its "
                                    "roles and their configuration; no step runs.")
    up.add_argument("scenario", nargs="?", type=Path, default=None, metavar="SCENARIO",
                    help="a scenario file whose topology to start (default: the standard one)")
    up.add_argument("--json", action="store_true", help="print the hosts as JSON")
    up.add_argument("--env", action="store_true",
                    help="print shell assignments (MAILFLOW_RUN, MAILFLOW_RELAY, MAILFLOW_MX, ...) for "
                         '`eval "$(harness up ... --env)"`; a failed client step prints such a replay')
    up.add_argument("--mta", default="postfix", choices=list(NAMES),
                    help="the MTA implementation playing mx, relay and nomail (default: postfix)")
    role_options(up)

    check = sub.add_parser("check", help="start roles and run the MTA's own configuration check, in seconds",
                           description="Start only the roles named by --role/--set (every role when none is "
                                       "named) and run the implementation's own check (postfix check and "
                                       "postconf warnings, exim -bV, smtpd -n). No DNS, no mail. Exit 0 (warnings "
                                       "are printed), 2 when an MTA refuses a configuration: its own message, "
                                       "with the file and line it names.")
    check.add_argument("--mta", default=None, choices=list(NAMES),
                       help="the implementation (default: the one each --role directory is for, else postfix)")
    role_options(check)

    logs = sub.add_parser("logs", help="a kept run's container logs (the MTAs' own log lines)",
                          description="Print `docker logs` of a kept run's role (every MTA role when none is "
                                      "given); RUN is a run id from `harness status` or a --keep line.")
    logs.add_argument("run", metavar="RUN")
    logs.add_argument("role", nargs="?", metavar="ROLE", help="mx, relay, nomail, dns, ... (default: every MTA)")
    logs.add_argument("--tail", type=int, default=0, metavar="N", help="only the last N lines")
    shell = sub.add_parser("shell", help="a shell in a kept run's role container",
                           description="`docker exec -it` into a kept run's role: a shell, or the command "
                                       "given after the role (e.g. `harness shell RUN relay postqueue -p`).")
    shell.add_argument("run", metavar="RUN")
    shell.add_argument("role", metavar="ROLE")
    shell.add_argument("command", nargs=argparse.REMAINDER, metavar="COMMAND")

    down = sub.add_parser("down", help="remove topologies kept by `harness up` or --keep, and what killed runs left")
    down.add_argument("--run", metavar="RUN_ID", help="remove only this run")

    sub.add_parser("status", help="list the harness's runs on this engine")
    images = sub.add_parser("images", help="make sure the engine answers and build every image a run needs")
    images.add_argument("--tools", action="store_true",
                        help="also the image the project's tests read captures with (tshark, compose/capture/)")
    sub.add_parser("schema", help="print the scenario JSON Schema (for editors)")
    _diff_parser(sub)
    for subparser in sub.choices.values():
        _common_options(subparser, argparse.SUPPRESS)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    previous = _handle_signals()  # first: an interrupt at any moment from here on ends without a traceback
    try:
        try:
            parser = build_parser()
            args = parser.parse_args(argv)
        except KeyboardInterrupt as exc:
            return _interrupted(exc, 0)  # nothing started yet
        if args.command is None:
            parser.print_help()
            return EXIT_USAGE
        return _main(args)
    finally:
        if argv is None or _signalled:
            # The process exits now, its work done: SIGINT and SIGTERM are ignored from here on. A Python
            # handler would be reset to the default while the interpreter shuts down, and a signal then
            # would end a finished run with another status (or a traceback). SIGKILL still ends it.
            for ignored in (signal.SIGINT, signal.SIGTERM):
                signal.signal(ignored, signal.SIG_IGN)
        else:  # called in-process with arguments (tests): the caller's handlers back
            for sig, handler in previous.items():
                signal.signal(sig, handler)


def _engine_timeout(exc: BaseException) -> bool:
    """An engine call that ran past its bound (the SDK raises requests' Timeout, not a DockerException)."""
    import requests

    return isinstance(exc, requests.exceptions.Timeout)


def _main(args: argparse.Namespace) -> int:
    try:
        from harness import commands  # imported late: it pulls in docker and testcontainers
    except KeyboardInterrupt as exc:
        return _interrupted(exc, 0)  # nothing started yet

    try:
        return commands.dispatch(args)
    except HarnessError as exc:
        print(f"harness: {exc}", file=sys.stderr)
        return exc.exit_code
    except Exception as exc:  # a bug: say so plainly, keep the traceback for the report, clean up
        if _engine_timeout(exc):
            # Not a bug of ours: every engine call is bounded, and this one ran past its bound.
            _shield()
            cleaned = commands.cleanup_own_runs()
            print(f"harness: the Docker engine did not answer a call in time ({exc}); it may hang on a "
                  f"container (see `docker ps`); removed {cleaned} container(s)/network(s) of this process",
                  file=sys.stderr)
            return EXIT_INFRA
        import traceback

        _shield()
        cleaned = commands.cleanup_own_runs()
        print("harness: internal error (a bug in the harness: please report it with the traceback below); "
              f"removed {cleaned} container(s)/network(s) of this process\n{traceback.format_exc()}",
              file=sys.stderr)
        return EXIT_INFRA
    except KeyboardInterrupt as exc:
        _shield()  # already, unless the interrupt came from elsewhere
        return _interrupted(exc, commands.cleanup_own_runs())

