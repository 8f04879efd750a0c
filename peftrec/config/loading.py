"""Typed config schemas loaded strictly: the generic part, whatever the recipe.

A recipe's config is a tree of dataclasses whose fields carry a one-line help and, where the
type allows values the recipe cannot use, the range it accepts
(`option(default, "help", check=at_least(1))`; a section's help is the first line of its class
docstring). Values are resolved as defaults < YAML file < `key.sub=value` overrides; a misspelt
key, a value of the wrong type or out of range fails at start-up with a `ConfigError` naming the
dotted key and where it came from. The schemas of peftrec's recipes are in `peftrec.config`.

    cfg = parse_cli(RatingRecipeConfig)       # --config file.yaml train.lr=1e-3 adapter.r=16
    save_config(cfg, Path(cfg.output_dir) / "config.yaml")
"""

# `option()` returns a `dataclasses.Field` (list/dict defaults are copied), never a shared value.

from __future__ import annotations

import argparse
import copy
import dataclasses
import difflib
import json
import math
import re
import types
import typing
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import field
from pathlib import Path
from typing import Any, Literal, NamedTuple, TypeVar, Union

import yaml

from peftrec.files import write_atomic
from peftrec.shipped import find_config

T = TypeVar("T")

_FLOAT_TEXT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


class ConfigError(ValueError):
    """A config file or override does not match the schema."""


class Check(NamedTuple):
    """A range a field's value must lie in: ``test(value)`` and what it says to the user."""

    test: Callable[[Any], bool]
    requirement: str


def option(default: Any, help: str, check: Check | None = None) -> Any:
    """A dataclass field with a default, a one-line help shown by `--help`, and its range."""
    metadata = {"help": help, "check": check}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: copy.deepcopy(default), metadata=metadata)
    return field(default=default, metadata=metadata)


def at_least(low: int) -> Check:
    return Check(lambda v: v >= low, f"at least {low}" if low else "zero or more")


def or_null(check: Check) -> Check:
    """``check``, or no value at all."""
    return Check(lambda v: v is None or check.test(v), f"null or {check.requirement}")


def positive() -> Check:
    return Check(lambda v: 0 < v < math.inf, "a positive number")


def non_negative() -> Check:
    return Check(lambda v: 0 <= v < math.inf, "zero or positive")


def fraction(low_open: bool = False, high_open: bool = False) -> Check:
    """A value in [0, 1], with either end open."""

    def test(v):
        return ((0 < v) if low_open else (0 <= v)) and ((v < 1) if high_open else (v <= 1))

    return Check(test, f"in {'(' if low_open else '['}0, 1{')' if high_open else ']'}")


def out_of_range(cfg: Any) -> Iterator[str]:
    """A message for every field of ``cfg`` (walked recursively) whose value fails its check."""

    def walk(obj: Any, prefix: str) -> Iterator[str]:
        for f in dataclasses.fields(obj):
            value = getattr(obj, f.name)
            if dataclasses.is_dataclass(value):
                yield from walk(value, f"{prefix}{f.name}.")
            elif (check := f.metadata.get("check")) is not None and not check.test(value):
                yield f"{prefix}{f.name}={value!r}: must be {check.requirement}"

    yield from walk(cfg, "")


# ---------------------------------------------------------------------------------------------
# Generic loading


def load_config(cls: type[T], path: str | Path | None = None, overrides: Iterable[str] = ()) -> T:
    """Build `cls` from its defaults, then a YAML file, then `key.sub=value` overrides.

    Override values are parsed as YAML (`lr=1e-3`, `flag=true`, `targets=[query,value]`,
    `x=null`); a value that is not valid YAML, or that YAML reads as a mapping where the field
    wants text (a template such as `{title} ({year})`), is taken as plain text.
    """
    cfg = cls()
    if path is not None:
        try:
            raw = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
        except yaml.YAMLError as error:
            raise ConfigError(f"{path} is not valid YAML: {error}") from None
        if raw is None:
            raw = {}
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: expected a mapping of keys to values at the top level")
        cfg = _merge(cfg, raw, "", str(path))
    for item in overrides:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"override {item!r}: expected key.sub=value")
        source = f"override {item!r}"
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError:
            value = text
        try:
            cfg = _merge(cfg, _nest(key, value), "", source)
        except ConfigError as error:
            if not isinstance(value, dict):
                raise
            try:
                cfg = _merge(cfg, _nest(key, text), "", source)
            except ConfigError:
                raise error from None
    return cfg


def config_to_dict(cfg: Any) -> dict[str, Any]:
    """The config as plain nested dicts and lists."""
    return dataclasses.asdict(cfg)


