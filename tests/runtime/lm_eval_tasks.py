"""Local lm-evaluation-harness tasks over JSONL files, for the tests that run the real harness
(on the host and in the trainer image) without any hub."""

from __future__ import annotations

import json
from pathlib import Path

CHOICE_TASK = """task: spin_choice
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{question}}}}"
doc_to_choice: choices
doc_to_target: label
metric_list:
  - metric: acc
  - metric: acc_norm
"""

SUM_TASK = """task: spin_sum
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: generate_until
doc_to_text: "{{{{question}}}}"
doc_to_target: "{{{{answer}}}}"
generation_kwargs:
  until: ["\\n"]
  max_gen_toks: 8
  do_sample: false
metric_list:
  - metric: exact_match
"""


def write_lm_eval_tasks(folder: Path, seen_at: str | None = None) -> Path:
    """Two lm-eval tasks over JSONL files in `folder` (their YAMLs name the files under `seen_at`,
    where a container sees the folder): a multiple choice between a one-token answer and a long
    one (any model's summed log-prob prefers the short one, its per-byte log-prob the long one),
    and a generated sum."""
    folder.mkdir()
    where = seen_at or str(folder)
    long = " ".join(["elephant"] * 10)
    choice = [{"question": f"Pick {i}:", "choices": ["a", long], "label": 0 if i < 3 else 1} for i in range(4)]
    (folder / "choice.jsonl").write_text("".join(json.dumps(r) + "\n" for r in choice))
    sums = [{"question": f"{a} + {a} =", "answer": str(2 * a)} for a in (10, 11, 12)]
    (folder / "sum.jsonl").write_text("".join(json.dumps(r) + "\n" for r in sums))
    (folder / "spin_choice.yaml").write_text(CHOICE_TASK.format(data=f"{where}/choice.jsonl"))
    (folder / "spin_sum.yaml").write_text(SUM_TASK.format(data=f"{where}/sum.jsonl"))
    return folder
