"""What each `harness` subcommand does. Loading and validation come first, so a bad scenario exits 2
before any container starts."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from harness.errors import EXIT_FAILED, EXIT_INFRA, EXIT_OK, EXIT_USAGE, UsageError
from harness.expect.results import CONFIG_ERROR, ERROR, FAILED, ScenarioResult
from harness.report.console import needs_a_look, print_result, summary_table
from harness.report.files import check_destinations, prepare_destination, write_html, write_json, write_junit
from harness.report.progress import Progress
from harness.scenario.loader import load_scenario, load_scenarios, schema_path
from harness.scenario.model import Mark, Scenario
from harness.scenario.roleoptions import RoleOptions, apply_role_options, parse_role_options
from harness.shard import ShardSpec


def _compose_dir(args: argparse.Namespace) -> Path:
    from harness.cli import _default_compose_dir

    compose: Path = args.compose or _default_compose_dir()
    if not compose.is_dir():
        raise UsageError(f"compose directory {compose} does not exist (use --compose DIR)")
    return compose


def _context(args: argparse.Namespace, progress: Progress, keep: str = "never"):  # type: ignore[no-untyped-def]
    from harness.runner import RunContext
    from harness.topology.engine import ensure_engine
    from harness.topology.images import ImageStore

    compose = _compose_dir(args)
    client = ensure_engine(progress)
    return RunContext(client, ImageStore(client, progress, compose, args.base_image), compose, progress, keep=keep)


def dispatch(args: argparse.Namespace) -> int:
    progress = Progress(quiet=args.quiet)
    handler = {
        "run": cmd_run, "validate": cmd_validate, "up": cmd_up, "down": cmd_down, "status": cmd_status,
        "images": cmd_images, "schema": cmd_schema, "matrix": cmd_matrix, "report": cmd_report,
        "check": cmd_check, "logs": cmd_logs, "shell": cmd_shell,
        "diff": cmd_diff,
    }[args.command]
    check_destinations(output_files(args))  # before anything runs: results are never lost to a bad path
    return handler(args, progress)


# Options naming a file the command writes results to (`up --json` is a flag: only paths count).
OUTPUT_OPTIONS = ("json", "junit", "html", "markdown", "json_baseline", "json_candidate")


def output_files(args: argparse.Namespace) -> dict[str, Path]:
    """The results files the command line asks for, by option (``--json`` -> path)."""
    found: dict[str, Path] = {}
    for dest in OUTPUT_OPTIONS:
        value = getattr(args, dest, None)
        if isinstance(value, str | Path) and str(value):
            found["--" + dest.replace("_", "-")] = Path(value)
    return found


def cmd_validate(args: argparse.Namespace, progress: Progress) -> int:
    scenarios = load_scenarios(args.paths)
    for s in scenarios:
        print(f"ok  {s.path}: {s.name} ({len(s.steps)} steps)")
    return EXIT_OK


def cmd_schema(args: argparse.Namespace, progress: Progress) -> int:
    sys.stdout.write(schema_path().read_text(encoding="utf-8"))
    return EXIT_OK


def cmd_run(args: argparse.Namespace, progress: Progress) -> int:
    from harness.runner import run_all

    prepared = _prepare_run(args, progress, keep=args.keep)
    if prepared is None:
        return EXIT_OK
    ctx, scenarios, mtas = prepared
    results = run_all(ctx, scenarios, on_result=lambda r: print_result(r, sys.stdout), mtas=mtas)
    print()
    print(summary_table(results))
    if args.matrix:
        from harness.report.matrix import matrix_text

        print()
        print(matrix_text(results, mtas))
    _print_needs_a_look(results)
    if args.json:
        write_json(results, args.json)
    if args.junit:
        write_junit(results, args.junit)
    if args.html:
        write_html(results, args.html)
        progress.line(f"wrote {args.html}")
    return _exit_code(results)


def _print_needs_a_look(results: Sequence[ScenarioResult]) -> None:
    text = needs_a_look(results)
    if text:
        print()
        print(text)


def cmd_matrix(args: argparse.Namespace, progress: Progress) -> int:
    from harness.expect.results import result_from_json
    from harness.report.matrix import matrix_markdown, matrix_text

    if args.from_json and args.shard is not None:
        raise UsageError("--shard selects what to run; --from-json runs nothing (merge shards' results with "
                         "`harness report`)")
    if args.from_json:
        try:
            doc = json.loads(args.from_json.read_text(encoding="utf-8"))
            results = [result_from_json(r) for r in doc["scenarios"]]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise UsageError(f"{args.from_json}: not a results file of `harness run --json`: {exc}") from exc
        mtas = list(dict.fromkeys(r.mta for r in results))
        code = EXIT_OK
    else:
        from harness.runner import run_all

        prepared = _prepare_run(args, progress)
        if prepared is None:
            return EXIT_OK
        ctx, scenarios, mtas = prepared
        results = run_all(ctx, scenarios, on_result=lambda r: progress.line(
            f"{r.status.upper():6} {r.name} [{r.mta}] ({r.duration_s:.1f}s)"), mtas=mtas)
        if args.json:
            write_json(results, args.json)
        code = _exit_code(results)
    print(matrix_text(results, mtas))
    _print_needs_a_look(results)
    if args.markdown:
        prepare_destination(args.markdown)
        args.markdown.write_text(matrix_markdown(results, mtas), encoding="utf-8")
        progress.line(f"wrote {args.markdown}")
    return code


def _shard_spec(args: argparse.Namespace) -> ShardSpec | None:
    from harness.shard import parse_shard

    text: str | None = getattr(args, "shard", None)
    return None if text is None else parse_shard(text)


def _apply_shard(scenarios: Sequence[Scenario], mtas: Sequence[str], spec: ShardSpec,
                 progress: Progress) -> list[Scenario]:
    """The scenarios narrowed to this shard's (scenario, implementation) pairs; empty for an empty
    shard, which says so on stdout (an empty shard is not an error: CI matrices have a fixed N)."""
    from harness.runner import implementations_for
    from harness.shard import describe, restrict, shard

    pairs = [(s, m) for s in scenarios for m in implementations_for(s, mtas)]
    selected = shard(pairs, spec.index, spec.total)
    line = describe(selected, pairs, spec)
    if selected:
        progress.line(line)
    else:
        print(line)
    return restrict(scenarios, selected)


def _write_empty(args: argparse.Namespace) -> None:
    """The result files an empty shard was asked for, with no results in them."""
    if getattr(args, "json", None):
        write_json([], args.json)
    if getattr(args, "junit", None):
        write_junit([], args.junit)
    if getattr(args, "html", None):
        write_html([], args.html)
    if getattr(args, "markdown", None):
        from harness.report.matrix import matrix_markdown

        prepare_destination(args.markdown)
        args.markdown.write_text(matrix_markdown([], []), encoding="utf-8")


def cmd_report(args: argparse.Namespace, progress: Progress) -> int:
    """Merge results files (one per CI shard) into one report; exit code as for `harness run`."""
    from harness.report.console import details, scenario_line
    from harness.report.matrix import matrix_markdown, matrix_text
    from harness.report.merge import load_results, merge_results, mta_order

    results = merge_results([(path, load_results(path)) for path in args.inputs])
    if not results:
        # Every shard empty cannot happen for the shards of one run (a run selecting nothing exits 2).
        raise UsageError("no results in " + ", ".join(str(p) for p in args.inputs)
                         + ": pass the results files of every shard")
    mtas = mta_order([r.mta for r in results])
    for r in results:
        text = details(r)
        if text:
            print(scenario_line(r))
            print(text)
            print()
    print(summary_table(results))
    print()
    print(matrix_text(results, mtas))
    _print_needs_a_look(results)
    if args.json:
        write_json(results, args.json)
        progress.line(f"wrote {args.json}")
    if args.junit:
        write_junit(results, args.junit)
        progress.line(f"wrote {args.junit}")
    if args.html:
        write_html(results, args.html)
        progress.line(f"wrote {args.html}")
    if args.markdown:
        prepare_destination(args.markdown)
        args.markdown.write_text(matrix_markdown(results, mtas), encoding="utf-8")
        progress.line(f"wrote {args.markdown}")
    return _exit_code(results)


def _prepare_run(args: argparse.Namespace, progress: Progress, keep: str = "never"
                 ) -> tuple[Any, list[Scenario], list[str]] | None:
    """What `run` and `matrix` run: the scenarios (loaded and checked before the engine is touched), the
    implementations, this shard's part of them, and a context paced by -j/--fresh. None: an empty shard,
    whose (empty) results are already written."""
    from harness.runner import default_jobs

    spec = _shard_spec(args)
    options = command_line_roles(args)
    scenarios = load_scenarios(args.paths)
    if not scenarios:
        raise UsageError("no scenario files found in " + ", ".join(str(p) for p in args.paths))
    mtas = _selected_mtas(args, _compose_dir(args))
    check_selection(scenarios, mtas, _how_selected(args))
    check_role_options(options, mtas, _how_selected(args))
    scenarios = apply_role_options(scenarios, options)
    for line in options.describe():
        progress.line(f"command line: {line}")
    if spec is not None:
        scenarios = _apply_shard(scenarios, mtas, spec, progress)
        if not scenarios:
            _write_empty(args)
            return None
    ctx = _context(args, progress, keep=keep)
    ctx.fresh = bool(getattr(args, "fresh", False))
    ctx.jobs = getattr(args, "jobs", None) or default_jobs()
    progress.line(f"running {len(scenarios)} scenario(s) on {', '.join(mtas)}"
                  f"{' (fresh topologies)' if ctx.fresh else ''}, {ctx.jobs} at a time")
    return ctx, scenarios, mtas


def command_line_roles(args: argparse.Namespace) -> RoleOptions:
    return parse_role_options(getattr(args, "role", None) or [], getattr(args, "settings", None) or [])


def check_role_options(options: RoleOptions, mtas: Sequence[str], how: str) -> None:
    """A --role directory for an implementation the run does not run is a mistake, not a no-op."""
    for role, dirs in options.config_dirs.items():
        if not any(m in mtas for m in dirs):
            named = ", ".join(f"{m} ({p})" for m, p in dirs.items())
            raise UsageError(f"--role {role}: the directory is for {named}, which this run does not run "
                             f"({', '.join(mtas)} selected by {how}); add --mta {','.join(dirs)}")


def _exit_code(results: list[ScenarioResult]) -> int:
    if any(r.status == ERROR for r in results):
        return EXIT_INFRA
    if any(r.status == CONFIG_ERROR for r in results):
        return EXIT_USAGE  # the configuration must change: not a failure a retry could fix
    if any(r.status == FAILED for r in results):
        return EXIT_FAILED
    return EXIT_OK


def _selected_mtas(args: argparse.Namespace, compose: Path) -> list[str]:
    from harness.mta import parse_mtas
    from harness.topology.mta import available

    if args.mta is not None:
        names = parse_mtas(args.mta)
        missing = [m for m in names if m not in available(compose)]
        if missing:
            raise UsageError(f"no image directory for {', '.join(missing)} in {compose}")
        return names
    return available(compose) if args.matrix else ["postfix"]


def _how_selected(args: argparse.Namespace) -> str:
    if args.mta is not None:
        return f"--mta {args.mta}"
    if getattr(args, "matrix", False) or args.command == "matrix":
        return "every implementation with an image directory"
    return "the default implementation, without --mta"


def check_selection(scenarios: Sequence[Scenario], mtas: Sequence[str], how: str) -> None:
    """A run that runs nothing is an error, not a green run: say what was selected and why nothing is left."""
    from harness.runner import implementations_for

    if any(implementations_for(s, mtas) for s in scenarios):
        return
    shown = 10
    lines = [f"  {s.path}: mta: [{', '.join(s.mtas)}]" for s in scenarios[:shown]]
    if len(scenarios) > shown:
        lines.append(f"  ... and {len(scenarios) - shown} more")
    wanted = list(dict.fromkeys(m for s in scenarios for m in s.mtas))
    selected = ", ".join(mtas) if mtas else "no implementation"
    raise UsageError(
        f"nothing to run: {selected} selected ({how}), but none of the {len(scenarios)} scenario(s) runs on "
        f"{'it' if len(mtas) == 1 else 'them'}:\n" + "\n".join(lines)
        + f"\nselect what they run on with --mta {','.join(wanted)}, or widen their mta: lists")


def cmd_images(args: argparse.Namespace, progress: Progress) -> int:
    from harness.plan import plan_scenario
    from harness.topology.mta import available
    from harness.topology.topology import build_images

    ctx = _context(args, progress)
    built: dict[str, dict[str, str]] = {}
    with ctx.images.parallel():  # independent images side by side; tags usable once the block is left
        for mta in available(ctx.compose_dir):
            built[mta] = build_images(ctx.images, plan_scenario(None, ctx.compose_dir, mta=mta).topology)
        # Only the project's tests read captures with tshark: a run never needs this image.
        tools = args.tools and (ctx.compose_dir / "capture" / "Dockerfile").is_file()
        capture = ctx.images.image("capture") if tools else None
    for mta, images in built.items():
        for role, tag in images.items():
            print(f"{mta:10} {role:8} {tag}")
    if capture is not None:
        print(f"{'':10} {'capture':8} {capture}")
    return EXIT_OK


def cmd_up(args: argparse.Namespace, progress: Progress) -> int:
    from harness.plan import plan_scenario
    from harness.runner import bring_up
    from harness.topology.labels import new_run_id
    from harness.topology.topology import describe

    options = command_line_roles(args)
    check_role_options(options, [args.mta], f"--mta {args.mta}")
    scenario = _command_line_scenario(options)
    if args.scenario is not None:
        scenario = apply_role_options([load_scenario(args.scenario)], options)[0]
        check_selection([scenario], [args.mta], f"--mta {args.mta}")
    ctx = _context(args, progress)
    ctx.reap()
    plan = plan_scenario(scenario, ctx.compose_dir, mta=args.mta)
    topology = bring_up(ctx, plan, run_id=new_run_id(), keep_label=True)
    # The topology outlives this process; the keys on the host must not (its containers keep theirs).
    topology.forget_keys()
    hosts = describe(topology)
    if args.env:
        from harness.report.reproduce import env_lines

        print("\n".join(env_lines(topology.run_id, {h["role"]: h["address"] for h in hosts})))
    elif args.json:
        print(json.dumps({"run_id": topology.run_id, "network": topology.network_name,
                          "client_address": topology.gateway, "hosts": hosts}, indent=2))
    else:
        print(f"run {topology.run_id} ({args.mta}) on network {topology.network_name} "
              f"(you connect from {topology.gateway})")
        for h in hosts:
            print(f"  {h['role']:7} {h['hostname']:22} {h['address']:15} {h['container']}")
        mx = topology.address("mx")
        print(f"try: swaks --server {mx} --to bob@example.test --from alice@origin.test")
        print(f"remove with: harness down --run {topology.run_id}")
    return EXIT_OK


def cmd_check(args: argparse.Namespace, progress: Progress) -> int:
    """Start only the roles named by --role/--set (all, when none is named), with the dns role, and run
    each implementation's own configuration check: no mail. Exit 0 (warnings are printed), 2 when an MTA
    refuses a configuration."""
    from concurrent.futures import ThreadPoolExecutor

    from harness.dns.preflight import wait_until_answering
    from harness.plan import plan_scenario
    from harness.runner import DNS_READY_TIMEOUT_S
    from harness.topology.labels import new_run_id
    from harness.topology.topology import build_images, create_network, start_hosts

    options = command_line_roles(args)
    named = set(options.config_dirs) | set(options.settings)
    mtas = [args.mta] if args.mta else sorted({m for dirs in options.config_dirs.values() for m in dirs}) or ["postfix"]
    check_role_options(options, mtas, f"--mta {args.mta}" if args.mta else "the --role directories")
    ctx = _context(args, progress)
    ctx.reap()
    code = EXIT_OK
    for mta in mtas:
        plan = plan_scenario(_command_line_scenario(options), ctx.compose_dir, mta=mta)
        hosts = [h for h in plan.topology.hosts if h.mta is not None and (not named or h.role in named)]
        images = build_images(ctx.images, plan.topology)
        topology, addresses = create_network(ctx.client, plan.topology, run_id=new_run_id())
        # The dns role too: an MTA that looks its client up before greeting (OpenSMTPD) would otherwise
        # wait out its resolver's timeouts, past the greeting bound.
        dns_only = dataclasses.replace(plan.topology, hosts=tuple(h for h in plan.topology.hosts if h.mta is None))
        start_hosts(topology, dns_only, images, plan.zone_setup(addresses),
                    lambda server, zone: wait_until_answering(server, zone, timeout_s=DNS_READY_TIMEOUT_S),
                    progress=Progress(quiet=True))

        try:
            with ThreadPoolExecutor(max_workers=len(hosts) or 1) as pool:
                outcomes = list(pool.map(lambda h, t=topology, i=images, a=addresses: _check_role(t, h, i, a),
                                         hosts))
        finally:
            topology.destroy()
        for host, warnings, refused in outcomes:
            print(f"{host.role} ({mta}, {host.config_dir}): "
                  f"{'configuration error' if refused else 'ok' if not warnings else 'warnings'}")
            for line in warnings:
                print(f"  {line}")
            if refused:
                print("\n".join(f"  {line}" for line in refused.splitlines()))
                code = EXIT_USAGE
    return code


def _check_role(topology: Any, host: Any, images: dict[str, str], addresses: dict[str, str]
                ) -> tuple[Any, list[str], str | None]:
    """Start one role; its check's warnings, or the MTA's refusal."""
    from harness.errors import ConfigurationError
    from harness.topology.topology import start_roles

    try:
        start_roles(topology, [host], images, addresses)
    except ConfigurationError as exc:
        return host, [], str(exc)
    return host, list(topology.hosts[host.role].check_warnings), None


def _command_line_scenario(options: RoleOptions) -> Scenario | None:
    """The standard topology with the command line's role options, as a scenario with no steps."""
    if not options:
        return None
    here = Mark("<command line>", 1, 1)
    empty = Scenario(Path("<command line>"), "command line", "", (), {}, (), here)
    return apply_role_options([empty], options)[0]


