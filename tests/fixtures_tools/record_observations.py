"""Keep what the mutation test needs from a results file of the bundled scenarios on all three MTAs:
per scenario and implementation, each step's observation.

    .venv/bin/harness run --matrix scenarios --json build/results.json
    .venv/bin/python tests/fixtures_tools/record_observations.py build/results.json \
        tests/unit/fixtures/observations/bundled.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def main(source: str, target: str) -> None:
    doc = json.loads(Path(source).read_text(encoding="utf-8"))
    slim = []
    for r in doc["scenarios"]:
        if r["status"] != "passed":
            raise SystemExit(f"{r['file']} [{r['mta']}] did not pass: record observations of passing runs only")
        slim.append({"file": Path(r["file"]).name, "mta": r["mta"],
                     "steps": [{"step": s["step"], "observation": s["observation"]} for s in r["steps"]
                               if s["observation"] is not None]})
    Path(target).write_text(json.dumps({"scenarios": slim}, indent=1) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
