"""The HTML report, rendered by a real browser (headless Chromium) and read back from the DOM it built:
lanes, arrows in order with their reply codes, the failure marked where it happened, hostile text
shown as text, nothing fetched from anywhere.

The results are real: scenarios 04 and 08 on all three implementations (`harness run --matrix --json`,
tests/unit/fixtures/results), and scenario 06 on Postfix judged from its recorded observations
(tests/unit/fixtures/observations) with its hop expectation changed to 250 at DATA, so that it fails
the way a run would.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from dataclasses import dataclass, field, replace
from html.parser import HTMLParser
from pathlib import Path

import pytest

from harness.cli import build_parser, main
from harness.expect.judge import judge
from harness.expect.results import FAILED, PASSED, ScenarioResult, StepOutcome, result_from_json
from harness.expect.summary import summarize
from harness.observe.observations import observation_from_json
from harness.report.files import write_html, write_json
from harness.report.html import html_report
from harness.scenario.loader import load_scenarios
from harness.scenario.model import HopStep, ReplyExpectation, Stage
from harness.smtp.transcript import Exchange

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = Path(__file__).parent / "fixtures"
SAMPLE = FIXTURES / "results" / "matrix-sample.json"
RECORDED = FIXTURES / "observations" / "bundled.json"
CHROMIUM = Path("/usr/bin/chromium")
INSTALL = "apt-get install -y --no-install-recommends chromium   (as root on Debian; `make test` does it)"

# If any of this became markup, the script would mark the body and the img/svg would exist in the DOM.
HOSTILE = ('<script>document.body.setAttribute("data-injected", "1")</script>'
           '<img src=x onerror="document.body.dataset.injected=2"><b>bold</b>')
HOSTILE_HOST = 'evil"><svg onload="document.body.dataset.injected=3">'


# --- the results ---------------------------------------------------------------------------------

def _sample() -> list[ScenarioResult]:
    return [result_from_json(r) for r in json.loads(SAMPLE.read_text(encoding="utf-8"))["scenarios"]]


def _failing_relay_hop() -> ScenarioResult:
    """Scenario 06 on Postfix as a run would report it with `data: 250` expected on relay->mx: judged
    by the real judge on the observations recorded from a real run."""
    scenario = next(s for s in load_scenarios([ROOT / "scenarios"]) if s.path.name.startswith("06-"))
    record = next(r for r in json.loads(RECORDED.read_text(encoding="utf-8"))["scenarios"]
                  if r["file"] == scenario.path.name and r["mta"] == "postfix")
    observed = {entry["step"]: observation_from_json(entry["observation"]) for entry in record["steps"]}
    result = ScenarioResult(str(scenario.path.relative_to(ROOT)), scenario.name, mta="postfix", duration_s=4.2,
                            run_id="test1234")
    for index, step, _override in scenario.steps_for("postfix"):
        if isinstance(step, HopStep):
            step = replace(step, expect={**step.expect, Stage.DATA: ReplyExpectation(250)})
        observation = observed[index]
        failures = judge(index, step, observation)
        result.failures += failures
        result.steps.append(StepOutcome(index, step.kind, FAILED if failures else PASSED,
                                        summarize(step, observation), None, observation))
        result.exchanges += getattr(observation, "exchanges", ())
    result.exchanges.sort(key=lambda e: e.at_s)
    result.status = FAILED if result.failures else PASSED
    return result


def _hostile() -> ScenarioResult:
    """A scenario from a pull request: its name, a reply and a host name made to break out of the page."""
    greeting = Exchange(f"client->{HOSTILE_HOST}", 1, "CONNECT", None, 220, None, HOSTILE,
                        (f"220 {HOSTILE}",), 0.01)
    quit_ = Exchange(f"client->{HOSTILE_HOST}", 1, "QUIT", "QUIT", 221, None, "Bye", ("221 Bye",), 0.02)
    return ScenarioResult("scenarios/99-hostile.yaml", f"hostile {HOSTILE}", status=PASSED, mta="exim",
                          exchanges=[greeting, quit_], logs={"relay": [HOSTILE]})


@pytest.fixture(scope="module")
def results() -> list[ScenarioResult]:
    return [*_sample(), _failing_relay_hop(), _hostile()]


# --- Chromium and the DOM it dumps ---------------------------------------------------------------

def _chromium() -> Path:
    if not (CHROMIUM.is_file() and os.access(CHROMIUM, os.X_OK)):
        pytest.fail(f"{CHROMIUM} is missing: the HTML report is tested in headless Chromium. Install it: {INSTALL}")
    return CHROMIUM


def dump_dom(page: Path, profile: Path) -> str:
    """The DOM Chromium built from the page (after parsing, styles and anything that would run)."""
    command = [str(_chromium()), "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
               "--disable-quic", "--no-first-run", "--disable-background-networking", "--disable-component-update",
               "--disable-sync", f"--user-data-dir={profile}", "--virtual-time-budget=2000", "--dump-dom",
               page.resolve().as_uri()]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    if done.returncode != 0 or "</html>" not in done.stdout:
        pytest.fail(f"chromium exited {done.returncode} without a DOM:\n{done.stderr[-3000:]}")
    return done.stdout


@dataclass
class Element:
    tag: str
    attrs: dict[str, str]
    children: list[Element | str] = field(default_factory=list)

    @property
    def classes(self) -> set[str]:
        return set(self.attrs.get("class", "").split())

    @property
    def text(self) -> str:
        return "".join(c if isinstance(c, str) else c.text for c in self.children)

    def iter(self) -> list[Element]:
        out = [self]
        for c in self.children:
            if isinstance(c, Element):
                out += c.iter()
        return out

    def select(self, tag: str | None = None, cls: str | None = None, **attrs: str) -> list[Element]:
        """Descendants (and self) in document order, by tag, class and attribute values."""
        return [e for e in self.iter() if (tag is None or e.tag == tag) and (cls is None or cls in e.classes)
                and all(e.attrs.get(k.replace("_", "-")) == v for k, v in attrs.items())]


_VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}


class _TreeBuilder(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.root = Element("#document", {})
        self.stack = [self.root]

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        element = Element(tag, {k: v or "" for k, v in attrs})
        self.stack[-1].children.append(element)
        if tag not in _VOID:
            self.stack.append(element)

    def handle_endtag(self, tag: str) -> None:
        for i in range(len(self.stack) - 1, 0, -1):
            if self.stack[i].tag == tag:
                del self.stack[i:]
                return

    def handle_data(self, data: str) -> None:
        self.stack[-1].children.append(data)


def parse(markup: str) -> Element:
    builder = _TreeBuilder()
    builder.feed(markup)
    builder.close()
    return builder.root


@pytest.fixture(scope="module")
def rendered(results: list[ScenarioResult], tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Element]:
    where = tmp_path_factory.mktemp("html")
    page = where / "report.html"
    write_html(results, page)
    return page.read_text(encoding="utf-8"), parse(dump_dom(page, where / "profile"))


def _run(dom: Element, file_prefix: str, mta: str) -> Element:
    runs = [s for s in dom.select("section", "scenario-run", data_mta=mta)
            if Path(s.attrs["data-file"]).name.startswith(file_prefix)]
    assert len(runs) == 1, f"one section for {file_prefix} [{mta}], found {len(runs)}"
    return runs[0]


# --- the tests -----------------------------------------------------------------------------------

def test_a_section_per_run_with_its_verdict(results: list[ScenarioResult], rendered: tuple[str, Element]) -> None:
    _, dom = rendered
    sections = dom.select("section", "scenario-run")
    assert [(s.attrs["data-file"], s.attrs["data-mta"], s.attrs["data-status"]) for s in sections] == \
        [(r.file, r.mta, r.status) for r in results]
    assert all(PASSED in s.classes for s in sections if s.attrs["data-status"] == PASSED)
    # The overview links every run to its section, the verdict as its class.
    links = dom.select("table", "overview")[0].select("a", "verdict")
    assert sorted(a.attrs["href"] for a in links) == sorted(f"#{s.attrs['id']}" for s in sections)


def test_the_lanes_and_every_arrow_in_order(results: list[ScenarioResult], rendered: tuple[str, Element]) -> None:
    _, dom = rendered
    run = _run(dom, "06-", "postfix")
    diagram = run.select("div", "sequence-diagram")[0]
    lanes = diagram.select("div", "lane")
    assert [lane.attrs["data-lane"] for lane in lanes] == ["client", "relay", "mx", "nomail"]
    assert "idle" in lanes[3].classes and not any("idle" in lane.classes for lane in lanes[:3])
    assert len(diagram.select("div", "lifeline")) == 4

    # One arrow per command and one per reply, in time order: client->relay, then relay->mx.
    arrows = diagram.select("div", "arrow")
    expected = [e for e in next(r for r in results if r.file.endswith("06-relay-354-hop.yaml")).exchanges]
    assert len(arrows) == 2 * len(expected) == 28
    seen = [(a.attrs["data-hop"], a.attrs["data-command"], "reply" if "reply" in a.classes else "command",
             a.attrs.get("data-code")) for a in arrows]
    assert seen == [row for e in expected for row in ((e.hop, e.command, "command", None),
                                                      (e.hop, e.command, "reply", str(e.code)))]
    codes = [a.attrs["data-code"] for a in arrows if "reply" in a.classes]
    assert codes == ["220", "250", "250", "250", "354", "250", "221"] * 2
    # Commands go from the sender's lane to the receiver's, replies back.
    first_hop = [a for a in arrows if a.attrs["data-hop"] == "relay->mx"]
    assert (first_hop[0].attrs["data-from"], first_hop[0].attrs["data-to"]) == ("relay", "mx")
    assert (first_hop[1].attrs["data-from"], first_hop[1].attrs["data-to"]) == ("mx", "relay")
    # Each reply's text is on its arrow, as the MTA sent it.
    data = next(a for a in arrows if "reply" in a.classes and a.attrs["data-command"] == "DATA")
    assert data.select(cls="label")[0].text.strip() == "354 End data with <CR><LF>.<CR><LF>"
    mail = next(a for a in arrows if "command" in a.classes and a.attrs["data-command"] == "MAIL")
    assert "MAIL FROM:<alice@origin.test>" in mail.text


def test_the_failure_is_marked_on_its_arrow(rendered: tuple[str, Element]) -> None:
    _, dom = rendered
    run = _run(dom, "06-", "postfix")
    assert "failed" in run.classes and run.attrs["data-status"] == FAILED
    assert run.select("span", "verdict")[0].text == "failed"
    failed = run.select(cls="failed")
    arrows = [e for e in failed if "arrow" in e.classes]
    assert len(arrows) == 1
    arrow = arrows[0]
    assert (arrow.attrs["data-hop"], arrow.attrs["data-command"], arrow.attrs["data-code"]) == ("relay->mx", "DATA",
                                                                                                 "354")
    assert "expected 250" in arrow.select("span", "failure-marker")[0].text
    # The failure is listed, linked to its arrow, and its step marked failed.
    failures = run.select("li", "failure")
    assert len(failures) == 1 and "expected 250, observed 354" in failures[0].text
    assert failures[0].select("a")[0].attrs["href"] == f"#{arrow.attrs['id']}"
    assert [row.attrs["data-step"] for row in run.select("tr", "step") if "failed" in row.classes] == ["2"]
    # Passing runs have no failure marker at all.
    passing = _run(dom, "08-", "postfix")
    assert passing.select(cls="failure-marker") == [] and "failed" not in passing.classes


def test_a_missing_reply_and_a_hop_to_nomail(rendered: tuple[str, Element]) -> None:
    _, dom = rendered
    arrows = _run(dom, "08-", "postfix").select("div", "arrow")
    to_nomail = [a for a in arrows if a.attrs["data-hop"] == "relay->nomail" and "reply" in a.classes]
    assert [a.attrs["data-code"] for a in to_nomail] == ["521", ""]
    assert "521 5.3.2 Service currently unavailable" in to_nomail[0].text
    assert "no-reply" in to_nomail[1].classes and "connection reset" in to_nomail[1].text


def test_hostile_text_is_shown_as_text(rendered: tuple[str, Element]) -> None:
    raw, dom = rendered
    body = dom.select("body")[0]
    assert "data-injected" not in body.attrs
    for tag in ("script", "img", "svg", "b", "iframe", "object"):
        assert dom.select(tag) == [], f"a <{tag}> element made it into the page"
    run = _run(dom, "99-", "exim")
    assert HOSTILE in run.select("h2")[0].text
    greeting = next(a for a in run.select("div", "arrow") if "reply" in a.classes)
    assert greeting.select(cls="label")[0].text.strip() == f"220 {HOSTILE}"
    assert [lane.attrs["data-lane"] for lane in run.select("div", "lane")][-1] == HOSTILE_HOST
    assert HOSTILE in run.select("details", "logs")[0].text
    assert "<script>" not in raw.split("</style>", 1)[1]


def test_the_page_is_self_contained(rendered: tuple[str, Element]) -> None:
    raw, dom = rendered
    assert not re.search(r"""\b(?:src|href|action|srcset|poster|data)\s*=\s*["']?\s*(?:[a-z][a-z0-9+.-]*:|//)""",
                         raw, re.IGNORECASE), "the page refers to something outside itself"
    assert not re.search(r"url\s*\(|@import|<link\b|<script\b|@font-face", raw, re.IGNORECASE)
    for element in dom.iter():
        for name in ("src", "href", "action", "srcset"):
            if name in element.attrs:
                assert element.attrs[name].startswith("#"), f"<{element.tag} {name}={element.attrs[name]!r}>"
    policy = dom.select("meta", http_equiv="Content-Security-Policy")
    assert policy and "default-src 'none'" in policy[0].attrs["content"]


