"""The message an smtp step sends: inline headers and body, or an RFC 5322 file parsed by the ``email``
package. Header values are checked here, at load time, for what cannot go on the wire as written."""

from __future__ import annotations

import re
from email import errors as email_errors
from email import policy
from email.parser import Parser
from typing import Any

from harness.scenario.checks import header_value_problem
from harness.scenario.context import BuildContext
from harness.scenario.inputs import MAX_MESSAGE_BYTES, InputRefused, read_limited
from harness.scenario.model import Message
from harness.scenario.validate import JsonPath

__all__ = ["DEFAULT_BODY", "build_message"]

DEFAULT_BODY = "This message was sent by mailflow-harness.\n"

# Unfolding (RFC 5322 2.2.3) removes only the line break before the continuation's blank.
_FOLD = re.compile(r"\r?\n(?=[ \t])")


def build_message(ctx: BuildContext, here: JsonPath, spec: dict[str, Any] | None, scenario_name: str) -> Message:
    """The message of the smtp step at ``here`` (``spec``: its ``message`` mapping, None when absent)."""
    default_headers = (("Subject", f"mailflow-harness: {scenario_name}"),)
    if spec is None:
        return Message(headers=default_headers, body=DEFAULT_BODY)
    path = (*here, "message")
    if "file" in spec:
        if "headers" in spec or "body" in spec:
            raise ctx.fail(ctx.at_key(*path, "file"),
                           "'file' cannot be combined with 'headers' or 'body' in a message")
        return _message_file(ctx, spec["file"], (*path, "file"))
    headers: tuple[tuple[str, str], ...] = default_headers
    if "headers" in spec:
        headers = tuple(
            (name, ctx.as_written(value, (*path, "headers", name)))
            for name, value in spec["headers"].items()
        )
        for name, value in headers:
            ctx.check(header_value_problem(name, value), *path, "headers", name)
    return Message(headers=headers, body=normalise_body(spec.get("body", DEFAULT_BODY)))


def _message_file(ctx: BuildContext, name: str, path: JsonPath) -> Message:
    mark = ctx.at(*path)
    file = ctx.confined(name, "message file", mark)
    try:
        raw = read_limited(file, MAX_MESSAGE_BYTES, "a message file")
    except FileNotFoundError:
        raise ctx.fail(mark, f"message file {name!r} does not exist (resolved to {file})") from None
    except InputRefused as exc:
        raise ctx.fail(mark, f"message file {name!r} {exc.problem}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ctx.fail(mark, f"message file {name!r} is not UTF-8 text "
                       f"(invalid byte at offset {exc.start})") from None
    # headersonly: the body stays the text after the blank line, as written (a multipart body too).
    parsed = Parser(policy=policy.compat32).parsestr(text, headersonly=True)
    body = parsed.get_payload()
    assert isinstance(body, str)  # always, with headersonly
    problem = _header_block_problem(parsed.defects, parsed.get_unixfrom(), text, body)
    if problem is not None:
        raise ctx.fail(mark, f"message file {name!r} {problem}")
    headers = tuple((field, _FOLD.sub("", value).strip(" \t")) for field, value in parsed.items())
    for field, value in headers:
        value_problem = header_value_problem(field, value)
        if value_problem is not None:
            raise ctx.fail(mark, f"message file {name!r}: {value_problem}")
    return Message(headers=headers, body=normalise_body(body), source_file=file)


def _header_block_problem(defects: list[email_errors.MessageDefect], unixfrom: str | None, text: str,
                          body: str) -> str | None:
    """What is wrong with the file's header block, naming the line, or None."""
    lines = text.splitlines()
    if unixfrom is not None:
        return "line 1: an mbox 'From ' line, not a header field: write the message as it is sent"
    for defect in defects:
        if isinstance(defect, email_errors.FirstHeaderLineIsContinuationDefect):
            number = 1
        elif isinstance(defect, email_errors.MissingHeaderBodySeparatorDefect):
            # The parser stopped at the line that is neither a header field nor the blank line; the
            # body it returns starts there.
            number = text[:len(text) - len(body)].count("\n") + 1
        elif isinstance(defect, email_errors.InvalidHeaderDefect) and "header name" in str(defect):
            number = next((i for i, line in enumerate(lines, start=1) if line.startswith(":")), 0)
        else:
            return f"is not an RFC 5322 message: {defect}"
        shown = lines[number - 1][:60] if 0 < number <= len(lines) else ""
        return (f"line {number}: expected a header field 'Name: value' or the blank line before the body, "
                f"got {shown!r}")
    return None


def normalise_body(body: str) -> str:
    # Line ends are "\n" in the model (the SMTP client writes CRLF); a last line is always terminated.
    body = body.replace("\r\n", "\n")
    return body if not body or body.endswith("\n") else body + "\n"
