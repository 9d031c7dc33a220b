"""Per-implementation step overrides (``per_mta``).

An override's keys are merged into the step (they replace the step's own, a whole value at a time) and
the result is built and checked like any step, by a builder whose marks for the replaced keys point into
the override: every check on a step applies to each of its variants, with errors at the right node.
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Any, TypeVar

from harness.errors import ScenarioError
from harness.scenario.context import KNOWN_MTAS
from harness.scenario.model import StepOverride
from harness.scenario.validate import JsonPath, SourceMap

if TYPE_CHECKING:
    from harness.scenario.steps import MessageIds, StepBuilder

__all__ = ["build_override", "check_skipped_messages"]

# An override's key that replaces a step key of another name: in a per_mta entry `reason` is why the
# implementation differs, so a queue_state step's own `reason` is replaced with `queue_reason`.
OVERRIDE_KEYS = {("queue_state", "queue_reason"): "reason"}

_T = TypeVar("_T")


def build_override(
    builder: StepBuilder, kind: str, here: JsonPath, body: dict[str, Any], mta: str, spec: dict[str, Any],
    scenario_name: str, ids: MessageIds,
) -> tuple[StepOverride, int | None]:
    """The override of the step at ``here`` for ``mta``, and the index of the smtp step whose message
    the step checks there (None for steps that check no message)."""
    at = (*here, "per_mta", mta)
    mark = builder.at_key(*at)
    reason: str = spec["reason"].strip()
    # (key in the override, key of the step it replaces)
    keys = [(key, OVERRIDE_KEYS.get((kind, key), key)) for key in spec if key not in ("reason", "skip")]
    if spec.get("skip", False):
        if keys:
            raise builder.fail(builder.at_key(*at, keys[0][0]), f"a skipped step takes no keys besides "
                               f"'reason': {keys[0][0]!r} would change a step that does not run on {mta}")
        return StepOverride(mta=mta, reason=reason, mark=mark, skip=True), None
    if not keys:
        raise builder.fail(mark, f"the override for {mta} changes nothing: give 'skip: true', or keys "
                           f"of the {kind} step that replace the step's own")
    merged = {key: value for key, value in body.items() if key != "per_mta"}
    merged.update({step_key: spec[key] for key, step_key in keys})
    if kind == "queue_state" and merged.get("state") == "absent" and "queue_reason" not in spec:
        # An override saying "not queued here" drops the step's reason: nothing queued has one.
        merged.pop("reason", None)
    try:
        step, source = _relocated(builder, here, at, keys).step(kind, here, merged, scenario_name, ids)
    except ScenarioError as exc:
        # The mark may be on a key the override leaves alone: say which variant of the step failed.
        raise ScenarioError(exc.path, exc.line, exc.col, f"{exc.detail} (on {mta}: the step with its "
                            f"per_mta override at line {mark.line})") from None
    return StepOverride(mta=mta, reason=reason, mark=mark, step=step), source


def _relocated(builder: StepBuilder, here: JsonPath, at: JsonPath, keys: list[tuple[str, str]]) -> StepBuilder:
    """A builder whose marks for the step's replaced keys are those of the override's keys, so the
    step merged with an override is built and checked like any step, with errors in the override."""
    original = builder.source
    source = SourceMap(original.file, dict(original.values), dict(original.keys), dict(original.raw))
    for key, step_key in keys:
        old, new = (*here, step_key), (*at, key)
        _move(source.values, original.values, old, new)
        _move(source.keys, original.keys, old, new)
        _move(source.raw, original.raw, old, new)
    relocated = copy.copy(builder)
    relocated.source = source
    return relocated


def _move(table: dict[JsonPath, _T], original: dict[JsonPath, _T], old: JsonPath, new: JsonPath) -> None:
    """In ``table`` (a copy of ``original``), replace the entries under ``old`` with ``original``'s
    entries under ``new``, re-rooted at ``old``."""
    for path in [p for p in table if p[:len(old)] == old]:
        del table[path]
    for path, value in original.items():
        if path[:len(new)] == new:
            table[(*old, *path[len(new):])] = value


def check_skipped_messages(
    builder: StepBuilder,
    raw_steps: list[dict[str, Any]],
    overrides: dict[int, dict[str, StepOverride]],
    sources: dict[int, int],
    override_sources: dict[tuple[int, str], int],
) -> None:
    """A step that runs on an implementation cannot check the message of a step skipped there."""
    for index, base_source in sources.items():
        kind, body = next(iter(raw_steps[index].items()))
        for mta in KNOWN_MTAS:
            override = overrides.get(index, {}).get(mta)
            if override is not None and override.skip:
                continue
            source = override_sources.get((index, mta), base_source)
            skipped = overrides.get(source, {}).get(mta)
            if skipped is None or not skipped.skip:
                continue
            if override is not None and "message_of" in body["per_mta"][mta]:
                mark = builder.at("steps", index, kind, "per_mta", mta, "message_of")
            elif "message_of" in body:
                mark = builder.at("steps", index, kind, "message_of")
            else:
                mark = builder.at("steps", index)
            raise builder.fail(mark, f"step {index + 1} ({kind}) checks the message of step {source + 1}, "
                               f"which is skipped on {mta} (per_mta): skip this step on {mta} too, or "
                               "name another message with message_of")