def _run_container(args: argparse.Namespace, progress: Progress, role: str) -> str:
    from harness.topology.labels import run_containers

    containers = run_containers(_client(progress), args.run)
    if not containers:
        raise UsageError(f"no run {args.run} on this engine (see `harness status`)")
    if role not in containers:
        raise UsageError(f"run {args.run} has no role {role!r} (it has: {', '.join(containers)})")
    return containers[role]


def cmd_logs(args: argparse.Namespace, progress: Progress) -> int:
    """A kept run's container logs: one role, or every MTA role one after another."""
    from harness.topology.labels import run_containers

    roles = [args.role] if args.role else [r for r in run_containers(_client(progress), args.run)
                                           if not r.endswith("-capture")]
    if not roles:
        raise UsageError(f"no run {args.run} on this engine (see `harness status`)")
    for role in roles:
        name = _run_container(args, progress, role)
        if len(roles) > 1:
            print(f"=== {role} ({name}) ===", flush=True)
        done = subprocess.run(["docker", "logs", *(["--tail", str(args.tail)] if args.tail else []), name],
                              check=False)
        if done.returncode != 0:
            return EXIT_INFRA
    return EXIT_OK


def cmd_shell(args: argparse.Namespace, progress: Progress) -> int:
    """A shell (or a command) in a kept run's role container."""
    name = _run_container(args, progress, args.role)
    tty = ["-it"] if sys.stdin.isatty() else ["-i"]
    command = list(args.command) or ["sh"]
    return subprocess.run(["docker", "exec", *tty, name, *command], check=False).returncode


