"""Print the fault suite's counts (tests/reliability/counts.json, written by a run of
`pytest tests/reliability`) as the Markdown tables of docs/reliability.md.

    .venv/bin/python -m pytest tests/reliability && .venv/bin/python -m tests.reliability.report
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

COUNTS = Path(__file__).parent / "counts.json"

HEADLINE = [
    ("Faults injected (all kinds)", "faults."),
    ("Specs generated or written (hostile, invalid, traversal)", "specs."),
]
ZEROES = [
    ("Duplicate Jobs created", "observed.duplicate_job_creations"),
    ("Finished steps recomputed (pods started again)", "observed.steps_recomputed"),
    ("Files written before a kill that changed or vanished (data lost)", "observed.files_changed_after_kill"),
    ("Half-written outputs marked done", "observed.half_written_marked_done"),
    ("Jobs created after their SpinRun was deleted", "observed.jobs_created_after_deletion"),
    ("Requests for Secrets by the operator", "observed.secret_requests"),
    ("Claims (checkpoints) deleted with their SpinRun", "observed.claims_deleted_with_the_run"),
    ("Children adopted from a deleted SpinRun of the same name", "observed.children_adopted_from_old_run"),
    ("SpinRun deletions that hung with the operator gone", "observed.deletions_hung"),
    ("Jobs left running after spec.iterations was lowered", "observed.jobs_left_running_after_iterations_lowered"),
    ("Jobs running while the spec was invalid", "observed.jobs_running_while_spec_invalid"),
    ("Container commands that run a shell", "observed.shell_commands"),
]


def render(doc: dict) -> str:  # type: ignore[type-arg]
    totals: dict[str, int] = doc["totals"]
    out = ["| Count | Value |", "|---|---:|"]
    for label, prefix in HEADLINE:
        out.append(f"| {label} | {sum(v for k, v in totals.items() if k.startswith(prefix))} |")
    for label, key in ZEROES:
        out.append(f"| {label} | {totals.get(key, 'not run')} |")
    out += ["", "| Key | Total |", "|---|---:|"]
    out += [f"| `{k}` | {v} |" for k, v in totals.items()]
    outcomes: dict[str, int] = {}
    for t in doc["tests"].values():
        outcomes[t["outcome"]] = outcomes.get(t["outcome"], 0) + 1
    out += ["", "Tests that reported counts: " + ", ".join(f"{n} {o}" for o, n in sorted(outcomes.items()))]
    return "\n".join(out) + "\n"


def main() -> int:
    if not COUNTS.exists():
        print(f"{COUNTS} not found: run `pytest tests/reliability` first", file=sys.stderr)
        return 1
    sys.stdout.write(render(json.loads(COUNTS.read_text())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
