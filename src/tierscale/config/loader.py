"""Read a YAML config, validate it, and report problems as `FILE:LINE: field.path: message`.

The YAML is composed to nodes first (they carry line marks), checked for duplicate keys (plain PyYAML
silently keeps the last one), then constructed and handed to pydantic. Each pydantic error location
such as ('groups', 0, 'max') is walked through the node tree to find the line of that key; a key that
is missing points at its parent's line.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError
from pydantic_core import ErrorDetails

from tierscale.config.models import ERROR_TYPE, METRIC_TYPES, TIERS, Config

__all__ = ["ConfigError", "Problem", "load_config", "load_config_text", "validate_file"]

Loc = tuple[str | int, ...]


@dataclass(frozen=True)
class Problem:
    file: str
    line: int | None  # 1-based; None when the file could not be read at all
    field: str | None  # e.g. "groups[0].template.image"; None for problems with the file itself
    message: str

    def __str__(self) -> str:
        where = self.file if self.line is None else f"{self.file}:{self.line}"
        return f"{where}: {self.field}: {self.message}" if self.field else f"{where}: {self.message}"


class ConfigError(Exception):
    """The config is not usable; `problems` lists every problem found, in file order."""

    def __init__(self, problems: Sequence[Problem]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(str(p) for p in self.problems))

    def first_line(self) -> str:
        """The first problem, and how many more there are: for a place with room for one line."""
        more = len(self.problems) - 1
        return f"{self.problems[0]}" + (f" (and {more} more)" if more > 0 else "")


# ---- public API ----------------------------------------------------------------------------------------


def load_config(path: str | Path) -> Config:
    """Load and validate a config file; raises ConfigError."""
    name = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError([Problem(name, None, None, f"not UTF-8 text: {exc.reason}")]) from None
    except OSError as exc:
        raise ConfigError([Problem(name, None, None, f"cannot read: {exc.strerror or exc}")]) from None
    return load_config_text(text, name)


def load_config_text(text: str, filename: str = "<config>") -> Config:
    """Validate config text; `filename` is only used in problem lines. Raises ConfigError."""
    root = _compose(text, filename)
    duplicates = list(_duplicate_keys(root, ()))
    if duplicates:
        raise ConfigError([Problem(filename, line, _render(loc), msg) for loc, line, msg in duplicates])
    try:
        data = _construct(root)
    except yaml.YAMLError as exc:  # e.g. an unknown !tag, only found while constructing
        raise ConfigError([_yaml_problem(exc, filename, text)]) from None
    if not isinstance(data, dict):
        kind = "a list" if isinstance(data, list) else f"a {type(data).__name__}"
        message = f"the top level must be a mapping with api, state_dir and groups (got {kind})"
        raise ConfigError([Problem(filename, root.start_mark.line + 1, None, message)])
    # Top-level `x-...` keys are ignored (as in docker compose): a place for YAML anchors to share
    # settings between groups without tripping the unknown-key check.
    data = {k: v for k, v in data.items() if not (isinstance(k, str) and k.startswith("x-"))}
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        problems = [_problem_for(err, root, filename) for err in exc.errors(include_url=False)]
        problems.sort(key=lambda p: (p.line or 0, p.field or ""))
        raise ConfigError(_dedupe(problems)) from None


def validate_file(path: str | Path) -> list[str]:
    """The rendered problem lines for `tierscale validate FILE`; empty when the config is fine."""
    try:
        load_config(path)
    except ConfigError as exc:
        return [str(p) for p in exc.problems]
    return []


# ---- YAML ----------------------------------------------------------------------------------------------


def _yaml_problem(exc: yaml.YAMLError, filename: str, text: str) -> Problem:
    if isinstance(exc, yaml.reader.ReaderError):
        line = text[: max(0, exc.position)].count("\n") + 1
        char = exc.character if isinstance(exc.character, int) else ord(str(exc.character)[:1] or "?")
        message = f"invalid YAML: unacceptable character #x{char:04x} ({exc.reason})"
        return Problem(filename, line, None, message)
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    # An unclosed bracket is only noticed at the end of the stream, one line past the text: clamp it.
    last_line = max(1, len(text.splitlines()))
    line = min(mark.line + 1, last_line) if mark is not None else 1
    what = getattr(exc, "problem", None) or str(exc)
    context = getattr(exc, "context", None)
    if what == "but found another document":
        return Problem(filename, line, None, "invalid YAML: only one document is allowed (remove the ---)")
    message = f"invalid YAML: {what}" + (f" ({context})" if context else "")
    return Problem(filename, line, None, message)


def _compose(text: str, filename: str) -> yaml.Node:
    try:
        # The reader already rejects control characters while the loader is being built.
        loader = yaml.SafeLoader(text)
    except yaml.YAMLError as exc:
        raise ConfigError([_yaml_problem(exc, filename, text)]) from None
    try:
        root = loader.get_single_node()
    except yaml.YAMLError as exc:
        raise ConfigError([_yaml_problem(exc, filename, text)]) from None
    finally:
        loader.dispose()
    if root is None or (isinstance(root, yaml.ScalarNode) and root.tag == "tag:yaml.org,2002:null"):
        raise ConfigError([Problem(filename, 1, None, "the file is empty: it needs at least a groups list")])
    return root


def _construct(root: yaml.Node) -> Any:
    # A fresh loader only for its constructor; the node tree already exists. Constructing flattens merge
    # keys (<<) into the mapping nodes, which also makes merged keys findable by `_line_of`.
    loader = yaml.SafeLoader("")
    try:
        return loader.construct_document(root)
    finally:
        loader.dispose()


def _duplicate_keys(
    node: yaml.Node, loc: Loc, seen: set[int] | None = None
) -> Iterable[tuple[Loc, int, str]]:
    seen = set() if seen is None else seen
    if id(node) in seen:  # aliases can make the graph cyclic
        return
    seen.add(id(node))
    if isinstance(node, yaml.MappingNode):
        first: dict[str, int] = {}
        for key, value in node.value:
            if not isinstance(key, yaml.ScalarNode):
                continue
            line = key.start_mark.line + 1
            if key.value == "<<":  # merge key: several are legal
                yield from _duplicate_keys(value, loc, seen)
                continue
            if key.value in first:
                yield (*loc, key.value), line, f"duplicate key (first on line {first[key.value]})"
            else:
                first[key.value] = line
            yield from _duplicate_keys(value, (*loc, key.value), seen)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            yield from _duplicate_keys(item, (*loc, i), seen)


def _line_of(root: yaml.Node, loc: Loc) -> int:
    """Line of the deepest node of `loc` that exists in the file (the key's line for mapping entries)."""
    node: yaml.Node = root
    line = root.start_mark.line + 1
    for part in loc:
        child: yaml.Node | None = None
        if isinstance(node, yaml.MappingNode):
            # Reversed: after merge keys are flattened the mapping's own entries come last and win.
            for key, value in reversed(node.value):
                if isinstance(key, yaml.ScalarNode) and key.value == str(part):
                    child, line = value, key.start_mark.line + 1
                    break
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and 0 <= part < len(node.value):
            child = node.value[part]
            line = child.start_mark.line + 1
        if child is None:
            break
        node = child
    return line


# ---- pydantic errors -> problems -----------------------------------------------------------------------

_DISCRIMINATED_LISTS = {"groups": set(TIERS), "metrics": set(METRIC_TYPES)}
_DISCRIMINATOR_NAMES = {"groups": "tier", "metrics": "type"}
# Keys that look like credentials get a pointed message: they must never live in the config.
_CREDENTIAL_KEYS = re.compile(r"pass|secret|token|auth|credential|private_key|api_key", re.IGNORECASE)


def _strip_tags(loc: Sequence[str | int]) -> Loc:
    """Drop the discriminator tags pydantic puts in locations.

    ('groups', 0, 'docker', 'template', 'image') -> ('groups', 0, 'template', 'image')
    """
    out: list[str | int] = []
    for i, part in enumerate(loc):
        if (
            i >= 2
            and isinstance(loc[i - 1], int)
            and isinstance(part, str)
            and part in _DISCRIMINATED_LISTS.get(str(loc[i - 2]), ())
        ):
            continue
        if part == "[key]":  # a dict key failed validation: point at the entry itself
            continue
        out.append(part)
    return tuple(out)


_PLAIN_KEY = re.compile(r"[A-Za-z0-9_-]+")


def _render(loc: Loc) -> str | None:
    text = ""
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        elif not _PLAIN_KEY.fullmatch(str(part)):
            # A key of the user's own (an env name) may hold dots, quotes or newlines: quoted, the field
            # path stays one unambiguous line.
            text += f"[{str(part)!r}]"
        else:
            text += f".{part}" if text else str(part)
    return text or None


def _one_of(expected: str) -> str:
    """pydantic's "'a', 'b' or 'c'" -> "a, b, c"."""
    return ", ".join(re.findall(r"'([^']*)'", expected)) or expected


def _problem_for(err: ErrorDetails, root: yaml.Node, filename: str) -> Problem:
    loc = _strip_tags(err["loc"])
    kind = err["type"]
    ctx: dict[str, Any] = dict(err.get("ctx") or {})
    message = _humanize(kind, ctx, err, loc)
    if kind == ERROR_TYPE:
        loc = (*loc, *ctx.get("loc", ()))
    elif kind in ("union_tag_invalid", "union_tag_not_found") and len(loc) >= 2:
        loc = (*loc, _DISCRIMINATOR_NAMES.get(str(loc[-2]), ctx.get("discriminator", "").strip("'")))
    return Problem(filename, _line_of(root, loc), _render(loc), message)


def _humanize(kind: str, ctx: dict[str, Any], err: ErrorDetails, loc: Loc) -> str:
    if kind == ERROR_TYPE:
        return str(ctx["message"])
    if kind == "missing":
        return "required"
    if kind == "extra_forbidden":
        key = str(loc[-1]) if loc else "?"
        if _CREDENTIAL_KEYS.search(key):
            return (
                "unknown key; credentials never go in the config "
                "(OpenStack: clouds.yaml and OS_CLOUD; API token: the api.token_env variable)"
            )
        return "unknown key"
    if kind == "literal_error":
        return f"must be one of: {_one_of(str(ctx.get('expected', '')))}"
    if kind == "union_tag_invalid":
        return f"must be one of: {_one_of(str(ctx.get('expected_tags', '')))}"
    if kind == "union_tag_not_found":
        parent = str(loc[-2]) if len(loc) >= 2 else ""
        choices = _DISCRIMINATED_LISTS.get(parent)
        if choices is not None:
            order = TIERS if parent == "groups" else METRIC_TYPES
            return f"required, one of: {', '.join(t for t in order if t in choices)}"
        return "required"
    if kind == "greater_than":
        return f"must be > {ctx['gt']}"
    if kind == "greater_than_equal":
        return f"must be >= {ctx['ge']}"
    if kind == "less_than":
        return f"must be < {ctx['lt']}"
    if kind == "less_than_equal":
        return f"must be <= {ctx['le']}"
    if kind in ("too_short", "string_too_short"):
        n = ctx.get("min_length")
        return "must not be empty" if n == 1 else f"needs at least {n}"
    if kind == "too_long":
        return f"must have at most {ctx.get('max_length')} items"
    if kind == "string_pattern_mismatch":
        return _pattern_message(loc, str(ctx.get("pattern", "")))
    simple = {
        "int_type": "expected an integer",
        "int_parsing": "expected an integer",
        "int_from_float": "expected a whole number",
        "float_type": "expected a number",
        "float_parsing": "expected a number",
        "string_type": "expected a string",
        "bool_type": "expected true or false",
        "list_type": "expected a list",
        "tuple_type": "expected a list",
        "dict_type": "expected a mapping",
        "model_type": "expected a mapping",
        "model_attributes_type": "expected a mapping",
        "path_type": "expected a path",
        "finite_number": "must be a finite number",
    }
    if kind in simple:
        return f"{simple[kind]} (got {_show(err.get('input'))})"
    if kind == "value_error" and "error" in ctx:
        return str(ctx["error"])
    msg = err["msg"]
    return msg[:1].lower() + msg[1:]


def _show(value: Any) -> str:
    """A value as YAML would spell it (the user wrote YAML, not Python)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str | int | float):
        return repr(value)
    return {dict: "a mapping", list: "a list"}.get(type(value), type(value).__name__)


def _pattern_message(loc: Loc, pattern: str) -> str:
    last = loc[-1] if loc else ""
    if last == "token_env":
        return "must be an environment variable name like TIERSCALE_API_TOKEN"
    if last == "path":
        return "must start with /"
    if last == "url":
        return "expected an http:// or https:// URL"
    return f"must match {pattern}"


def _dedupe(problems: list[Problem]) -> list[Problem]:
    out: list[Problem] = []
    for p in problems:
        if p not in out:
            out.append(p)
    return out