def cmd_down(args: argparse.Namespace, progress: Progress) -> int:
    from harness.topology.labels import list_runs, remove_run

    ctx_client = _client(progress)
    # Without --run: what `up` and --keep left, and what runs killed before their cleanup (kill -9) left.
    runs = [r for r in list_runs(ctx_client) if (r.run_id == args.run if args.run else r.kept or r.owner_gone())]
    if args.run and not runs:
        raise UsageError(f"no run {args.run} on this engine (see `harness status`)")
    for run in runs:
        n = remove_run(ctx_client, run.run_id)
        print(f"removed run {run.run_id} ({n} container(s)/network(s))")
    if not runs:
        print("nothing to remove")
    return EXIT_OK


def cmd_status(args: argparse.Namespace, progress: Progress) -> int:
    from harness.topology.labels import list_runs

    runs = list_runs(_client(progress))
    if not runs:
        print("no harness runs on this engine")
    for r in runs:
        state = "kept" if r.kept else ("abandoned" if r.owner_gone() else f"running (pid {r.pid})")
        print(f"{r.run_id}  {state:20} {len(r.containers)} container(s), {len(r.networks)} network(s)")
    return EXIT_OK


def _client(progress: Progress):  # type: ignore[no-untyped-def]
    from harness.topology.engine import ensure_engine

    return ensure_engine(progress, may_start=False)


