"""The replication's second task, with free-form answers, built offline: "In Python, what does
`textwrap.dedent` do?" → the first sentence of its docstring, from this interpreter's standard
library (deterministic for one Python version), and its scorer, token F1 (SQuAD-style).

    python benchmarks/freeform.py OUT_DIR [--seed 0] [--train 64] [--val 32] [--test 50]
writes OUT_DIR/{train,val,test}.jsonl with `prompt`/`response` columns (what `dataset.path` reads).
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import json
import random
import re
import string
import sys
from collections import Counter
from pathlib import Path

#: Standard-library modules asked about, in a fixed order.
MODULES = (
    "textwrap string json re math itertools functools shutil os.path collections random statistics heapq bisect "
    "operator fnmatch glob base64 difflib copy html urllib.parse posixpath secrets uuid zlib gzip tempfile pathlib "
    "calendar datetime fractions decimal csv shlex struct hashlib hmac pprint inspect typing dataclasses enum "
    "contextlib warnings logging subprocess socket email.utils mimetypes zipfile tarfile unicodedata locale codecs "
    "io time argparse"
).split()
MIN_WORDS, MAX_WORDS = 4, 25


def first_sentence(doc: str) -> str:
    """The first sentence of a docstring's first paragraph, whitespace collapsed."""
    para = re.sub(r"\s+", " ", doc.strip().split("\n\n")[0])
    return re.split(r"(?<=\.)\s", para)[0]


def usable(name: str, sentence: str) -> bool:
    """A prose sentence of MIN..MAX words ending with a period (not a signature line like `f(x)`)."""
    return (
        MIN_WORDS <= len(sentence.split()) <= MAX_WORDS
        and sentence.endswith(".")
        and not sentence.startswith(f"{name}(")
    )


def stdlib_items(modules: tuple[str, ...] | list[str] = MODULES) -> list[tuple[str, str]]:
    """(qualified name, docstring's first sentence) of the public functions and classes defined in
    `modules`, sorted, with sentences shared by several names (inherited boilerplate) dropped."""
    found: dict[str, str] = {}
    for m in modules:
        mod = importlib.import_module(m)
        for name in sorted(dir(mod)):
            obj = getattr(mod, name)
            if name.startswith("_") or not (inspect.isfunction(obj) or inspect.isbuiltin(obj) or inspect.isclass(obj)):
                continue
            if not str(getattr(obj, "__module__", "") or "").startswith(m.split(".")[0]):
                continue  # re-exported from elsewhere
            doc = inspect.getdoc(obj)
            sentence = first_sentence(doc) if doc else ""
            if usable(name, sentence):
                found.setdefault(f"{m}.{name}", sentence)
    counts = Counter(found.values())
    return sorted((q, s) for q, s in found.items() if counts[s] == 1)


def prompt_of(qualname: str) -> str:
    return f"In Python, what does `{qualname}` do? Answer in one sentence."


def split_items(items: list[tuple[str, str]], seed: int, sizes: dict[str, int]) -> dict[str, list[dict[str, str]]]:
    """A seeded shuffle of the items cut into disjoint splits of the given sizes, as rows."""
    order = list(items)
    random.Random(f"freeform:{seed}").shuffle(order)
    if sum(sizes.values()) > len(order):
        raise ValueError(f"only {len(order)} docstring items for splits {sizes}: lower the sizes")
    out, at = {}, 0
    for split, n in sizes.items():
        out[split] = [{"prompt": prompt_of(q), "response": s} for q, s in order[at : at + n]]
        at += n
    return out


def write_dataset(folder: Path, seed: int, sizes: dict[str, int]) -> dict[str, list[dict[str, str]]]:
    """Write `<split>.jsonl` files into `folder`; returns the rows."""
    folder.mkdir(parents=True, exist_ok=True)
    splits = split_items(stdlib_items(), seed, sizes)
    for split, rows in splits.items():
        (folder / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return splits


# --------------------------------------------------------------------------- scorer


def _tokens(text: str) -> list[str]:
    text = text.lower().translate(str.maketrans("", "", string.punctuation.replace("_", "")))
    return [t for t in text.split() if t not in ("a", "an", "the")]


def token_f1(prompt: str, real: str, generated: str) -> float:
    """SQuAD-style token F1 of the generated answer against the real one (lower-cased,
    punctuation and articles dropped); `evaluation.scorer: freeform:token_f1`."""
    gen, ref = _tokens(generated), _tokens(real)
    common = sum((Counter(gen) & Counter(ref)).values())
    if not gen or not ref or not common:
        return 0.0
    precision, recall = common / len(gen), common / len(ref)
    return 2 * precision * recall / (precision + recall)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--train", type=int, default=64)
    ap.add_argument("--val", type=int, default=32)
    ap.add_argument("--test", type=int, default=50)
    a = ap.parse_args()
    splits = write_dataset(Path(a.out), a.seed, {"train": a.train, "val": a.val, "test": a.test})
    print({k: len(v) for k, v in splits.items()}, f"of {len(stdlib_items())} items")
    return 0


if __name__ == "__main__":
    sys.exit(main())