def test_no_results_is_still_a_page() -> None:
    page = parse(html_report([]))
    assert page.select("section") == [] and "0 scenario run(s)" in page.select("header")[0].text


def test_harness_report_merges_files_into_one_page(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    sample = _sample()
    write_json(sample[:3], tmp_path / "a.json")
    write_json(sample[3:], tmp_path / "b.json")
    out = tmp_path / "report.html"
    code = main(["-q", "report", str(tmp_path / "a.json"), str(tmp_path / "b.json"), "--html", str(out)])
    capsys.readouterr()
    assert code == 0
    sections = parse(out.read_text(encoding="utf-8")).select("section", "scenario-run")
    assert [(s.attrs["data-file"], s.attrs["data-mta"]) for s in sections] == [(r.file, r.mta) for r in sample]


def test_html_is_in_the_help_of_run_and_report(capsys: pytest.CaptureFixture[str]) -> None:
    for command in ("run", "report"):
        args = build_parser().parse_args([command, "x.json", "--html", "r.html"])
        assert args.html == Path("r.html")
        with pytest.raises(SystemExit):
            build_parser().parse_args([command, "--help"])
        assert "--html FILE" in capsys.readouterr().out


def test_a_failed_client_steps_replay_is_in_the_page(tmp_path: Path) -> None:
    from dataclasses import replace

    from harness.expect.results import ScenarioResult, StepOutcome

    step = StepOutcome(1, "smtp", "failed", "RCPT 556", reproduce="eval \"$(harness up s.yaml --env)\"\nswaks <x>")
    page = html_report([replace(ScenarioResult("s.yaml", "s", status="failed"), steps=[step])])
    assert '<details class="replay">' in page
    assert "swaks &lt;x&gt;" in page and "<x>" not in page


def test_each_step_shows_when_it_began_and_how_long_it_took() -> None:
    from dataclasses import replace

    from harness.expect.results import ScenarioResult, StepOutcome

    timed = StepOutcome(1, "smtp", "passed", "250", at_s=0.0125, took_s=0.25)
    waited = StepOutcome(2, "no_delivery", "passed", "no copy", at_s=0.2625, took_s=5.0021)
    older = StepOutcome(3, "delivery", "passed", "1 copy")  # a results file from before steps were timed
    page = html_report([replace(ScenarioResult("s.yaml", "s"), steps=[timed, waited, older])])
    cells = re.findall(r'<td class="when">([^<]*)</td>', page)
    assert cells == ["0.013 s, took 0.250 s", "0.263 s, took 5.002 s", ""]