def save_config(cfg: Any, path: str | Path) -> None:
    """Write the resolved config as YAML, atomically; `load_config(type(cfg), path)`
    gives it back."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = config_to_dict(cfg)
    text = yaml.safe_dump(data, sort_keys=False, allow_unicode=True)
    if yaml.safe_load(text) != data:  # e.g. U+0085 written raw is read back as a line break
        text = yaml.safe_dump(data, sort_keys=False, allow_unicode=False)
    write_atomic(path, text)  # a crash mid-write never leaves a truncated config


def parse_cli(cls: type[T], argv: Sequence[str] | None = None) -> T:
    """Parse `[--config FILE] [key.sub=value ...]` for a recipe; `--help` lists every key.
    `--config` also takes the name of a shipped config (`minilm_lora_rating`)."""
    parser = argparse.ArgumentParser(
        description=_first_line(cls.__doc__),
        epilog=config_help(cls),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--config",
        metavar="FILE",
        help="YAML file with settings, or a shipped config's name (`peftrec configs` lists them)",
    )
    parser.add_argument("overrides", nargs="*", metavar="key.sub=value", help="settings")
    args = parser.parse_args(argv)
    try:
        return load_config(cls, args.config and find_config(args.config), args.overrides)
    except (ConfigError, OSError) as error:
        parser.error(str(error))


def config_help(cls: type) -> str:
    """Every key of `cls` with its default and help, one per line, grouped by section."""
    lines = ["settings (key = default  help):"]

    def walk(obj: Any, prefix: str) -> None:
        for f in dataclasses.fields(obj):
            value = getattr(obj, f.name)
            help_text = f.metadata.get("help", "")
            if dataclasses.is_dataclass(value):
                help_text = help_text or _first_line(type(value).__doc__)
                lines.append(f"\n{prefix}{f.name}: {help_text}")
                walk(value, f"{prefix}{f.name}.")
            else:
                lines.append(f"  {prefix}{f.name} = {json.dumps(value)}  {help_text}")

    walk(cls(), "")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Helpers


def _merge(obj: Any, raw: dict, prefix: str, source: str) -> Any:
    """A copy of dataclass `obj` with the values in `raw` checked and applied."""
    hints = typing.get_type_hints(type(obj))
    names = [f.name for f in dataclasses.fields(obj)]
    changes = {}
    for name, value in raw.items():
        key = f"{prefix}{name}"
        if name not in names:
            close = difflib.get_close_matches(str(name), names, n=3)
            hint = (
                f"did you mean {', '.join(prefix + c for c in close)}?"
                if close
                else f"valid keys: {', '.join(prefix + n for n in names)}"
            )
            raise ConfigError(f"unknown key {key!r} in {source}; {hint}")
        current = getattr(obj, name)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                raise ConfigError(
                    f"{key!r} in {source} is a section: expected a mapping, got {value!r}"
                )
            changes[name] = _merge(current, value, f"{key}.", source)
        else:
            changes[name] = _check(value, hints[name], key, source)
    return dataclasses.replace(obj, **changes)


def _check(value: Any, tp: Any, key: str, source: str) -> Any:
    """`value` if it matches annotation `tp` (floats may be given as ints or "1e-3")."""

    def fail() -> typing.NoReturn:
        raise ConfigError(
            f"{key!r} in {source}: expected {_type_name(tp)}, got {value!r} "
            f"({type(value).__name__})"
        )

    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any:
        return value
    if tp is type(None):
        return value if value is None else fail()
    if origin in (Union, types.UnionType):
        for arm in args:
            try:
                return _check(value, arm, key, source)
            except ConfigError:
                pass
        fail()
    if origin is Literal:
        if any(value == a and type(value) is type(a) for a in args):
            return value
        fail()
    if tp is bool or tp is str:
        return value if isinstance(value, tp) else fail()
    if tp is int:
        return value if isinstance(value, int) and not isinstance(value, bool) else fail()
    if tp is float:
        if isinstance(value, float) or (isinstance(value, int) and not isinstance(value, bool)):
            return float(value)
        if isinstance(value, str) and _FLOAT_TEXT.fullmatch(value.strip()):
            return float(value)
        fail()
    if origin is list:
        if not isinstance(value, list):
            fail()
        return [_check(v, args[0], f"{key}[{i}]", source) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            fail()
        return {
            _check(k, args[0], f"{key} (a key)", source): _check(v, args[1], f"{key}.{k}", source)
            for k, v in value.items()
        }
    raise TypeError(f"config field {key!r} has an unsupported annotation {tp!r}")


def _type_name(tp: Any) -> str:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is type(None):
        return "null"
    if tp is Any:
        return "any value"
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in args)
    if origin is not None:
        return f"{origin.__name__}[{', '.join(_type_name(a) for a in args)}]"
    return getattr(tp, "__name__", repr(tp))


def _nest(dotted: str, value: Any) -> dict:
    """`"a.b", 1` -> `{"a": {"b": 1}}`."""
    *parents, leaf = dotted.split(".")
    raw: dict = {leaf: value}
    for name in reversed(parents):
        raw = {name: raw}
    return raw


def _first_line(doc: str | None) -> str:
    return (doc or "").strip().split("\n")[0]
