"""Typed dataclass configs that map 1:1 onto YAML recipes and dotted CLI flags.

A stage's config is a dataclass whose fields are nested dataclasses (`train`, `model`, ...) or
plain values. A YAML recipe is the same tree on disk; `--train.lr 3e-4` overrides one leaf.
Every value is type-checked, and an unknown key is an error naming the key and the nearest
valid one. Field help comes from `metadata={"help": ...}` (see `option`).
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import types
import typing
from pathlib import Path
from typing import Any, Literal, Union

import yaml

from lmforge.errors import LmforgeError
from lmforge.publish import write_text_atomic


def option(default: Any, help: str) -> Any:
    """A dataclass field with a default and the help text shown by `--help`."""
    if isinstance(default, (list, dict)):
        return dataclasses.field(default_factory=lambda d=default: type(d)(d), metadata={"help": help})
    return dataclasses.field(default=default, metadata={"help": help})


def _field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _is_optional(tp: Any) -> tuple[bool, Any]:
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(tp)) == 2:
            return True, args[0]
    return False, tp


def type_name(tp: Any) -> str:
    optional, inner = _is_optional(tp)
    if optional:
        return f"{type_name(inner)} or null"
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " | ".join(_choice_text(a) for a in typing.get_args(tp))
    if origin is list:
        return f"list of {type_name(typing.get_args(tp)[0])}"
    if tp is dict:
        return "mapping"
    if dataclasses.is_dataclass(tp):
        fields = ", ".join(f.name for f in dataclasses.fields(tp))
        short = getattr(tp, "SHORTHAND", None)
        return f"{short} or mapping of {fields}" if short else f"mapping of {fields}"
    return getattr(tp, "__name__", str(tp))


def _choice_text(choice: Any) -> str:
    """How a Literal choice is written in YAML and on the command line (`true`, not `True`)."""
    return str(choice).lower() if isinstance(choice, bool) else str(choice)


def _bad(key: str, value: Any, tp: Any) -> LmforgeError:
    return LmforgeError(
        f"config field '{key}': got {value!r}, expected {type_name(tp)}; fix the value in the recipe or the --{key} flag"
    )


def coerce(tp: Any, value: Any, key: str) -> Any:
    """Check `value` (from YAML or a CLI string) against `tp`; return it converted."""
    optional, inner = _is_optional(tp)
    if value is None or (isinstance(value, str) and value.lower() in ("null", "none") and optional):
        if optional:
            return None
        raise _bad(key, value, tp)
    tp = inner
    origin = typing.get_origin(tp)
    if origin is Literal:
        choices = typing.get_args(tp)
        for choice in choices:
            if isinstance(choice, bool) != isinstance(value, bool) and not isinstance(value, str):
                continue  # 1 == True in Python, but `1` is not the choice `true`
            if value == choice or (
                isinstance(value, str)
                and _choice_text(choice) == (value.lower() if isinstance(choice, bool) else value)
            ):
                return choice
        raise _bad(key, value, tp)
    if origin is list:
        (item_tp,) = typing.get_args(tp)
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, (list, tuple)):
            raise _bad(key, value, tp)
        if dataclasses.is_dataclass(item_tp):  # a mapping per item, or the shorthand: a bare value of one field
            short = getattr(item_tp, "SHORTHAND", None)
            return [
                from_dict(item_tp, {short: v} if short and not isinstance(v, dict) else v, f"{key}[{i}].")
                for i, v in enumerate(value)
            ]
        if item_tp in (int, float) or typing.get_origin(item_tp) is Literal:  # `--seeds 1,2,3` = `--seeds 1 2 3`
            value = [part for v in value for part in (v.split(",") if isinstance(v, str) else [v]) if part != ""]
        return [coerce(item_tp, v, f"{key}[{i}]") for i, v in enumerate(value)]
    if tp is dict:
        if not isinstance(value, dict):
            raise _bad(key, value, tp)
        return dict(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "yes", "1", "on"):
            return True
        if isinstance(value, str) and value.lower() in ("false", "no", "0", "off"):
            return False
        raise _bad(key, value, tp)
    if tp is int:
        if isinstance(value, bool):
            raise _bad(key, value, tp)
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                number = float(value.replace("_", ""))
            except ValueError:
                raise _bad(key, value, tp) from None
            if number.is_integer():
                return int(number)
        raise _bad(key, value, tp)
    if tp is float:
        if isinstance(value, bool):
            raise _bad(key, value, tp)
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                raise _bad(key, value, tp) from None
        raise _bad(key, value, tp)
    if tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise _bad(key, value, tp)
    raise TypeError(f"unsupported config type {tp!r} for {key}")


def from_dict(cls: type, data: dict | None, prefix: str = "", base: Any = None) -> Any:
    """Build dataclass `cls` from a nested dict, checking every key and type. Keys not given keep
    `base`'s values (a section's `default_factory` instance: fine-tuning's `train` defaults), else
    the class defaults."""
    data = data or {}
    if not isinstance(data, dict):
        where = prefix.rstrip(".") or "the recipe"
        raise LmforgeError(f"config section '{where}' must be a mapping of keys to values, got {type(data).__name__}")
    hints = _field_types(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    for key in data:
        if key not in names:
            near = difflib.get_close_matches(str(key), names, n=1)
            hint = f"; did you mean '{prefix}{near[0]}'?" if near else f"; valid keys here: {', '.join(names)}"
            raise LmforgeError(f"unknown config key '{prefix}{key}'{hint}")
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name not in data:
            continue
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            kwargs[f.name] = from_dict(tp, data[f.name], f"{prefix}{f.name}.", _default_of(f))
        else:
            kwargs[f.name] = coerce(tp, data[f.name], f"{prefix}{f.name}")
    return dataclasses.replace(base, **kwargs) if base is not None else cls(**kwargs)


def to_dict(obj: Any) -> dict:
    return dataclasses.asdict(obj)


def leaves(cls: type, prefix: str = "", defaults: Any = None) -> list[tuple[str, Any, dataclasses.Field, Any]]:
    """Every leaf field as (dotted key, type, field, default), depth first; a section built by a
    `default_factory` gives its leaves that instance's values as defaults."""
    out = []
    hints = _field_types(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        default = getattr(defaults, f.name) if defaults is not None else _default_of(f)
        if dataclasses.is_dataclass(tp):
            out.extend(leaves(tp, f"{prefix}{f.name}.", default))
        else:
            out.append((f"{prefix}{f.name}", tp, f, default))
    return out


def _default_of(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return f.default_factory()  # type: ignore[misc]
    return None


def _metavar(tp: Any) -> str:
    """`{a,b,c}` for choices, else the plain type name: INT, FLOAT, STR, BOOL."""
    inner = _is_optional(tp)[1]
    if typing.get_origin(inner) is list:
        inner = typing.get_args(inner)[0]
    if typing.get_origin(inner) is Literal:
        return "{" + ",".join(_choice_text(a) for a in typing.get_args(inner)) + "}"
    if dataclasses.is_dataclass(inner) and getattr(inner, "SHORTHAND", None):
        return inner.SHORTHAND.upper()
    return getattr(inner, "__name__", "VALUE").upper()


def add_arguments(parser: argparse.ArgumentParser, cls: type, skip: tuple[str, ...] = ()) -> None:
    """One `--dotted.key VALUE` option per leaf field, documented from the field's help."""
    groups: dict[str, argparse._ArgumentGroup] = {}
    for key, tp, f, default in leaves(cls):
        if key in skip:
            continue
        section = key.rsplit(".", 1)[0] if "." in key else "general"
        group = groups.setdefault(section, parser.add_argument_group(f"{section} options"))
        help_text = f.metadata.get("help", "")
        kwargs: dict[str, Any] = {"dest": f"cfg:{key}", "default": argparse.SUPPRESS, "metavar": _metavar(tp)}
        if typing.get_origin(_is_optional(tp)[1]) is list:
            kwargs["nargs"] = "+"
        help_text = f"{help_text} [{type_name(tp)}; default: {default}]".replace("%", "%%")
        group.add_argument(f"--{key}", help=help_text, **kwargs)


def overrides_from_args(args: argparse.Namespace) -> dict[str, Any]:
    return {k[4:]: v for k, v in vars(args).items() if k.startswith("cfg:")}


RECIPES = Path(__file__).parent / "recipes"  # shipped with the package: `--config shakespeare_char`


def packaged_recipes() -> list[str]:
    return sorted(p.stem for p in RECIPES.glob("*.yaml"))


def recipe_path(name: str | Path) -> Path:
    """A recipe file, or the packaged recipe of that name (`shakespeare_char` or `shakespeare_char.yaml`)."""
    path = Path(name)
    if path.is_file() or len(path.parts) > 1:
        return path
    packaged = RECIPES / (path.name if path.suffix == ".yaml" else f"{path.name}.yaml")
    return packaged if packaged.is_file() else path


def load_yaml(path: str | Path) -> dict:
    path = recipe_path(path)
    if not path.is_file():
        raise LmforgeError(
            f"config file {path} not found; pass a recipe file to --config, or a packaged recipe: {', '.join(packaged_recipes())}"
        )
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f":{mark.line + 1}" if mark is not None else ""
        raise LmforgeError(
            f"{path}{where}: not valid YAML ({getattr(err, 'problem', err)}); fix the recipe syntax"
        ) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise LmforgeError(
            f"{path}: a recipe must be a mapping of sections (train:, model:, ...), got {type(data).__name__}"
        )
    return data


def set_dotted(data: dict, key: str, value: Any) -> None:
    parts = key.split(".")
    node = data
    for part in parts[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = {}
            node[part] = child
        node = child
    node[parts[-1]] = value


def resolve(cls: type, recipe: str | Path | None = None, overrides: dict[str, Any] | None = None) -> Any:
    """Recipe file (optional) plus dotted overrides -> a checked `cls` instance."""
    data = load_yaml(recipe) if recipe else {}
    for key, value in (overrides or {}).items():
        set_dotted(data, key, value)
    try:
        return from_dict(cls, data)
    except LmforgeError as err:
        if recipe:
            raise LmforgeError(f"{recipe}: {err}") from None
        raise


def dump_yaml(obj: Any, path: str | Path) -> None:
    """Write the config as YAML through a fsynced temp file and a rename: a kill mid-write leaves
    the old config.yaml, never an empty one that every later `--resume` would fail on."""
    write_text_atomic(Path(path), yaml.safe_dump(to_dict(obj), sort_keys=False))
