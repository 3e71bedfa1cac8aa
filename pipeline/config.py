"""gloss.toml: every setting of every stage in one file.

The settings are the dataclasses of `pipeline.settings` (`MiningConfig`,
`ExplainerConfig`, `LLMConfig`, ...); `GlossConfig` gathers them under one table each.
A key the dataclasses do not know is an error that names it. Environment variables
override the file (see `ENVIRONMENT`), and command-line flags override both. Reading
settings imports nothing heavy: query commands stay fast.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
import types
import typing
from importlib import resources
from pathlib import Path
from typing import Any

from gloss.pipeline.settings import (  # noqa: F401 - the settings, importable from here too
    MAX_SELECTED,
    CorpusConfig,
    ExplainerConfig,
    GlossConfig,
    LearnConfig,
    LLMConfig,
    LocalServerConfig,
    MiningConfig,
    RunConfig,
    SimulatorConfig,
    SubjectConfig,
    feature_ranges,
    parse_features,
)
from gloss.store.errors import ConfigError, InputError

DEFAULT_PATH = Path("gloss.toml")


# variable -> (path in GlossConfig, meaning)
ENVIRONMENT: dict[str, tuple[str, str]] = {
    "GLOSS_DATABASE_URL": ("database", "database URL"),
    "GLOSS_EXPLAINER_BASE_URL": ("llm.explainer.base_url", "explainer endpoint"),
    "GLOSS_EXPLAINER_MODEL": ("llm.explainer.model", "explainer model"),
    "GLOSS_SIMULATOR_BASE_URL": ("llm.simulator.base_url", "simulator endpoint"),
    "GLOSS_SIMULATOR_MODEL": ("llm.simulator.model", "simulator model"),
}


def load(path: str | Path | None = None, *, template_if_missing: bool = True) -> GlossConfig:
    """Read `path` (default ./gloss.toml), then the environment.

    Without a file, `gloss run` starts from the `gloss init` template (sized for the
    bundled models); the single-stage commands start from the dataclass defaults.
    """
    explicit = path is not None
    path = Path(path) if path is not None else DEFAULT_PATH
    data: dict[str, Any] = {}
    if path.exists():
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as error:
            raise ConfigError(f"{path} is not valid TOML: {error}") from None
        except UnicodeDecodeError:
            raise ConfigError(f"{path} is not UTF-8 text") from None
    elif explicit:
        raise ConfigError(f"config file {path} does not exist: create one with gloss init")
    elif template_if_missing:
        data = tomllib.loads(template())  # no gloss.toml: run as `gloss init` would set up
    config = build(GlossConfig, data, str(path))
    for variable, (where, _) in ENVIRONMENT.items():
        value = os.environ.get(variable)
        if value:
            set_path(config, where, value)
    return config


def build(cls: type, data: Any, where: str) -> Any:
    """A dataclass from a TOML table, checking every key and type."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a table, got {data!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(
            f"{where}: unknown key {unknown[0]!r} (known keys: {', '.join(sorted(fields))})"
        )
    values = {name: _coerce(hints[name], value, f"{where}: {name}") for name, value in data.items()}
    try:
        return cls(**values)
    except (TypeError, ValueError, ConfigError, InputError) as error:
        raise ConfigError(f"{where}: {error}") from None


def _coerce(hint: Any, value: Any, where: str) -> Any:
    if dataclasses.is_dataclass(hint):
        return build(hint, value, where)
    options = typing.get_args(hint) if _is_union(hint) else (hint,)
    for option in options:
        if option is type(None) and value is None:
            return None
        origin = typing.get_origin(option) or option
        if origin is float and isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        if origin is int and isinstance(value, int) and not isinstance(value, bool):
            return value
        if origin in (str, bool) and type(value) is origin:
            return value
        if origin in (list, tuple) and isinstance(value, list):
            return origin(value)
        if origin is dict and isinstance(value, dict):
            return value
        if origin is typing.Any:
            return value
    expected = " or ".join(getattr(o, "__name__", str(o)) for o in options)
    raise ConfigError(f"{where} must be {expected}, not {value!r}")


def _is_union(hint: Any) -> bool:
    return typing.get_origin(hint) in (typing.Union, types.UnionType)


def set_path(config: Any, where: str, value: Any) -> None:
    *parents, name = where.split(".")
    target = config
    for parent in parents:
        target = getattr(target, parent)
    hint = typing.get_type_hints(type(target))[name]
    if isinstance(value, str) and not _accepts_str(hint):
        value = tomllib.loads(f"v = {value}")["v"]
    setattr(target, name, _coerce(hint, value, where))
    check = getattr(target, "__post_init__", None)
    if check is not None:
        check()


def _accepts_str(hint: Any) -> bool:
    options = typing.get_args(hint) if _is_union(hint) else (hint,)
    return str in options


def template() -> str:
    """The commented gloss.toml that `gloss init` writes."""
    return resources.files("gloss.pipeline").joinpath("gloss.toml").read_text(encoding="utf-8")
