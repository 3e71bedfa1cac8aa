"""gloss.toml: every setting of every stage in one file.

Each stage owns a dataclass of its settings (`MiningConfig`, `ExplainerConfig`,
`LLMConfig`, ...); `GlossConfig` gathers them under one table each. A key the
dataclasses do not know is an error that names it. Environment variables
override the file (see `ENVIRONMENT`), and command-line flags override both.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
import types
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from pipeline.corpus import CorpusConfig
from pipeline.explainer import ExplainerConfig
from pipeline.learn import LearnConfig
from pipeline.llm import LLMConfig
from pipeline.local_llm import LocalServerConfig
from pipeline.mining import MiningConfig
from pipeline.simulator import SimulatorConfig
from pipeline.subjects import parse_device
from store.errors import ConfigError, InputError

DEFAULT_PATH = Path("gloss.toml")


MAX_SELECTED = 100_000_000  # indices a selector may name when the source's width is unknown


def feature_ranges(spec: str | None) -> list[range] | None:
    """The half-open ranges a selector names (`7` is 7:8), checked; None = every feature."""
    if spec is None or not spec.strip():
        return None
    ranges: list[range] = []
    for part in spec.split(","):
        part = part.strip()
        if not part:
            continue
        start_text, colon, stop_text = part.partition(":")
        try:
            start = int(start_text or 0)
            stop = int(stop_text) if colon else start + 1
        except ValueError:
            raise InputError(
                f"bad --features {part!r} (or [subject] features): use 0:100, 7 or 1,2,5:9"
            ) from None
        if start < 0 or stop < 0:
            raise InputError(
                f"bad --features {part!r}: feature indices start at 0, so none is negative"
            )
        if stop <= start:
            raise InputError(
                f"bad --features {part!r}: the range is empty (stop must be greater than start)"
            )
        ranges.append(range(start, stop))
    return ranges


def parse_features(spec: str | None, width: int | None = None) -> list[int] | None:
    """Feature indices from `0:100` (half-open), `7`, or a comma list of both; None = all.

    With `width` (the source's number of features) the selector is clipped to it before
    it is built, so `0:3000000000` costs what the source has and indices past the end
    select nothing. Without it, a selector naming more than MAX_SELECTED indices is
    refused rather than built, and the caller reports indices past the end.
    """
    ranges = feature_ranges(spec)
    if ranges is None:
        return None
    if width is not None:
        ranges = [range(r.start, min(r.stop, width)) for r in ranges]
    named = sum(max(0, r.stop - r.start) for r in ranges)
    if named > MAX_SELECTED:
        raise InputError(
            f"bad --features {spec.strip()!r}: it names {named:,} features, more than "
            f"{MAX_SELECTED:,}; omit --features (or [subject] features) to select every "
            "feature, or give a smaller range"
        )
    indices: set[int] = set()
    for r in ranges:
        indices.update(r)
    return sorted(indices)


@dataclass
class SubjectConfig:
    """Which model, hook point and feature source the run labels."""

    model: str = "minilm"  # minilm, gemma-3-270m, a folder, a .gguf file or a hub id
    gguf_file: str | None = None  # GGUF file name inside `model`'s folder
    device: str = "cpu"
    hook: str = "layer.3.mlp"  # layer.N.mlp or layer.N.resid
    source: str = "neurons"  # neurons, sae:FOLDER, dictionary:FOLDER
    features: str | None = None  # selector (0:100, 7, 1,2,5:9); None = every feature

    def __post_init__(self) -> None:
        """Catch a bad device or selector when the settings are read, not after model loading."""
        parse_device(self.device)
        feature_ranges(self.features)

    def indices(self, width: int | None = None) -> list[int] | None:
        return parse_features(self.features, width)


@dataclass
class RunConfig:
    """What one nightly `gloss run` may do and spend."""

    limit: int | None = None  # at most this many features per LLM stage
    max_llm_tokens: int | None = None  # no call starts that could pass this many tokens
    max_cost: float | None = None  # likewise for cost (needs prices in [llm.*])
    relabel_human: bool = False  # relabel features whose label a human wrote or accepted
    baseline: bool = True  # store the no-LLM baseline label; current until an LLM label exists
    lock_stale_s: float = 900.0  # a lock without heartbeat this long belongs to a dead run
    log_file: str | None = None

    def __post_init__(self) -> None:
        """A negative limit would slice off features and a zero lock timeout steals live locks."""
        if self.limit is not None and self.limit < 1:
            raise ConfigError(
                f"limit = {self.limit} is invalid: give at least 1 feature per stage, "
                "or omit it for no limit"
            )
        if not self.lock_stale_s > 0:
            raise ConfigError(
                f"lock_stale_s = {self.lock_stale_s} is invalid: give seconds above 0 (default 900)"
            )
        for key in ("max_llm_tokens", "max_cost"):
            value = getattr(self, key)
            if value is not None and not value >= 0:
                raise ConfigError(
                    f"{key} = {value} is invalid: give a budget of 0 or more, "
                    "or omit it for no budget"
                )


@dataclass
class GlossConfig:
    database: str | None = None
    subject: SubjectConfig = field(default_factory=SubjectConfig)
    corpus: CorpusConfig = field(default_factory=CorpusConfig)
    mining: MiningConfig = field(default_factory=MiningConfig)
    learn: LearnConfig = field(default_factory=LearnConfig)
    explainer: ExplainerConfig = field(default_factory=ExplainerConfig)
    simulator: SimulatorConfig = field(default_factory=SimulatorConfig)
    llm: LLMConfig = field(default_factory=LLMConfig)
    local_server: LocalServerConfig = field(default_factory=LocalServerConfig)
    run: RunConfig = field(default_factory=RunConfig)


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
    return resources.files("pipeline").joinpath("gloss.toml").read_text(encoding="utf-8")
