"""Dotted command-line overrides and ``--help`` for the experiment config.

A small parser on purpose: every stage needs the same three behaviours —
``--section.field value`` (or ``=value``) overrides, a ``--help`` that lists
every field with its doc, and a one-line error that names the offending key —
and the error must be one line, which general CLI libraries do not give.
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import functools
import inspect
import textwrap
import typing
from typing import Any, Literal, get_args, get_origin

from mmgen.config.errors import ConfigError


@functools.cache
def field_docs(cls: type) -> dict[str, str]:
    """The string literal under each field of a dataclass (torchtitan's doc style)."""
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    except (OSError, TypeError):
        return {}
    body = tree.body[0].body  # type: ignore[attr-defined]
    docs: dict[str, str] = {}
    for stmt, nxt in zip(body, body[1:]):
        if (
            isinstance(stmt, ast.AnnAssign)
            and isinstance(stmt.target, ast.Name)
            and isinstance(nxt, ast.Expr)
            and isinstance(nxt.value, ast.Constant)
            and isinstance(nxt.value.value, str)
        ):
            docs[stmt.target.id] = " ".join(nxt.value.value.split())
    return docs


def _leaf_fields(obj: Any, prefix: str = "") -> dict[str, tuple[Any, str, Any]]:
    """Map 'section.field' to (owning dataclass, field name, type) for every leaf."""
    hints = typing.get_type_hints(type(obj))
    leaves: dict[str, tuple[Any, str, Any]] = {}
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        key = prefix + f.name
        if dataclasses.is_dataclass(value):
            leaves.update(_leaf_fields(value, key + "."))
        else:
            leaves[key] = (obj, f.name, hints[f.name])
    return leaves


_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off"}


def _coerce(raw: str, typ: Any) -> Any:
    origin = get_origin(typ)
    if origin is Literal:
        choices = get_args(typ)
        if raw not in choices:
            raise ValueError(f"{raw!r} is not one of {', '.join(map(str, choices))}")
        return raw
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        args = [a for a in get_args(typ) if a is not type(None)]
        if raw.lower() in {"none", "null"} and len(args) < len(get_args(typ)):
            return None
        return _coerce(raw, args[0])
    if origin in (tuple, list):
        inner = get_args(typ)[0]
        items = [p for p in raw.split(",") if p.strip()]
        return origin(_coerce(p.strip(), inner) for p in items)
    if typ is bool:
        if raw.lower() in _TRUE:
            return True
        if raw.lower() in _FALSE:
            return False
        raise ValueError(f"{raw!r} is not a boolean (true/false)")
    if typ is int:
        try:
            return int(raw.replace("_", ""))
        except ValueError:
            raise ValueError(f"{raw!r} is not an integer") from None
    if typ is float:
        try:
            return float(raw)
        except ValueError:
            raise ValueError(f"{raw!r} is not a number") from None
    return raw


def apply_overrides(config: Any, overrides: dict[str, str]) -> None:
    """Set each dotted key of ``overrides`` on ``config``; raise ConfigError on a bad key or value."""
    leaves = _leaf_fields(config)
    for key, raw in overrides.items():
        if key not in leaves:
            close = difflib.get_close_matches(key, list(leaves), n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise ConfigError(f"unknown config key '{key}'{hint}")
        owner, name, typ = leaves[key]
        try:
            setattr(owner, name, _coerce(raw, typ))
        except ValueError as err:
            raise ConfigError(f"bad value for '{key}': {err}") from None


def _type_name(typ: Any) -> str:
    if get_origin(typ) is Literal:
        return "{" + ",".join(map(str, get_args(typ))) + "}"
    return getattr(typ, "__name__", str(typ).replace("typing.", ""))


def help_text(config: Any) -> str:
    """Every field as '--key TYPE (default: value)' followed by its doc, section by section."""
    lines: list[str] = []

    def walk(obj: Any, prefix: str) -> None:
        docs = field_docs(type(obj))
        hints = typing.get_type_hints(type(obj))
        for f in dataclasses.fields(obj):
            value = getattr(obj, f.name)
            if dataclasses.is_dataclass(value):
                lines.append(f"\n[{prefix}{f.name}]")
                walk(value, prefix + f.name + ".")
                continue
            lines.append(f"  --{prefix}{f.name} {_type_name(hints[f.name])}  (default: {value!r})")
            if f.name in docs:
                lines.append(textwrap.fill(docs[f.name], width=88, initial_indent=" " * 6, subsequent_indent=" " * 6))

    walk(config, "")
    return "\n".join(lines)
