"""The store's value types: what goes in and what comes out, as plain dataclasses.

Store methods take and return these (and ids), never live ORM objects, so a caller
cannot hold a session by accident. `*In` types are written by mining; the `*Info`,
`*Out` and `*Row` types are read back. A feature's examples are kept as one `ExampleSet`
(columns of numpy arrays, packed into one row per feature); `ExampleIn` is the readable
form of one example, with its per-token activations as float16 bytes (`encode_acts`).
"""

from __future__ import annotations

import re
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np


def encode_acts(values: Sequence[float]) -> bytes:
    """Per-token activations as little-endian float16 bytes."""
    return struct.pack(f"<{len(values)}e", *values)


def decode_acts(data: bytes) -> list[float]:
    return list(struct.unpack(f"<{len(data) // 2}e", data))


@dataclass(frozen=True)
class PromptRef:
    name: str
    version: str
    hash: str


@dataclass(frozen=True)
class WindowIn:
    doc_id: str
    offset: int
    token_ids: list[int]
    tokens: list[str]


@dataclass(frozen=True)
class ExampleIn:
    window_id: int
    split: str  # "explain" | "validation" | "holdout"
    kind: str  # "top" | "quantile:Q" | "random"
    rank: int
    max_act: float
    acts: bytes  # encode_acts(...) or numpy .astype("<f2").tobytes()


SPLITS = ("explain", "validation", "holdout")
KINDS = ("top", "random", "silent")  # then quantile:1, quantile:2, ... as 3, 4, ...


def kind_code(kind: str) -> int:
    if kind.startswith("quantile:"):
        return len(KINDS) - 1 + int(kind.split(":")[1])
    return KINDS.index(kind)


def kind_name(code: int) -> str:
    return KINDS[code] if code < len(KINDS) else f"quantile:{code - len(KINDS) + 1}"


@dataclass
class ExampleSet:
    """A feature's examples as columns, one entry per example; `acts` holds every
    example's per-token activations end to end (`lengths` apart), as float16.

    The store keeps a feature's set as one packed row: mining a 16k-latent SAE writes
    16k rows, not a million, and a mostly silent SAE latent's activations pack sparsely.
    """

    windows: np.ndarray  # int64: store window ids
    splits: np.ndarray  # uint8: index into SPLITS
    kinds: np.ndarray  # uint16: kind_code
    ranks: np.ndarray  # uint32: order within (split, kind)
    max_acts: np.ndarray  # float32
    lengths: np.ndarray  # uint32: tokens of each window
    acts: np.ndarray  # float16 [lengths.sum()]

    VERSION = 1

    def __len__(self) -> int:
        return len(self.windows)

    @classmethod
    def of(cls, examples: Sequence[ExampleIn]) -> ExampleSet:
        import numpy as np

        acts = [np.frombuffer(e.acts, dtype="<f2") for e in examples]
        return cls(
            windows=np.array([e.window_id for e in examples], dtype=np.int64),
            splits=np.array([SPLITS.index(e.split) for e in examples], dtype=np.uint8),
            kinds=np.array([kind_code(e.kind) for e in examples], dtype=np.uint16),
            ranks=np.array([e.rank for e in examples], dtype=np.uint32),
            max_acts=np.array([e.max_act for e in examples], dtype=np.float32),
            lengths=np.array([len(a) for a in acts], dtype=np.uint32),
            acts=np.concatenate(acts) if acts else np.zeros(0, dtype=np.float16),
        )

    def rows(self) -> list[tuple[int, str, str, int, float, list[float]]]:
        """(window id, split, kind, rank, max_act, acts) of each example, in stored order."""
        ends = self.lengths.astype("int64").cumsum()
        acts = self.acts.astype("float32")
        return [
            (int(w), SPLITS[s], kind_name(int(k)), int(r), float(m), acts[end - n : end].tolist())
            for w, s, k, r, m, n, end in zip(
                self.windows, self.splits, self.kinds, self.ranks, self.max_acts, self.lengths,
                ends, strict=True,
            )
        ]  # fmt: skip

    def pack(self) -> bytes:
        """Version, count, a record per example, then the activations: dense float16, or
        (position, value) pairs of the nonzero ones where that is smaller."""
        return ExampleSet.pack_all([self])[0]

    @staticmethod
    def pack_all(sets: Sequence[ExampleSet]) -> list[bytes]:
        """`pack()` of each set, with the array work done once for all of them (mining
        packs a group of 256 features at a time)."""
        import numpy as np

        if not sets:
            return []
        counts = np.array([len(e) for e in sets])
        meta = np.empty(int(counts.sum()), dtype=_META)
        for name, column in (
            ("window", "windows"),
            ("split", "splits"),
            ("kind", "kinds"),
            ("rank", "ranks"),
            ("max", "max_acts"),
            ("length", "lengths"),
        ):
            meta[name] = np.concatenate([getattr(e, column) for e in sets])
        acts = np.concatenate([e.acts for e in sets]).astype("<f2", copy=False)
        sizes = np.array([len(e.acts) for e in sets])
        starts = np.concatenate([[0], sizes.cumsum()])
        nonzero = np.flatnonzero(acts.view("<u2") << 1)  # not ±0 (bits, not float16 compares)
        cuts = np.searchsorted(nonzero, starts)  # each set's share of the nonzero values
        nnz = np.diff(cuts)
        positions = (nonzero - np.repeat(starts[:-1], nnz)).astype("<u4").tobytes()
        values, dense, records = acts[nonzero].tobytes(), acts.tobytes(), meta.tobytes()
        first = (np.concatenate([[0], counts.cumsum()]) * meta.itemsize).tolist()
        cut, start = cuts.tolist(), starts.tolist()
        packed = []
        numbers = zip(counts.tolist(), sizes.tolist(), nnz.tolist(), strict=True)
        for i, (n, size, k) in enumerate(numbers):
            record = records[first[i] : first[i + 1]]
            if 3 * k < size:  # 6 bytes a nonzero value against 2 a token
                body = positions[4 * cut[i] : 4 * cut[i + 1]] + values[2 * cut[i] : 2 * cut[i + 1]]
                packed.append(_HEAD.pack(ExampleSet.VERSION, n, 1, k) + record + body)
            else:
                body = dense[2 * start[i] : 2 * start[i + 1]]
                packed.append(_HEAD.pack(ExampleSet.VERSION, n, 0, size) + record + body)
        return packed

    @classmethod
    def unpack(cls, data: bytes) -> ExampleSet:
        import numpy as np

        version, n, sparse, count = _HEAD.unpack_from(data)
        if version != cls.VERSION:
            raise ValueError(f"examples packed in format {version}; this gloss reads {cls.VERSION}")
        meta = np.frombuffer(data, dtype=_META, count=n, offset=_HEAD.size)
        at = _HEAD.size + meta.nbytes
        total = int(meta["length"].astype("int64").sum())
        if sparse:
            positions = np.frombuffer(data, dtype="<u4", count=count, offset=at)
            acts = np.zeros(total, dtype="<f2")
            acts[positions] = np.frombuffer(data, dtype="<f2", count=count, offset=at + 4 * count)
        else:
            acts = np.frombuffer(data, dtype="<f2", count=total, offset=at)
        return cls(
            meta["window"].astype(np.int64), meta["split"].copy(), meta["kind"].astype(np.uint16),
            meta["rank"].astype(np.uint32), meta["max"].astype(np.float32),
            meta["length"].astype(np.uint32), acts,
        )  # fmt: skip


