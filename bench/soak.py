"""mailflow-harness soak: many `harness run`s, several at once on one engine, some of them sent SIGINT,
SIGTERM or SIGKILL at a random moment; afterwards, nothing of theirs may be left on the engine.

Run: ``.venv/bin/python bench/soak.py [--runs 18] [--seed N] [--parallel 3]`` (or ``make soak``;
``make soak SOAK_ARGS="--runs 200"`` for the long version). One line of figures goes to stdout, the
figures and every run's outcome to build/soak.json; the exit status is 1 when a promise was broken:

- a run not signalled passes (exit 0);
- a run sent SIGINT or SIGTERM exits 130 or 143 (0 when it had passed and was exiting already),
  never with a traceback, and leaves no container or network with its process id behind;
- after a SIGKILL (no cleanup possible), what the run left is removed as a user would: `harness status`
  shows it abandoned, `harness down` removes it (and any later `harness run` reaps it first);
- at the end no container or network of any soak run is left, and no image was created: every image the
  runs use exists before the first run (the normal tagged images, built once and shared); an image that
  appears during the soak (a tagged one rebuilt, or a dangling one an interrupted build left) is a leftover.

Signals are sent at a moment drawn uniformly from the whole life of a run (start-up, images, topology
start, scenarios, teardown); ``--seed`` repeats the same plan (the moments the processes reach differ).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import docker

ROOT = Path(__file__).resolve().parents[1]
HARNESS = [sys.executable, "-m", "harness", "-q"]
OUTPUT = ROOT / "build" / "soak.json"
SCENARIOS = ("scenarios/01-direct-354.yaml", "scenarios/02-relay-354.yaml", "scenarios/03-nomail-521.yaml")
RUN_LABEL = "mailflow-harness.run"
PID_LABEL = "mailflow-harness.pid"
KINDS = {"SIGINT": signal.SIGINT, "SIGTERM": signal.SIGTERM, "SIGKILL": signal.SIGKILL}
EXPECTED_EXIT = {"SIGINT": 130, "SIGTERM": 143}
RUN_TIMEOUT_S = 600.0  # one run of the three scenarios takes 10-40 s; past this it is stuck


def log(message: str) -> None:
    print(f"[soak {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


@dataclass
class Run:
    index: int
    signal: str | None  # planned: SIGINT, SIGTERM, SIGKILL or None
    at_s: float  # when, after the start
    pid: int = 0
    sent: bool = False  # False: it ended before the moment came
    sent_at_s: float | None = None
    exit_code: int | None = None
    duration_s: float = 0.0
    traceback: bool = False
    left_at_exit: int = 0  # its containers + networks right after it exited
    problems: list[str] = field(default_factory=list)
    stderr_tail: str = ""


class Soak:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.rng = random.Random(args.seed)
        self.client = docker.from_env(timeout=90)
        self.runs: list[Run] = []
        self.pids: set[int] = set()
        self.downs: list[dict[str, Any]] = []
        self.scratch = ROOT / "build" / "soak"
        self.scratch.mkdir(parents=True, exist_ok=True)

    # -- the engine's view ----------------------------------------------------------------------------
    def own(self, pid: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        label = {"label": f"{PID_LABEL}={pid}"}
        return self.client.api.containers(all=True, filters=label), self.client.api.networks(filters=label)

    def images(self) -> dict[str, list[str]]:
        return {str(i["Id"]): list(i.get("RepoTags") or []) for i in self.client.api.images(all=True)}

    # -- the plan -------------------------------------------------------------------------------------
    def plan(self) -> list[Run]:
        """A fraction of the runs gets a signal, the kinds in turn (shuffled), at a uniform moment."""
        signalled = round(self.args.runs * self.args.signalled)
        kinds = [list(KINDS)[i % len(KINDS)] for i in range(signalled)] + [None] * (self.args.runs - signalled)
        self.rng.shuffle(kinds)
        return [Run(i, kind, round(self.rng.uniform(self.args.earliest, self.args.latest), 2) if kind else 0.0)
                for i, kind in enumerate(kinds)]

    # -- one run --------------------------------------------------------------------------------------
    def start(self, run: Run) -> subprocess.Popen[str]:
        err = (self.scratch / f"run-{run.index}.err").open("w")
        proc = subprocess.Popen(
            [*HARNESS, "run", *self.args.scenarios, "--mta", self.args.mta, "-j", "1",
             "--json", str(self.scratch / f"run-{run.index}.json")],
            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=err, text=True,
            # Its own session: the soak's terminal Ctrl-C is the soak's (passed on below), and SIGINT is
            # not inherited ignored (as under `make ... &`).
            start_new_session=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        err.close()
        run.pid = proc.pid
        self.pids.add(proc.pid)
        return proc

    def finish(self, run: Run, proc: subprocess.Popen[str], started: float) -> None:
        run.exit_code = proc.returncode
        run.duration_s = round(time.monotonic() - started, 2)
        err = (self.scratch / f"run-{run.index}.err").read_text(errors="replace")
        run.traceback = "Traceback" in err
        run.stderr_tail = "\n".join(err.strip().splitlines()[-6:])
        containers, networks = self.own(run.pid)
        run.left_at_exit = len(containers) + len(networks)
        kind = run.signal if run.sent else None
        if run.traceback:
            run.problems.append("traceback on stderr")
        if kind is None and run.exit_code != 0:
            run.problems.append(f"not signalled, exit {run.exit_code}")
        if kind in EXPECTED_EXIT and run.exit_code not in (EXPECTED_EXIT[kind], 0):
            run.problems.append(f"{kind}: exit {run.exit_code}, expected {EXPECTED_EXIT[kind]}")
        if kind == "SIGKILL" and run.exit_code != -signal.SIGKILL:
            run.problems.append(f"SIGKILL: exit {run.exit_code}")
        if kind != "SIGKILL" and run.left_at_exit:
            run.problems.append(f"left {len(containers)} container(s), {len(networks)} network(s) at exit")
        if kind == "SIGKILL":
            self.down_after_kill(run)
        what = f"{kind} at {run.sent_at_s:.1f}s" if kind else (
            f"{run.signal} planned at {run.at_s:.1f}s, ended first" if run.signal else "not signalled")
        log(f"run {run.index:3}: {what}: exit {run.exit_code} after {run.duration_s:.1f}s"
            + (f", {run.left_at_exit} object(s) left" if run.left_at_exit else "")
            + (f"  PROBLEM: {'; '.join(run.problems)}" if run.problems else ""))

    def down_after_kill(self, run: Run) -> None:
        """As a user after kill -9: `harness status` says abandoned, `harness down --run` removes it (a
        plain `harness down` does too, but would also remove other people's `harness up` topologies on a
        shared engine). Another soak run starting meanwhile may have reaped it already: also fine."""
        status = subprocess.run([*HARNESS, "status"], cwd=ROOT, capture_output=True, text=True, timeout=120,
                                check=False)
        mine = {str(c["Labels"][RUN_LABEL]) for c in self.own(run.pid)[0]}
        mine |= {str(n["Labels"][RUN_LABEL]) for n in self.own(run.pid)[1]}
        for run_id in sorted(mine):
            shown = next((line for line in status.stdout.splitlines() if line.startswith(run_id)), "")
            down = subprocess.run([*HARNESS, "down", "--run", run_id], cwd=ROOT, capture_output=True, text=True,
                                  timeout=300, check=False)
            gone = down.returncode == 0 or "no run" in down.stderr  # reaped by another run meanwhile
            self.downs.append({"run": run.index, "run_id": run_id, "status": shown.strip(),
                               "down_exit": down.returncode})
            if "abandoned" not in shown and shown:
                run.problems.append(f"harness status did not show {run_id} abandoned: {shown.strip()}")
            if not gone:
                run.problems.append(f"harness down --run {run_id}: exit {down.returncode}: {down.stderr.strip()}")

    # -- all runs -------------------------------------------------------------------------------------
    def soak(self) -> dict[str, Any]:
        images_before = self.images()
        began = time.monotonic()
        pending = self.plan()
        active: list[tuple[Run, subprocess.Popen[str], float]] = []
        try:
            while pending or active:
                while pending and len(active) < self.args.parallel:
                    run = pending.pop(0)
                    active.append((run, self.start(run), time.monotonic()))
                time.sleep(0.05)
                for item in list(active):
                    run, proc, started = item
                    age = time.monotonic() - started
                    if run.signal and not run.sent and proc.poll() is None and age >= run.at_s:
                        proc.send_signal(KINDS[run.signal])
                        run.sent, run.sent_at_s = True, round(age, 2)
                    if proc.poll() is None and age > RUN_TIMEOUT_S:
                        run.problems.append(f"still running after {RUN_TIMEOUT_S:.0f} s: killed")
                        proc.kill()
                    if proc.poll() is not None:
                        active.remove(item)
                        self.finish(run, proc, started)
                        self.runs.append(run)
        except KeyboardInterrupt:
            log("interrupted: passing SIGINT on to the running runs and waiting for their cleanup")
            for _, proc, _ in active:
                proc.send_signal(signal.SIGINT)
            for _, proc, _ in active:
                proc.wait(timeout=300)
            raise
        return self.figures(images_before, time.monotonic() - began)

    def figures(self, images_before: dict[str, list[str]], took: float) -> dict[str, Any]:
        time.sleep(1.0)  # removals another run started in its last instant
        left_containers = left_networks = 0
        for pid in sorted(self.pids):
            containers, networks = self.own(pid)
            left_containers += len(containers)
            left_networks += len(networks)
        images_after = self.images()
        new_images = {i: tags for i, tags in images_after.items() if i not in images_before}
        runs = self.runs
        not_signalled = [r for r in runs if not r.sent]
        interrupted = [r for r in runs if r.sent and r.signal in EXPECTED_EXIT]
        sent = {kind: sum(1 for r in runs if r.sent and r.signal == kind) for kind in KINDS}
        figures: dict[str, Any] = {
            "runs": len(runs),
            "parallel": self.args.parallel,
            "seed": self.args.seed,
            "scenarios": list(self.args.scenarios),
            "mta": self.args.mta,
            "signals_sent": sent,
            "signals_planned_but_run_ended_first": sum(1 for r in runs if r.signal and not r.sent),
            "not_signalled": len(not_signalled),
            "not_signalled_passed": sum(1 for r in not_signalled if r.exit_code == 0),
            "pass_rate_not_signalled": (round(sum(1 for r in not_signalled if r.exit_code == 0) / len(not_signalled), 4)
                                        if not_signalled else None),
            "interrupted_exit_as_expected": sum(1 for r in interrupted if r.exit_code == EXPECTED_EXIT[str(r.signal)]),
            "interrupted_finished_first": sum(1 for r in interrupted if r.exit_code == 0),
            "interrupted": len(interrupted),
            "tracebacks": sum(1 for r in runs if r.traceback),
            "left_at_exit_after_sigint_sigterm": sum(r.left_at_exit for r in interrupted),
            "left_at_exit_after_sigkill": sum(r.left_at_exit for r in runs if r.sent and r.signal == "SIGKILL"),
            "downs_after_sigkill": len(self.downs),
            "leftover_containers": left_containers,
            "leftover_networks": left_networks,
            "leftover_images": len(new_images),
            "leftover_image_tags": sorted(t for tags in new_images.values() for t in tags),
            "problems": sum(len(r.problems) for r in runs),
            "duration_s": round(took, 1),
        }
        figures["ok"] = (figures["problems"] == 0 and left_containers == 0 and left_networks == 0
                         and not new_images and len(runs) == self.args.runs)
        return {"figures": figures, "runs": [asdict(r) for r in runs], "downs": self.downs}


def line(f: dict[str, Any]) -> str:
    sent = f["signals_sent"]
    rate = "n/a" if f["pass_rate_not_signalled"] is None else f"{100 * f['pass_rate_not_signalled']:.0f}%"
    return (f"soak: {f['runs']} runs, {f['parallel']} at once, seed {f['seed']}: signals SIGINT {sent['SIGINT']}, "
            f"SIGTERM {sent['SIGTERM']}, SIGKILL {sent['SIGKILL']} ({f['signals_planned_but_run_ended_first']} "
            f"planned but the run ended first); not signalled {f['not_signalled_passed']}/{f['not_signalled']} passed "
            f"({rate}); interrupted {f['interrupted_exit_as_expected']}/{f['interrupted']} exited 130/143 "
            f"({f['interrupted_finished_first']} had finished), left at exit {f['left_at_exit_after_sigint_sigterm']}; "
            f"tracebacks {f['tracebacks']}; after SIGKILL {f['left_at_exit_after_sigkill']} object(s) left, "
            f"{f['downs_after_sigkill']} `harness down`; leftovers: {f['leftover_containers']} containers, "
            f"{f['leftover_networks']} networks, {f['leftover_images']} images; problems {f['problems']}; "
            f"{f['duration_s']:.0f}s -> {'OK' if f['ok'] else 'FAILED'}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=18, help="runs of `harness run` (default 18: 2-4 min)")
    parser.add_argument("--seed", type=int, default=None, help="the plan's seed (default: random, printed)")
    parser.add_argument("--parallel", type=int, default=3, help="runs at once on the engine (default 3)")
    parser.add_argument("--signalled", type=float, default=0.5, help="fraction of runs sent a signal (0.5)")
    parser.add_argument("--earliest", type=float, default=0.5, help="earliest signal, s after the start (0.5)")
    parser.add_argument("--latest", type=float, default=20.0,
                        help="latest signal, s after the start (20: about the end of a run, 3 at once on 2 cores)")
    parser.add_argument("--mta", default="postfix", help="the implementation under test (postfix)")
    parser.add_argument("--json", type=Path, default=OUTPUT, help=f"where the figures go ({OUTPUT.relative_to(ROOT)})")
    parser.add_argument("scenarios", nargs="*", default=list(SCENARIOS), help="scenario files (three bundled ones)")
    args = parser.parse_args()
    if args.seed is None:
        args.seed = random.randrange(1 << 16)
    log(f"{args.runs} runs of {len(args.scenarios)} scenario(s) on {args.mta}, {args.parallel} at once, "
        f"seed {args.seed} (--seed repeats the plan)")
    images = subprocess.run([*HARNESS, "images"], cwd=ROOT, capture_output=True, text=True, check=False)
    if images.returncode != 0:
        print(f"soak: the images could not be built:\n{images.stderr}", file=sys.stderr)
        return images.returncode
    result = Soak(args).soak()
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    print(line(result["figures"]), flush=True)
    for run in result["runs"]:
        for problem in run["problems"]:
            print(f"  run {run['index']} (pid {run['pid']}): {problem}\n    {run['stderr_tail']}", file=sys.stderr)
    return 0 if result["figures"]["ok"] else 1


if __name__ == "__main__":
    os.chdir(ROOT)
    sys.exit(main())
