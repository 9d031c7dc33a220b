"""Mutants of a step's expectations: every expectation leaf changed to a value the observation cannot
satisfy, and negative steps turned into their positive twins. A judge that still passes a mutant
is vacuous about that leaf.

Not mutated, because they state no expected value: ``body_intact`` (a switch: off expects nothing),
``queue_flush`` and ``fault`` (actions), ``no_connection`` (no step kind expects a connection; its judge is tested
on captured attempts in test_judge.py), ``within`` bounds and hosts (where to look, not what to see).
"""

from __future__ import annotations

from dataclasses import replace

from harness.scenario.model import (
    NO_REPLY_OUTCOMES,
    BounceStep,
    DeliveryStep,
    DsnCheck,
    HeaderCheck,
    HopStep,
    NoBounceStep,
    NoDeliveryStep,
    QueueStateStep,
    ReplyExpectation,
    SmtpSessionStep,
    Step,
    TlsExpectation,
)

NEVER = "^mailflow-harness mutation: matches nothing$"


def _reply_mutants(exp: ReplyExpectation) -> list[tuple[str, ReplyExpectation]]:
    out: list[tuple[str, ReplyExpectation]] = []
    if exp.code is None:
        other = next(o for o in NO_REPLY_OUTCOMES if o != exp.no_reply)
        out.append((f"no reply {exp.no_reply} -> {other}", replace(exp, no_reply=other)))
        out.append((f"no reply {exp.no_reply} -> 220", ReplyExpectation(220)))
        return out
    other_code = exp.code + 1 if exp.code % 10 != 9 else exp.code - 1
    out.append((f"code {exp.code} -> {other_code}", replace(exp, code=other_code)))
    out.append((f"code {exp.code} -> no reply", ReplyExpectation(None, no_reply="closed")))
    if exp.enhanced is not None:
        out.append((f"enhanced {exp.enhanced} -> 9.9.9", replace(exp, enhanced="9.9.9")))
    if exp.text is not None:
        out.append((f"text /{exp.text}/ -> never", replace(exp, text=NEVER)))
    return out


def _stage_mutants(step: SmtpSessionStep | HopStep) -> list[tuple[str, Step]]:
    out: list[tuple[str, Step]] = []
    for stage, exp in step.expect.items():
        for what, mutated in _reply_mutants(exp):
            out.append((f"{stage.yaml_key}: {what}", replace(step, expect={**step.expect, stage: mutated})))
    for rcpt, exp in step.expect_rcpt.items():
        for what, mutated in _reply_mutants(exp):
            out.append((f"rcpt <{rcpt}>: {what}", replace(step, expect_rcpt={**step.expect_rcpt, rcpt: mutated})))
    if isinstance(step, SmtpSessionStep) and step.expect_tls is not None:
        for what, tls in _tls_mutants(step.expect_tls):
            out.append((f"tls: {what}", replace(step, expect_tls=tls)))
    if isinstance(step, HopStep):
        if step.tls is not None:
            for what, tls in _tls_mutants(step.tls):
                out.append((f"tls: {what}", replace(step, tls=tls)))
        if step.cleartext is not None:
            out.append((f"cleartext {step.cleartext} -> {not step.cleartext}",
                        replace(step, cleartext=not step.cleartext)))
    return out


def _tls_mutants(exp: TlsExpectation) -> list[tuple[str, TlsExpectation]]:
    other = "failed" if exp.outcome == "established" else "established"
    out = [(f"{exp.outcome} -> {other}", replace(exp, outcome=other, reason=None, version=None))]
    if exp.reason is not None:
        out.append((f"reason /{exp.reason}/ -> never", replace(exp, reason=NEVER)))
    if exp.version is not None:
        older = "TLSv1.2" if exp.version != "TLSv1.2" else "TLSv1.3"
        out.append((f"version {exp.version} -> {older}", replace(exp, version=older)))
    if exp.verified is not None:
        out.append((f"verified {exp.verified} -> {not exp.verified}", replace(exp, verified=not exp.verified)))
    return out


def mutants(step: Step) -> list[tuple[str, Step]]:
    """(what was changed, the mutated step) for every expectation leaf of ``step``."""
    if isinstance(step, SmtpSessionStep | HopStep):
        return _stage_mutants(step)
    if isinstance(step, DeliveryStep):
        out: list[tuple[str, Step]] = [("delivered -> no_delivery", NoDeliveryStep(
            step.host, step.mailbox, step.within_s, step.mark, step.message_of))]
        if step.copies is not None:
            out.append((f"copies {step.copies} -> {step.copies + 1}", replace(step, copies=step.copies + 1)))
        for i, check in enumerate(step.headers):
            headers = list(step.headers)
            headers[i] = HeaderCheck(check.name, NEVER)
            out.append((f"header {check.name} -> never", replace(step, headers=tuple(headers))))
        return out
    if isinstance(step, NoDeliveryStep):
        return [("no_delivery -> delivery", DeliveryStep(step.host, step.mailbox or "", step.within_s, (), False,
                                                         step.mark, step.message_of))]
    if isinstance(step, BounceStep):
        out = [("bounce -> no_bounce", NoBounceStep(step.host, step.mailbox, step.within_s, step.mark,
                                                    step.message_of))]
        for i, dsn_check in enumerate(step.checks):
            checks = list(step.checks)
            checks[i] = DsnCheck(dsn_check.field, NEVER)
            out.append((f"{dsn_check.field} -> never", replace(step, checks=tuple(checks))))
        return out
    if isinstance(step, NoBounceStep):
        return [("no_bounce -> bounce", BounceStep(step.host, step.mailbox, step.within_s, (), step.mark,
                                                   step.message_of))]
    if isinstance(step, QueueStateStep):
        other = "absent" if step.state != "absent" else "queued"
        out = [(f"state {step.state} -> {other}", replace(step, state=other, reason=None))]
        if step.state in ("deferred", "active"):
            flipped = "active" if step.state == "deferred" else "deferred"
            out.append((f"state {step.state} -> {flipped}", replace(step, state=flipped)))
        if step.reason is not None:
            out.append((f"reason /{step.reason}/ -> never", replace(step, reason=NEVER)))
        return out
    return []