def cleanup_own_runs() -> int:
    """After an interrupt: remove every run this process made that is not meant to be kept."""
    try:
        from harness.topology.engine import ensure_engine
        from harness.topology.labels import list_runs, remove_run

        client = ensure_engine(Progress(quiet=True), may_start=False)
        return sum(remove_run(client, r.run_id) for r in list_runs(client)
                   if r.pid == os.getpid() and not r.kept)
    except Exception:  # cleanup after Ctrl-C must never raise a second traceback
        return 0



# --- harness diff: the same scenarios with two configurations, or two results files ------------------

_DIFF_SIDES = ("baseline", "candidate")


def cmd_diff(args: argparse.Namespace, progress: Progress) -> int:
    """What changed between a baseline and a candidate: run the scenarios with both (side by side, in
    one run) or read two results files. Exit 0 identical, 1 changed, 2 usage, 3 an infrastructure
    error on either side."""
    from harness.report.diff import diff_markdown, diff_results, diff_text

    running = any(getattr(args, name) for side in _DIFF_SIDES for name in (side, f"set_{side}"))
    before, after = _diff_run(args, progress) if running else _diff_files(args, progress)
    try:
        diff = diff_results(before, after)
    except ValueError as exc:
        raise UsageError(str(exc)) from exc
    print(diff_text(diff))
    if args.markdown:
        prepare_destination(args.markdown)
        args.markdown.write_text(diff_markdown(diff), encoding="utf-8")
        progress.line(f"wrote {args.markdown}")
    return diff.exit_code


