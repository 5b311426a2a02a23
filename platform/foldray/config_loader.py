"""The one typed config loader: YAML/JSON mappings into frozen dataclasses.

Every settings file of foldray (model, runtime, training, MSA, serve) is a tree of frozen,
keyword-only dataclasses; this module turns a plain mapping into one, checking each value
against its field's type hint. An unknown key or a wrong type is a `ConfigError` naming the
dotted key (`run.max_steps`), so a typo never runs the wrong thing. Overrides are the same
everywhere: `key=value` strings with dotted keys and YAML values (`--set optimizer.lr=5e-4`).
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from collections.abc import Mapping, Sequence
from typing import Any, Literal, TypeVar

import yaml

from foldray.errors import InputError

T = TypeVar("T")


class ConfigError(InputError):
    """A bad setting; `key` is its dotted path (`run.max_steps`, `data.train[0].path`)."""

    def __init__(self, message: str, *, key: str = "", source: str = "") -> None:
        super().__init__(message, source=source, field=key)

    @property
    def key(self) -> str:
        return self.field

    def located(self, *, source: str | None = None, job: str | None = None,
                field_prefix: str | None = None) -> ConfigError:
        key = f"{field_prefix}.{self.field}".strip(".") if field_prefix else self.field
        return ConfigError(self.message, key=key, source=self.source or (source or ""))

    def __reduce__(self):  # keep the class and the key across Ray's pickling
        return (_rebuild_config_error, (self.message, self.field, self.source))


def _rebuild_config_error(message: str, key: str, source: str) -> ConfigError:
    return ConfigError(message, key=key, source=source)


def load_dataclass(cls: type[T], data: Mapping[str, Any] | None, *, where: str = "") -> T:
    """`cls` built from `data`, recursively and type-checked.

    Nested dataclasses, `X | None`, unions (first arm that fits), `Literal`, `tuple[X, ...]`,
    fixed tuples, `list[X]` and `dict[str, X]` are converted; a key `a.b` inside a mapping for
    a dataclass sets field `b` of field `a`. `where` prefixes every error key. A
    `__post_init__` ValueError becomes a ConfigError located at that dataclass.
    """
    return _build(cls, {} if data is None else data, where)


def set_dotted(data: dict[str, Any], key: str, value: Any, *, where: str = "overrides") -> None:
    """Set `a.b.c` in a nested dict, creating the mappings on the way (None becomes {})."""
    parts = key.split(".")
    if not all(parts):
        raise ConfigError(f"{where}: {key!r} is not a dotted key", key=key)
    node = data
    for i, part in enumerate(parts[:-1]):
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"{where}: {'.'.join(parts[:i + 1])!r} is not a section",
                              key=".".join(parts[:i + 1]))
        node = child
    node[parts[-1]] = value


def merge(base: dict[str, Any], data: Mapping[str, Any], *, where: str = "config") -> dict[str, Any]:
    """`data` laid over `base` (changed and returned): nested mappings merge key by key, dotted
    keys set one nested value, anything else replaces."""
    for key, value in data.items():
        key = str(key)
        if "." in key:
            set_dotted(base, key, value, where=where)
        elif isinstance(value, Mapping) and isinstance(base.get(key), dict):
            merge(base[key], value, where=where)
        else:
            base[key] = value
    return base


def apply_overrides(data: dict[str, Any], overrides: Sequence[str], *,
                    where: str = "overrides") -> dict[str, Any]:
    """`data` with each `key=value` applied in order (dotted key; the value parsed as YAML,
    so `3` is an int, `[a, b]` a list, `{x: 1}` a mapping). Changes and returns `data`."""
    for item in overrides:
        key, sep, raw = str(item).partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"{where}: {item!r} is not key=value (dotted key, YAML value)")
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError as err:
            raise ConfigError(f"{where}: the value is not YAML ({type(err).__name__})", key=key) from None
        set_dotted(data, key, value, where=where)
    return data


def read_mapping(path_or_text: str | Mapping[str, Any] | None, *, kind: str = "config") -> dict[str, Any]:
    """The YAML mapping of a file (local path or URL, read through foldray.io.storage) or of
    YAML text (anything with a newline, or not ending in .yaml/.yml/.json). None -> {}."""
    if path_or_text is None:
        return {}
    if isinstance(path_or_text, Mapping):
        return dict(path_or_text)
    source = ""
    text = path_or_text
    if "\n" not in text and text.strip().endswith((".yaml", ".yml", ".json")):
        from foldray.io import storage

        source = text.strip()
        try:
            text = storage.read_text(source)
        except FileNotFoundError:
            raise ConfigError(f"{kind} file not found", source=source) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"not valid YAML{at}", source=source) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"a {kind} is a YAML mapping of settings, got {type(data).__name__}",
                          source=source)
    return data


def load_config_file(cls: type[T], path_or_text: str | Mapping[str, Any] | None,
                     overrides: Sequence[str] = (), *, kind: str = "config") -> T:
    """`cls` from a YAML file or text (see read_mapping), with `key=value` overrides applied."""
    source = path_or_text.strip() if isinstance(path_or_text, str) and "\n" not in path_or_text else ""
    data = read_mapping(path_or_text, kind=kind)
    try:
        apply_overrides(data, overrides)
        return load_dataclass(cls, data)
    except ConfigError as err:
        raise err.located(source=source if source.endswith((".yaml", ".yml", ".json")) else "") from None


def to_plain(obj: Any) -> Any:
    """A dataclass tree as plain dicts/lists/scalars (tuples become lists): YAML/JSON ready,
    and `load_dataclass(type(obj), to_plain(obj)) == obj`."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, Mapping):
        return {k: to_plain(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [to_plain(v) for v in obj]
    return obj


def field_names(cls: type) -> list[str]:
    return [f.name for f in dataclasses.fields(cls) if f.init]


# ---------------------------------------------------------------------------- conversion


def _join(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def _build(cls: type, data: Any, where: str) -> Any:
    if dataclasses.is_dataclass(data) and isinstance(data, cls):
        return data
    if not isinstance(data, Mapping):
        raise ConfigError(f"expected a mapping of {cls.__name__} settings, got {_kind(data)}", key=where)
    hints = typing.get_type_hints(cls)
    names = field_names(cls)
    values: dict[str, Any] = {}
    for key, value in data.items():
        key = str(key)
        head, dot, rest = key.partition(".")
        if head not in names:
            raise ConfigError(_unknown(head, names), key=_join(where, head))
        if dot:   # "runtime.precision": set inside the nested section
            if not dataclasses.is_dataclass(_strip_optional(hints[head])):
                raise ConfigError(f"{head!r} is not a section", key=_join(where, key))
            section = values.get(head)
            section = dict(section) if isinstance(section, Mapping) else {}
            set_dotted(section, rest, value, where=_join(where, head))
            values[head] = section
        elif isinstance(value, Mapping) and isinstance(values.get(head), Mapping):
            values[head] = {**values[head], **value}
        else:
            values[head] = value
    kwargs = {k: _convert(hints[k], v, _join(where, k)) for k, v in values.items()}
    try:
        return cls(**kwargs)
    except ConfigError as err:
        raise err.located(field_prefix=where) from None
    except (ValueError, TypeError) as err:
        raise ConfigError(str(err), key=where) from None


def _convert(hint: Any, value: Any, where: str) -> Any:
    """Check and convert one value against a field's type hint."""
    if hint is Any or hint is object:
        return value
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        arms = [a for a in args if a is not type(None)]
        first: ConfigError | None = None
        for arm in arms:
            try:
                return _convert(arm, value, where)
            except ConfigError as err:
                first = first or err
        assert first is not None
        raise first
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, where)
    if origin is Literal:
        if not any(type(value) is type(a) and value == a for a in args):
            raise ConfigError(f"{value!r} is not one of {', '.join(map(repr, args))}", key=where)
        return value
    if origin is tuple:
        if isinstance(value, str) or not isinstance(value, list | tuple):
            value = [value]
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(args[0], v, f"{where}[{i}]") for i, v in enumerate(value))
        if args and len(value) != len(args):
            raise ConfigError(f"expected {len(args)} values, got {len(value)}", key=where)
        if not args:
            return tuple(value)
        pairs = enumerate(zip(args, value, strict=True))
        return tuple(_convert(a, v, f"{where}[{i}]") for i, (a, v) in pairs)
    if origin is list:
        if isinstance(value, str) or not isinstance(value, list | tuple):
            raise ConfigError(f"expected a list, got {_kind(value)}", key=where)
        return [_convert(args[0], v, f"{where}[{i}]") if args else v for i, v in enumerate(value)]
    if origin is dict or hint is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"expected a mapping, got {_kind(value)}", key=where)
        inner = args[1] if len(args) == 2 else Any
        return {str(k): _convert(inner, v, _join(where, str(k))) for k, v in value.items()}
    if hint is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)   # YAML 1.1 reads "1e-8" (no dot) as a string
            except ValueError:
                pass
        raise ConfigError(f"expected a number, got {_kind(value)}", key=where)
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"expected int, got {_kind(value)}", key=where)
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"expected true or false, got {_kind(value)}", key=where)
    if hint is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"expected str, got {_kind(value)}", key=where)
    if isinstance(hint, type) and not isinstance(value, hint):
        raise ConfigError(f"expected {hint.__name__}, got {_kind(value)}", key=where)
    return value


def _strip_optional(hint: Any) -> Any:
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        arms = [a for a in typing.get_args(hint) if a is not type(None)]
        return arms[0] if len(arms) == 1 else hint
    return hint


def _unknown(key: str, names: list[str]) -> str:
    close = difflib.get_close_matches(key, names, n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    return f"unknown key ({hint}known keys: {', '.join(names)})"


def _kind(value: Any) -> str:
    """A value's description for an error: short, never a whole file's content."""
    if value is None or isinstance(value, bool | int | float):
        return repr(value)
    if isinstance(value, str):
        return repr(value) if len(value) <= 40 else f"a string of {len(value)} characters"
    return type(value).__name__
