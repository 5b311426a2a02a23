"""The shared typed config loader: nested dataclasses, strict keys, located errors, overrides."""

from __future__ import annotations

import pickle
from dataclasses import dataclass, field
from typing import Any, Literal

import pytest

from foldray.config_loader import (
    ConfigError,
    apply_overrides,
    load_config_file,
    load_dataclass,
    to_plain,
)
from foldray.errors import InputError


@dataclass(frozen=True, kw_only=True)
class Inner:
    size: int = 1
    rate: float = 0.5
    mode: Literal["a", "b"] = "a"

    def __post_init__(self) -> None:
        if self.size < 1:
            raise ValueError("size must be >= 1")


@dataclass(frozen=True, kw_only=True)
class Item:
    path: str
    names: tuple[str, ...] = ()


@dataclass(frozen=True, kw_only=True)
class Outer:
    name: str = "x"
    flag: bool = False
    inner: Inner = field(default_factory=Inner)
    maybe: Inner | None = None
    limit: int | None = None
    items: tuple[Item, ...] = ()
    pair: tuple[float, float] = (0.1, 4.0)
    weights: dict[str, float] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)


def test_nested_values_are_converted_and_round_trip():
    config = load_dataclass(Outer, {
        "inner": {"size": 3, "rate": 1, "mode": "b"}, "maybe": {"size": 2}, "limit": None,
        "items": [{"path": "/x", "names": ["a", "b"]}, {"path": "/y", "names": "c"}],
        "pair": [1, 2], "weights": {"w": 2}, "extra": {"k.dotted": [1]}})
    assert config.inner == Inner(size=3, rate=1.0, mode="b") and isinstance(config.inner.rate, float)
    assert config.maybe == Inner(size=2)
    assert config.items == (Item(path="/x", names=("a", "b")), Item(path="/y", names=("c",)))
    assert config.pair == (1.0, 2.0) and config.weights == {"w": 2.0}
    assert config.extra == {"k.dotted": [1]}       # free-form mappings keep dotted keys
    assert load_dataclass(Outer, to_plain(config)) == config
    assert to_plain(config)["items"][0]["names"] == ["a", "b"]           # YAML-friendly lists
    assert load_dataclass(Outer, None) == Outer()


def test_dotted_keys_set_nested_fields():
    config = load_dataclass(Outer, {"inner.size": 4, "inner": {"rate": 0.25}, "maybe.mode": "b"})
    assert config.inner == Inner(size=4, rate=0.25) and config.maybe == Inner(mode="b")


@pytest.mark.parametrize(("data", "key", "message"), [
    ({"nmae": "y"}, "nmae", "did you mean 'name'"),
    ({"inner": {"sise": 2}}, "inner.sise", "unknown key"),
    ({"inner.sise": 2}, "inner.sise", "unknown key"),
    ({"name.x": 1}, "name.x", "not a section"),
    ({"inner": {"size": "ten"}}, "inner.size", "expected int, got 'ten'"),
    ({"inner": {"size": True}}, "inner.size", "expected int"),
    ({"inner": {"rate": "fast"}}, "inner.rate", "expected a number"),
    ({"inner": {"mode": "c"}}, "inner.mode", "not one of 'a', 'b'"),
    ({"flag": "yes"}, "flag", "expected true or false"),
    ({"inner": 3}, "inner", "expected a mapping"),
    ({"items": [{"path": "/x"}, {"path": 5}]}, "items[1].path", "expected str"),
    ({"items": [{"names": []}]}, "items[0]", "path"),                  # a required field
    ({"pair": [1, 2, 3]}, "pair", "expected 2 values"),
    ({"weights": {"w": "heavy"}}, "weights.w", "expected a number"),
    ({"inner": {"size": 0}}, "inner", "size must be >= 1"),              # __post_init__
])
def test_bad_values_are_located_errors(data, key, message):
    with pytest.raises(ConfigError, match=message) as caught:
        load_dataclass(Outer, data, where="")
    assert caught.value.key == key
    assert isinstance(caught.value, ValueError) and isinstance(caught.value, InputError)


def test_where_prefixes_keys():
    with pytest.raises(ConfigError) as caught:
        load_dataclass(Inner, {"size": "x"}, where="runtime")
    assert caught.value.key == "runtime.size" and str(caught.value).startswith("runtime.size: ")


def test_overrides_parse_yaml_values_and_create_sections():
    data = apply_overrides({"inner": {"size": 2}, "maybe": None}, [
        "inner.rate=1e-4", "maybe.size=5", "items=[{path: /p}]", "name=a=b", "extra={x: 1}"])
    config = load_dataclass(Outer, data)
    assert config.inner == Inner(size=2, rate=1e-4)        # "1e-4" (YAML 1.1 string) is a float
    assert config.maybe == Inner(size=5) and config.items == (Item(path="/p"),)
    assert config.name == "a=b" and config.extra == {"x": 1}


@pytest.mark.parametrize(("item", "message"), [
    ("inner.size", "key=value"), ("=3", "key=value"), ("inner..size=3", "dotted key"),
    ("name.sub=1", "not a section"), ("inner=[", "not YAML")])
def test_bad_overrides(item, message):
    with pytest.raises(ConfigError, match=message):
        apply_overrides({"name": "x"}, [item])


def test_load_config_file_from_text_and_path(tmp_path):
    loaded = load_config_file(Outer, "inner: {size: 2}\n", ["flag=true"])
    assert loaded == Outer(inner=Inner(size=2), flag=True)
    path = tmp_path / "settings.yaml"
    path.write_text("inner:\n  size: ten\n")
    with pytest.raises(ConfigError) as caught:
        load_config_file(Outer, str(path))
    assert caught.value.key == "inner.size" and caught.value.source == str(path)
    assert str(caught.value) == f"{path}: inner.size: expected int, got 'ten'"
    path.write_text("- a list\n")
    with pytest.raises(ConfigError, match="YAML mapping"):
        load_config_file(Outer, str(path))
    path.write_text("a: [\n")
    with pytest.raises(ConfigError, match="not valid YAML at line"):
        load_config_file(Outer, str(path))
    with pytest.raises(ConfigError, match="not found"):
        load_config_file(Outer, str(tmp_path / "missing.yaml"))
    assert load_config_file(Outer, "") == Outer()


def test_error_survives_pickling():
    err = pickle.loads(pickle.dumps(ConfigError("bad", key="a.b", source="f.yaml")))
    assert isinstance(err, ConfigError) and err.key == "a.b" and str(err) == "f.yaml: a.b: bad"