def _diff_files(args: argparse.Namespace, progress: Progress) -> tuple[list[ScenarioResult], list[ScenarioResult]]:
    """File mode: ``harness diff A.json B.json``."""
    from harness.report.merge import load_results

    for flag, given in (("--mta", args.mta is not None), ("--json-baseline", args.json_baseline),
                        ("--json-candidate", args.json_candidate), ("--fresh", args.fresh),
                        ("-j", args.jobs is not None)):
        if given:
            raise UsageError(f"diff: {flag} applies when running scenarios (with --baseline/--candidate/"
                             "--set-baseline/--set-candidate), not when comparing two results files")
    if len(args.paths) != 2:
        raise UsageError("diff: give --baseline/--candidate (and/or --set-baseline/--set-candidate) to run the "
                         "scenarios with two configurations, or exactly two results files of `harness run --json` "
                         f"to compare (got {len(args.paths)} path(s))")
    for path in args.paths:
        if path.is_dir() or path.suffix in (".yaml", ".yml"):
            raise UsageError(f"diff: {path} is a scenario {'directory' if path.is_dir() else 'file'}, not a results "
                             "file of `harness run --json`; to run scenarios with two configurations, give "
                             "--baseline/--candidate (or --set-baseline/--set-candidate)")
    progress.line(f"comparing {args.paths[0]} (baseline) with {args.paths[1]} (candidate)")
    return load_results(args.paths[0]), load_results(args.paths[1])


