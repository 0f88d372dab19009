"""Reading SpinRun files: YAML parsing, validation against `spec.py` with one plain-English
line per problem ("spec.training.lossType: must be one of ..."), and the plan table.

Data is read the way the kube-apiserver reads it, so that a file `spin validate` accepts
is one `kubectl apply` accepts: YAML numbers such as `5e-7` are numbers, dates stay text,
a key given twice is an error, types are strict ("4" is not an integer), a field set to
null counts as absent, and camelCase is the only spelling of a field.
"""

from __future__ import annotations

import difflib
import json
import re
import sys
import types
import typing
from pathlib import Path
from typing import Any, TextIO

import yaml
from pydantic import BaseModel, ValidationError
from pydantic.alias_generators import to_camel

from spin_runtime.api.spec import PATTERN_HINTS, SpinRun
from spin_runtime.errors import EXIT_BAD_SPEC, SpinError


class SpecError(SpinError):
    """A SpinRun file or object is invalid; `problems` holds one line per problem, each
    starting with the field path (or the file position for YAML syntax errors)."""

    exit_code = EXIT_BAD_SPEC

    def __init__(self, problems: list[str], source: str | None = None) -> None:
        self.problems = list(problems)
        self.source = source
        where = f"{source}: " if source else ""
        super().__init__(f"{where}invalid SpinRun: " + "; ".join(self.problems))


# --------------------------------------------------------------------------- YAML


class _Loader(yaml.SafeLoader):
    """A safe loader that refuses duplicate keys, reads `5e-7` as a number (as kubectl
    does) and keeps dates as text."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                duplicate = key in seen
                seen.add(key)
            except TypeError:  # unhashable: the base class reports it with its position
                continue
            if duplicate:
                raise yaml.constructor.ConstructorError(
                    "while reading a mapping",
                    node.start_mark,
                    f"key {key!r} appears twice: give each key once",
                    key_node.start_mark,
                )
        return super().construct_mapping(node, deep=deep)


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)[eE][-+]?[0-9]+$"),
    list("-+.0123456789"),
)
_Loader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for first, resolvers in _Loader.yaml_implicit_resolvers.items()
}


def _yaml_problem(e: yaml.YAMLError) -> str:
    mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
    problem = getattr(e, "problem", None) or str(e)
    context = getattr(e, "context", None)
    text = " ".join((f"{problem} ({context})" if context else str(problem)).split())
    if mark is None:
        return f"YAML: {text}"
    return f"line {mark.line + 1}, column {mark.column + 1}: {text}"


def parse_yaml(text: str) -> Any:
    """The one YAML document of `text`; SpecError for syntax errors, no document or several."""
    loader = _Loader(text)
    docs: list[tuple[int, Any]] = []
    try:
        while loader.check_node():
            node = loader.get_node()
            data = loader.construct_document(node)
            if data is not None:
                docs.append((node.start_mark.line + 1, data))
    except yaml.YAMLError as e:
        raise SpecError([_yaml_problem(e)]) from e
    except RecursionError:
        raise SpecError(["the YAML nests too deeply to be a SpinRun"]) from None
    except ValueError as e:  # e.g. an integer with thousands of digits
        raise SpecError([f"the file holds a value that cannot be read: {str(e).split(':')[0]}"]) from None
    finally:
        loader.dispose()
    if not docs:
        raise SpecError(["the file holds no SpinRun (it is empty): write one SpinRun object"])
    if len(docs) > 1:
        lines = ", ".join(str(line) for line, _ in docs)
        raise SpecError(
            [f"line {docs[1][0]}: the file holds {len(docs)} YAML documents (at lines {lines}); "
             "put one SpinRun per file"]
        )
    return docs[0][1]


# --------------------------------------------------------------------------- errors

_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _format_path(loc: tuple[Any, ...]) -> str:
    """`('spec', 'schedule', 0, 'beta')` → `spec.schedule[0].beta`; odd keys are quoted."""
    out = ""
    for el in loc:
        if isinstance(el, int) and not isinstance(el, bool):
            out += f"[{el}]"
        elif isinstance(el, str) and _IDENT.fullmatch(el):
            out += f".{el}" if out else el
        else:
            out += f"[{json.dumps(el if isinstance(el, str) else repr(el))}]"
    return out or "<root>"


def _show(value: Any) -> str:
    """A short one-line rendering of an offending value."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, int) and value.bit_length() > 128:
        return "a number too large to use"
    if isinstance(value, (int, float)):
        text = str(value)
        return text if len(text) <= 40 else text[:37] + "..."
    if isinstance(value, str):
        return repr(value) if len(value) <= 60 else repr(value[:57]) + "..."
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, (list, tuple)):
        return "a list"
    return f"a {type(value).__name__}"