_HEAD = struct.Struct("<BIBI")  # version, examples, sparse, stored activations
_META: Any = [("window", "<i8"), ("split", "u1"), ("kind", "<u2"), ("rank", "<u4"),
              ("max", "<f4"), ("length", "<u4")]  # fmt: skip


@dataclass
class MinedFeature:
    index: int
    max_act: float
    mean_act: float
    density: float
    n_tokens: int
    histogram: dict[str, Any] | None
    # ExampleIn for readable writes (tests, imports); mining hands over an ExampleSet.
    examples: Sequence[ExampleIn] | ExampleSet = field(default_factory=list)
    # A dictionary shared by several hook points: {point: mean of top activations there}.
    layers: dict[str, float] | None = None


@dataclass(frozen=True)
class SourceInfo:
    id: int
    name: str
    subject_id: int
    subject_name: str
    subject_path: str
    hook: str
    kind: str
    width: int
    params_hash: str
    path: str | None
    config: dict[str, Any]


@dataclass(frozen=True)
class FeatureInfo:
    id: int
    source_id: int
    source: str
    index: int
    status: str
    max_act: float | None
    mean_act: float | None
    density: float | None
    n_tokens: int | None
    histogram: dict[str, Any] | None
    failures: int
    last_error: str | None
    # {point: mean of top activations there}, shallowest point first; None for one point.
    layers: dict[str, float] | None = None

    @property
    def ref(self) -> str:
        return f"{self.source}:{self.index}"


@dataclass(frozen=True)
class ExampleOut:
    window_id: int
    split: str
    kind: str
    rank: int
    max_act: float
    doc_id: str
    offset: int
    tokens: list[str]
    token_ids: list[int]
    acts: list[float]


@dataclass(frozen=True)
class ScoreInfo:
    id: int
    method: str
    value: float | None
    details: dict[str, Any]
    simulator_model: str | None
    prompt_name: str | None
    prompt_version: str | None
    run_id: int | None
    created_at: Any
    calls: int = 0  # LLM calls behind the score (0 without an LLM)
    tokens_in: int = 0
    tokens_out: int = 0


