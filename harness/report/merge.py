"""Merging the results files of several runs (the shards of a CI matrix) into one report."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from harness.errors import UsageError
from harness.expect.results import CONFIG_ERROR, ERROR, FAILED, PASSED, ScenarioResult, result_from_json
from harness.mta import NAMES

_STATUSES = (PASSED, FAILED, ERROR, CONFIG_ERROR)


def load_results(path: Path) -> list[ScenarioResult]:
    """The results of one `harness run --json` file; a usage error naming the file when it cannot be
    read or is not such a file."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"{path}: cannot read the results file: {exc}") from exc
    try:
        doc = json.loads(text)
        entries = doc["scenarios"]
        if not isinstance(entries, list):
            raise TypeError("'scenarios' is not a list")
        results = [result_from_json(entry) for entry in entries]
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise UsageError(f"{path}: not a results file of `harness run --json`: {exc!r}") from exc
    for i, r in enumerate(results):
        if r.status not in _STATUSES:
            raise UsageError(f"{path}: not a results file of `harness run --json`: entry {i + 1} has "
                             f"status {r.status!r} (expected one of {', '.join(_STATUSES)})")
    return results


def mta_order(mtas: Sequence[str]) -> list[str]:
    """Implementations in the project's order (``harness.mta.NAMES``), unknown ones after, by name."""
    present = set(mtas)
    return [m for m in NAMES if m in present] + sorted(present - set(NAMES))


def _sort_key(result: ScenarioResult) -> tuple[str, int, str]:
    rank = NAMES.index(result.mta) if result.mta in NAMES else len(NAMES)
    return (result.file, rank, result.mta)


def merge_results(inputs: Sequence[tuple[Path, Sequence[ScenarioResult]]]) -> list[ScenarioResult]:
    """One list from several files' results, ordered by scenario file, then implementation (postfix,
    exim, opensmtpd). The same (scenario file, implementation) twice is a usage error naming where
    both came from: two shards that ran the same pair were not the shards of one run."""
    seen: dict[tuple[str, str], int] = {}
    merged: list[ScenarioResult] = []
    for i, (path, results) in enumerate(inputs):
        for r in results:
            first = seen.get((r.file, r.mta))
            if first is not None:
                if first == i:
                    where = f"{path} twice"
                elif inputs[first][0] == path:
                    where = f"{path}, given twice"
                else:
                    where = f"both {inputs[first][0]} and {path}"
                raise UsageError(f"{r.file} on {r.mta} is in {where}: merge the results of one run's shards, "
                                 "each once")
            seen[(r.file, r.mta)] = i
            merged.append(r)
    return sorted(merged, key=_sort_key)