def _diff_side_message(side: str, message: str) -> str:
    """A --role/--set complaint, named as the side's option."""
    for option, named in (("--role ", f"--{side} "), ("--set ", f"--set-{side} ")):
        if message.startswith(option):
            return named + message[len(option):]
    return f"--{side}: {message}"


def _diff_side_options(args: argparse.Namespace, side: str) -> RoleOptions:
    try:
        return parse_role_options(getattr(args, side), getattr(args, f"set_{side}"))
    except UsageError as exc:
        raise UsageError(_diff_side_message(side, exc.message)) from exc


def _diff_run(args: argparse.Namespace, progress: Progress) -> tuple[list[ScenarioResult], list[ScenarioResult]]:
    """Run mode: every scenario with the baseline's role options and with the candidate's, both sides'
    pairs in one run_all (their scenarios are distinct variants: they share the implementations'
    topologies and run side by side), each side's results written where asked."""
    from harness.errors import InfrastructureError
    from harness.runner import default_jobs, implementations_for, run_all

    for path in args.paths:
        if path.suffix == ".json":
            raise UsageError(f"diff: {path} looks like a results file; compare two results files without "
                             "--baseline/--candidate/--set-baseline/--set-candidate: harness diff A.json B.json")
    paths = list(args.paths) or [Path("scenarios")]
    options = {side: _diff_side_options(args, side) for side in _DIFF_SIDES}
    # One scenario per file: a file named twice would make two results of one (file, implementation).
    scenarios = list({s.path.resolve(): s for s in load_scenarios(paths)}.values())
    if not scenarios:
        raise UsageError("no scenario files found in " + ", ".join(str(p) for p in paths))
    mtas = _selected_mtas(args, _compose_dir(args))
    how = _how_selected(args)
    check_selection(scenarios, mtas, how)
    for side, side_options in options.items():
        try:
            check_role_options(side_options, mtas, how)
        except UsageError as exc:
            raise UsageError(_diff_side_message(side, exc.message)) from exc
    baseline = apply_role_options(scenarios, options["baseline"])
    candidate = apply_role_options(scenarios, options["candidate"])
    pairs = [(s, m) for s in baseline for m in implementations_for(s, mtas)]
    half = len(pairs)
    pairs += [(s, m) for s in candidate for m in implementations_for(s, mtas)]
    for side, side_options in options.items():
        for line in side_options.describe() or ["the standard configuration"]:
            progress.line(f"{side}: {line}")
    ctx = _context(args, progress)
    ctx.fresh = bool(args.fresh)
    ctx.jobs = args.jobs or default_jobs()
    progress.line(f"running {len(scenarios)} scenario(s) on {', '.join(mtas)} for the baseline and the candidate "
                  f"({len(pairs)} scenario runs){' (fresh topologies)' if ctx.fresh else ''}, {ctx.jobs} at a time")

    def report(r: ScenarioResult) -> None:
        progress.line(f"{r.status.upper():6} {r.name} [{r.mta}] ({r.duration_s:.1f}s)")

    # Results come back in the order of `pairs`: the baseline's, then the candidate's.
    results = run_all(ctx, [*baseline, *candidate], on_result=report, pairs=pairs)
    if len(results) != len(pairs):
        raise InfrastructureError(f"diff: the run returned {len(results)} result(s) for {len(pairs)} scenario runs")
    before, after = results[:half], results[half:]
    for path, side_results in ((args.json_baseline, before), (args.json_candidate, after)):
        if path:
            write_json(side_results, path)
            progress.line(f"wrote {path}")
    return before, after