@dataclass(frozen=True)
class ExplanationInfo:
    id: int
    feature_id: int
    text: str
    author_kind: str
    author_name: str
    model: str | None
    prompt_name: str | None
    prompt_version: str | None
    prompt_hash: str | None
    parent_id: int | None
    status: str
    run_id: int | None
    score: float | None
    version: int
    details: dict[str, Any]
    created_at: Any
    scores: list[ScoreInfo] = field(default_factory=list)


@dataclass(frozen=True)
class FeatureRow:
    """One line of a feature list or search result: the feature with its current label."""

    feature_id: int
    source: str
    index: int
    status: str
    max_act: float | None
    density: float | None
    explanation_id: int | None
    label: str | None
    label_status: str | None
    author_kind: str | None
    score: float | None
    # Cosine of the label with the query of a search by meaning (`search(like=...)`).
    similarity: float | None = None

    @property
    def ref(self) -> str:
        return f"{self.source}:{self.index}"

    @property
    def cursor(self) -> str:
        """Pass as `Store.search(after=...)` to get the page after this row."""
        return f"{'' if self.score is None else repr(self.score)}:{self.feature_id}"


@dataclass(frozen=True)
class ReviewInfo:
    id: int
    feature_id: int
    explanation_id: int | None
    reviewer: str
    action: str
    before: dict[str, Any] | None
    after: dict[str, Any] | None
    note: str | None
    created_at: Any


@dataclass(frozen=True)
class FeatureCard:
    feature: FeatureInfo
    source: SourceInfo
    current: ExplanationInfo | None
    history: list[ExplanationInfo]
    examples: list[ExampleOut]
    reviews: list[ReviewInfo]
    feature_scores: list[ScoreInfo] = field(default_factory=list)  # of the feature itself


@dataclass(frozen=True)
class LayerPeaks:
    """The features of a shared dictionary whose layer map peaks at one hook point."""

    point: str
    count: int  # all of them; `features` holds the strongest few
    features: list[tuple[FeatureRow, dict[str, float]]]  # with each one's layer map


@dataclass(frozen=True)
class RunInfo:
    id: int
    kind: str
    status: str
    config: dict[str, Any]
    counts: dict[str, Any]
    failures: list[Any]
    tokens_in: int
    tokens_out: int
    cost: float
    code_version: str
    message: str | None
    started_at: Any
    finished_at: Any
    parent_id: int | None = None
    holder: str | None = None
    heartbeat_at: Any = None
    device: str | None = None
    max_tokens: int | None = None  # a group's budget
    max_cost: float | None = None


@dataclass(frozen=True)
class LockInfo:
    name: str
    holder: str
    run_id: int | None
    acquired_at: Any
    heartbeat_at: Any


# The keys of every dict `Store.export` yields, in order.
EXPORT_FIELDS = (
    "feature_id",
    "source",
    "index",
    "subject",
    "subject_revision",
    "hook",
    "source_kind",
    "feature_status",
    "max_act",
    "mean_act",
    "density",
    "n_tokens",
    "explanation_id",
    "label",
    "label_status",
    "author_kind",
    "author_name",
    "model",
    "prompt_name",
    "prompt_version",
    "prompt_hash",
    "parent_id",
    "run_id",
    "labeled_at",
    "score",  # the label's best score of the primary method (simulation unless changed)
    "scores",  # every method's score of the label: {"simulation": 0.61, "detection": 0.8}
    "feature_scores",  # measures of the feature itself: {"intruder": 0.75, "ablation": 0.4}
    "effects",  # what the effect measures found: {"ablation": {...}, "output": {...}}
    "reviewed",
)

# Feature scores that `gloss effects` writes: what ablating or steering the feature does.
# Their details (loss on random windows, promoted and suppressed tokens) are exported too.
EFFECT_METHODS = ("ablation", "output")


def points_in_order(layers: dict[str, float] | None) -> dict[str, float] | None:
    """Shallowest point first: PostgreSQL's JSONB keeps keys in its own order, not ours."""
    if layers is None:
        return None

    def key(point: str) -> list[tuple[int, int | str]]:
        return [(0, int(p)) if p.isdigit() else (1, p) for p in re.split(r"[.\-]", point)]

    return {point: layers[point] for point in sorted(layers, key=key)}


@dataclass(frozen=True)
class ImportedScore:
    """A score another tool gave an imported label, under the gloss method it equals."""

    method: str
    value: float | None
    details: dict[str, Any]
    model: str | None = None


@dataclass(frozen=True)
class ImportedLabel:
    """A label another tool wrote (delphi, Neuronpedia), for `Labels.import_labels`."""

    feature_id: int
    text: str
    author_name: str  # the tool
    model: str | None
    details: dict[str, Any]  # where it came from: file, tool, its original fields
    scores: tuple[ImportedScore, ...] = ()