def _num(value: Any) -> str:
    """A bound as written in YAML: 0 rather than 0.0."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def unwrap(tp: Any) -> Any:
    """Strip Annotated and Optional from a type annotation."""
    while True:
        origin = typing.get_origin(tp)
        if origin is typing.Annotated:
            tp = typing.get_args(tp)[0]
        elif origin in (typing.Union, types.UnionType):
            args = [a for a in typing.get_args(tp) if a is not type(None)]
            if len(args) != 1:
                return tp
            tp = args[0]
        else:
            return tp


def _is_model(tp: Any) -> bool:
    return isinstance(tp, type) and issubclass(tp, BaseModel)


def _aliases(model: type[BaseModel]) -> dict[str, str]:
    """alias → python name of every field of a model."""
    return {(f.alias or name): name for name, f in model.model_fields.items()}


def _model_at(loc: tuple[Any, ...]) -> type[BaseModel] | None:
    """The model class found at `loc` inside a SpinRun, or None."""
    tp: Any = SpinRun
    for el in loc:
        tp = unwrap(tp)
        origin = typing.get_origin(tp)
        if _is_model(tp):
            name = _aliases(tp).get(el) if isinstance(el, str) else None
            if name is None:
                return None
            tp = tp.model_fields[name].annotation
        elif origin is list:
            tp = typing.get_args(tp)[0]
        elif origin is dict:
            tp = typing.get_args(tp)[1]
        else:
            return None
    tp = unwrap(tp)
    return tp if _is_model(tp) else None


def _nested_field(model: type[BaseModel], key: str, depth: int = 3) -> str | None:
    """The one place deeper down from `model` where `key` is a field (e.g. 'training.deepspeed'),
    or None when there is no such place or several."""
    found: list[str] = []
    level: list[tuple[str, type[BaseModel]]] = [("", model)]
    for _ in range(depth):
        below: list[tuple[str, type[BaseModel]]] = []
        for prefix, m in level:
            for alias, name in _aliases(m).items():
                tp = unwrap(m.model_fields[name].annotation)
                suffix = ""
                if typing.get_origin(tp) is list:
                    tp, suffix = unwrap(typing.get_args(tp)[0]), "[]"
                if _is_model(tp):
                    below.append((f"{prefix}{alias}{suffix}.", tp))
        found += [prefix + key for prefix, m in below if key in _aliases(m)]
        level = below
    return found[0] if len(found) == 1 else None


def _unknown_field(loc: tuple[Any, ...]) -> str:
    key = loc[-1]
    model = _model_at(loc[:-1])
    if model is None or not isinstance(key, str):
        return "unknown field"
    known = list(_aliases(model))
    guess = to_camel(key) if to_camel(key) in known else None
    if guess is None:
        lowered = {k.lower(): k for k in known}
        guess = lowered.get(key.lower())
    if guess is None:
        close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
        guess = close[0] if close else None
    if guess is not None:
        return f"unknown field; did you mean {guess!r}?"
    nested = _nested_field(model, key)
    if nested is not None:
        return f"unknown field here; did you mean {nested!r}?"
    if len(known) <= 12:
        return "unknown field; known fields here: " + ", ".join(known)
    return "unknown field; see docs/spec-reference.md for the fields allowed here"


def _expected(ctx: dict[str, Any]) -> str:
    expected = str(ctx.get("expected", ""))
    return expected.replace(" or ", ", ")


def _message(err: dict[str, Any]) -> str:
    """The plain-English "must ..." sentence of one pydantic error."""
    kind = err["type"]
    ctx = err.get("ctx") or {}
    value = err.get("input")
    got = f" (got {_show(value)})"
    if kind == "missing":
        return "must be set"
    if kind == "extra_forbidden":
        return _unknown_field(tuple(err["loc"]))
    if kind in ("value_error", "assertion_error"):
        return str(ctx.get("error", err["msg"])).removeprefix("Value error, ")
    if kind == "literal_error":
        expected = _expected(ctx)
        if "," not in expected:
            return f"must be {expected}{got}"
        return f"must be one of {expected}{got}"
    if kind == "string_pattern_mismatch":
        pattern = str(ctx.get("pattern", ""))
        hint = PATTERN_HINTS.get(pattern)
        return f"must be {hint}{got}" if hint else f"must match the pattern {pattern}{got}"
    if kind == "string_too_short":
        n = ctx.get("min_length", 1)
        return "must not be empty" if n == 1 else f"must be at least {n} characters long{got}"
    if kind == "string_too_long":
        return f"must be at most {ctx.get('max_length')} characters long (got {len(str(value))})"
    if kind == "too_short":
        n = ctx.get("min_length", 1)
        return f"must have at least {n} item{'s' if n != 1 else ''} (got {ctx.get('actual_length')})"
    if kind == "too_long":
        return f"must have at most {ctx.get('max_length')} items (got {ctx.get('actual_length')})"
    simple = {
        "int_type": "must be an integer",
        "int_parsing": "must be an integer",
        "int_from_float": "must be a whole number",
        "float_type": "must be a number",
        "float_parsing": "must be a number",
        "finite_number": "must be a finite number",
        "string_type": "must be a string",
        "bool_type": "must be true or false",
        "bool_parsing": "must be true or false",
        "list_type": "must be a list",
        "dict_type": "must be a mapping of keys to values",
        "model_type": "must be a mapping of fields",
        "model_attributes_type": "must be a mapping of fields",
        "greater_than": f"must be greater than {_num(ctx.get('gt'))}",
        "greater_than_equal": f"must be at least {_num(ctx.get('ge'))}",
        "less_than": f"must be less than {_num(ctx.get('lt'))}",
        "less_than_equal": f"must be at most {_num(ctx.get('le'))}",
    }
    if kind in simple:
        return simple[kind] + got
    return str(err["msg"]).replace("Input should be", "must be") + got


def _problem(err: dict[str, Any]) -> str:
    return " ".join(_raw_problem(err).splitlines())


def _raw_problem(err: dict[str, Any]) -> str:
    loc = tuple(err["loc"])
    if err["type"] == "invalid_key":  # a non-string key: name the mapping holding it
        return f"{_format_path(loc[:-1])}: keys must be strings (got the key {_show(err.get('input'))})"
    if loc and loc[-1] == "[key]":
        return f"{_format_path(loc[:-1])}: key {_message(err)}"
    return f"{_format_path(loc)}: {_message(err)}"


def problems_of(error: ValidationError) -> list[str]:
    """One line per pydantic error, in order, without repeats."""
    lines: list[str] = []
    for err in error.errors(include_url=False):
        line = _problem(dict(err))
        if line not in lines:
            lines.append(line)
    return lines


# --------------------------------------------------------------------------- loading


def _as_stored(value: Any) -> Any:
    """The value as the kube-apiserver stores it: mapping entries whose value is null pruned, and
    whole-number floats (`32.0`) read as integers, as it reads them for integer fields (so that
    `spin validate` and `kubectl apply` agree; float fields accept integers)."""
    if isinstance(value, dict):
        return {k: _as_stored(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_as_stored(v) for v in value]
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**63:
        return int(value)
    return value


def validate_data(data: Any) -> SpinRun:
    """A SpinRun from parsed YAML/JSON data; SpecError with one line per problem."""
    if not isinstance(data, dict):
        raise SpecError(
            [f"<root>: must be a mapping with apiVersion, kind, metadata and spec (got {_show(data)})"]
        )
    try:
        return SpinRun.model_validate(_as_stored(data), strict=True, by_alias=True, by_name=False)
    except ValidationError as e:
        raise SpecError(problems_of(e)) from None


def load_spinrun(path: Path) -> SpinRun:
    """Read and validate one SpinRun YAML (or JSON) file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise SpecError([f"the file is not UTF-8 text (byte {e.start})"], str(path)) from None
    except OSError as e:
        raise SpecError([f"cannot read the file: {e.strerror or e}"], str(path)) from None
    try:
        return validate_data(parse_yaml(text))
    except SpecError as e:
        raise SpecError(e.problems, str(path)) from None


def load_or_report(path: Path | str, err: TextIO | None = None) -> SpinRun | None:
    """`load_spinrun` for a command line: None after printing one `<file>: <problem>` line per
    problem on stderr (the caller exits with EXIT_USAGE)."""
    try:
        return load_spinrun(Path(path))
    except SpecError as e:
        for problem in e.problems:
            print(f"{path}: {problem}", file=err or sys.stderr)
        return None
