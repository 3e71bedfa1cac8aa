"""`gloss decompose`: open one word in context into the features of a source, point by point.

For each context the subject runs once over the text, every hook point of the source is
read in that one pass, and the features active on the word's token(s) are listed
strongest first with their labels: that is the research's "apple holds a fruit meaning
and a company meaning" view. With two or more contexts the features they share and the
ones that tell them apart show how the word's sense changes the representation.

Loading the subject and the source is the slow part, so both stay cached in the
process: the web app calls this for every click.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from gloss.store import InputError, ModelError, NotFoundError, SourceInfo, Store

# A feature tells contexts apart when in some context it is at most this share of its
# activation in the context where it is strongest (0 when absent).
MUCH_WEAKER = 0.5
MAX_TOKENS = 256  # per context: a sentence or a paragraph, well inside every subject's positions
PAGE_CHARS = 1000  # per text on the web page, whose word buttons resubmit it
LEARNED_MANIFEST = "gloss_dictionary.json"
WORD_RE = re.compile(r"\w+")


@dataclass(frozen=True)
class Hit:
    """One feature active on the word at one point of one context."""

    index: int
    ref: str
    feature_id: int | None  # None: the store holds no row for it (not mined)
    activation: float
    relative: float | None  # activation / the feature's max over the mined corpus
    label: str | None
    score: float | None


@dataclass(frozen=True)
class PointHits:
    hook: str
    active: int  # how many features are active on the word here at all
    features: list[Hit]


@dataclass(frozen=True)
class ContextResult:
    number: int  # 1-based, as the user counts --context flags
    text: str
    start: int  # the word's characters in the text
    end: int
    occurrences: int  # how often the word occurs in the text (the first, or `at`, is read)
    tokens: list[str]
    positions: list[int]
    points: list[PointHits]


@dataclass(frozen=True)
class Compared:
    """A feature across the contexts: its activation in each (0 where absent)."""

    index: int
    ref: str
    feature_id: int | None
    activations: list[float]
    relative: list[float | None]
    strongest: int  # context number where it is strongest
    label: str | None
    score: float | None


@dataclass(frozen=True)
class PointContrast:
    hook: str
    shared: list[Compared]  # active in every context at comparable strength
    distinct: list[Compared]  # absent or much weaker in some context than in another


@dataclass(frozen=True)
class Decomposition:
    word: str
    source: str
    source_id: int
    subject: str
    hooks: list[str]
    contexts: list[ContextResult]
    contrasts: list[PointContrast]  # empty with one context


# ---------------------------------------------------------------- the cache


@dataclass
class _Loaded:
    subject: object
    lock: threading.Lock  # forward hooks are registered on the shared model: one pass at a time


_CACHE_LOCK = threading.Lock()
_SUBJECTS: dict[str, _Loaded] = {}
_SOURCES: dict[tuple[str, str], object] = {}


def clear_cache(*, subjects: bool = True) -> None:
    """Forget loaded sources, and subjects unless told not to (after files change; tests)."""
    with _CACHE_LOCK:
        _SOURCES.clear()
        if subjects:
            _SUBJECTS.clear()


def read_source(spec: str, hook_width: int):
    """The source's files as a `Source` (one place to read them, so tests can stand in)."""
    from gloss.pipeline.sources import load_source

    return load_source(spec, hook_width)


def _subject_for(store: Store, info: SourceInfo) -> _Loaded:
    from gloss.pipeline.subjects import BUILTIN, load_subject

    row = store.subject_of(info.id)
    name = row["name"] if row["name"] in BUILTIN else row["path"]
    with _CACHE_LOCK:
        loaded = _SUBJECTS.get(name)
        if loaded is None:
            loaded = _Loaded(load_subject(name), threading.Lock())
            _SUBJECTS[name] = loaded
    if loaded.subject.revision != row["revision"]:
        raise ModelError(
            f"the model at {name} is revision {loaded.subject.revision}, but {info.name} was "
            f"mined on {row['revision']}: restore that model, or mine this one"
        )
    return loaded


def _source_for(info: SourceInfo, subject_key: str, hook_width: int):
    spec = "neurons" if info.kind == "neurons" else f"{info.kind}:{info.path}"
    with _CACHE_LOCK:
        source = _SOURCES.get((subject_key, spec))
        if source is None:
            source = read_source(spec, hook_width)
            if source.params_hash != info.params_hash:
                raise ModelError(
                    f"the {info.kind} files at {info.path} changed since {info.name} was "
                    "registered (weights hash differs): restore them, or mine the new ones "
                    "as a new source"
                )
            _SOURCES[(subject_key, spec)] = source
    return source


def loaded(store: Store, info: SourceInfo) -> tuple[Any, Any, threading.Lock]:
    """(subject, feature source, lock) for `info` from the cache, for the web app's other
    model pages (interventions). Hold the lock while running the subject."""
    entry = _subject_for(store, info)
    subject = entry.subject
    source = _source_for(info, subject.path, subject.hook_width(info.hook))
    return subject, source, entry.lock


# ---------------------------------------------------------------- choosing a source


def pick_source(store: Store, source: str | None) -> SourceInfo:
    """The named source; else the newest dictionary gloss learned; else the only source."""
    if source:
        return store.source(source)
    sources = store.sources()
    if not sources:
        raise NotFoundError(
            "no feature sources in this database: run gloss learn or gloss mine first"
        )
    if len(sources) == 1:
        return sources[0]
    learned = [
        s
        for s in sources
        if s.kind != "neurons" and s.path and (Path(s.path) / LEARNED_MANIFEST).is_file()
    ]
    if learned:
        return max(learned, key=lambda s: s.id)
    names = ", ".join(s.name for s in sources)
    raise InputError(
        f"this database holds several feature sources; pick one with --source: {names}"
    )


# ---------------------------------------------------------------- finding the word


def occurrences(text: str, word: str) -> list[tuple[int, int]]:
    """Character spans of `word` in `text`: case-insensitive, whole words only."""
    pattern = re.compile(rf"(?<!\w){re.escape(word)}(?!\w)", re.IGNORECASE)
    return [m.span() for m in pattern.finditer(text)]


def split_words(text: str) -> list[tuple[str, str, int]]:
    """(text before, word, its start) for each word of `text`, then ("rest", "", -1):
    what the web page turns into one link per word."""
    parts: list[tuple[str, str, int]] = []
    last = 0
    for match in WORD_RE.finditer(text):
        parts.append((text[last : match.start()], match.group(), match.start()))
        last = match.end()
    parts.append((text[last:], "", -1))
    return parts


def word_at(text: str, at: int) -> str:
    """The word that starts at character `at` (what a click on the web page names)."""
    match = WORD_RE.match(text, at) if 0 <= at < len(text) else None
    if match is None or (at > 0 and WORD_RE.match(text, at - 1)):
        raise InputError(f"no word starts at character {at} of the text: click a word of it")
    return match.group()


def _find(word: str, text: str, number: int, at: int | None) -> tuple[int, int, int]:
    """(start, end, how many occurrences) of the word in context `number`."""
    if not text.strip():
        raise InputError(f"context {number} is empty: give a text that contains {word!r}")
    spans = occurrences(text, word)
    if not spans:
        shown = text if len(text) <= 60 else text[:57] + "..."
        raise InputError(
            f"{word!r} does not occur in context {number}: {shown!r}; give a context that "
            "contains the word (whole word, any case)"
        )
    if at is None:
        return (*spans[0], len(spans))
    for start, end in spans:
        if start == at:
            return start, end, len(spans)
    raise InputError(f"{word!r} does not start at character {at} of context {number}")


def _tokens_of(
    subject, text: str, number: int, start: int, end: int
) -> tuple[list[int], list[int]]:
    """The text's token ids and the positions of the tokens that overlap [start, end)."""
    try:
        encoded = subject.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    except (NotImplementedError, ValueError) as error:
        raise ModelError(
            f"the tokenizer of {subject.name} cannot map tokens to characters ({error}); "
            "decompose needs a fast (Rust) tokenizer"
        ) from error
    ids = list(encoded["input_ids"])
    if len(ids) > MAX_TOKENS:
        raise InputError(
            f"context {number} is {len(ids)} tokens long; decompose reads at most "
            f"{MAX_TOKENS}: shorten it to the sentence around the word"
        )
    positions = [
        i for i, (a, b) in enumerate(encoded["offset_mapping"]) if b > a and a < end and b > start
    ]
    if not positions:
        raise InputError(
            f"{text[start:end]!r} in context {number} maps to no token of {subject.name}'s "
            "tokenizer; pick another word"
        )
    return ids, positions


# ---------------------------------------------------------------- decomposing


def decompose(
    store: Store,
    word: str,
    contexts: Sequence[str],
    *,
    source: str | None = None,
    hooks: str | None = None,
    top: int = 10,
    at: Sequence[int | None] | None = None,
) -> Decomposition:
    """The features of `source` active on `word` in each context, per hook point.

    `hooks` narrows the source's points (a spec such as `layer.2-4.resid`); `at` gives,
    per context, the character where the wanted occurrence starts (None: the first).
    """
    word = word.strip()
    if not word:
        raise InputError("give a word to decompose, e.g. gloss decompose apple --context '...'")
    if not contexts:
        raise InputError(f"give at least one context that contains {word!r}: --context TEXT")
    if top < 1:
        raise InputError(f"top must be at least 1, not {top} (--top)")
    at = list(at or [])
    if len(at) > len(contexts):
        raise InputError(f"{len(at)} word positions given for {len(contexts)} contexts")
    at += [None] * (len(contexts) - len(at))
    spans = [
        _find(word, text, n, a) for n, (text, a) in enumerate(zip(contexts, at, strict=True), 1)
    ]

    info = pick_source(store, source)
    loaded = _subject_for(store, info)
    subject = loaded.subject
    points = subject.parse_hooks(info.hook)
    if hooks:
        wanted = subject.parse_hooks(hooks)
        missing = [h for h in wanted if h not in points]
        if missing:
            raise InputError(
                f"source {info.name} reads {info.hook} ({', '.join(points)}), not "
                f"{', '.join(missing)}: pick --hook among those"
            )
        points = wanted
    feature_source = _source_for(info, subject.path, subject.hook_width(info.hook))
    shared = bool(feature_source.encoders)
    if shared:
        lacking = [h for h in points if h not in feature_source.encoders]
        if lacking:
            raise ModelError(
                f"the dictionary at {info.path} has no encoder for {', '.join(lacking)} although "
                f"{info.name} names {info.hook}: the files do not match the store"
            )

    # vectors[context][point] = the feature activations on the word, [width]
    vectors: list[dict[str, torch.Tensor]] = []
    words: list[tuple[list[str], list[int]]] = []
    for number, (text, (start, end, _)) in enumerate(zip(contexts, spans, strict=True), 1):
        ids, positions = _tokens_of(subject, text, number, start, end)
        with loaded.lock:
            acts = subject.activations(torch.tensor([ids]), None, points)
        per_point = {}
        for hook in points:
            x = acts[hook][0, positions].cpu()
            f = feature_source.encode(x, hook=hook if shared else None)
            per_point[hook] = f.max(dim=0).values
        vectors.append(per_point)
        words.append(([subject.token_strings([ids[p]])[0] for p in positions], positions))

    picks = _pick(vectors, points, top)
    shown = {
        i for p in picks.values() for ids in [*p.per_context, p.shared, p.distinct] for i in ids
    }
    meta = _feature_meta(store, info, shown)

    def hit(index: int, value: float) -> Hit:
        feature_id, max_act, label, score = meta(index)
        return Hit(
            index, f"{info.name}:{index}", feature_id, value, _rel(value, max_act), label, score
        )

    results = []
    for number, (text, (start, end, count), (tokens, positions), per_point) in enumerate(
        zip(contexts, spans, words, vectors, strict=True), 1
    ):
        points_out = []
        for hook in points:
            vec = per_point[hook]
            top_ids = picks[hook].per_context[number - 1]
            points_out.append(
                PointHits(
                    hook,
                    int((vec > 0).sum()),
                    [hit(i, float(vec[i])) for i in top_ids],
                )
            )
        results.append(
            ContextResult(number, text, start, end, count, tokens, positions, points_out)
        )

    contrasts = []
    if len(contexts) > 1:
        for hook in points:
            matrix = torch.stack([v[hook] for v in vectors])
            contrasts.append(
                PointContrast(
                    hook,
                    [_compared(info, matrix, i, meta) for i in picks[hook].shared],
                    [_compared(info, matrix, i, meta) for i in picks[hook].distinct],
                )
            )
    return Decomposition(
        word=word,
        source=info.name,
        source_id=info.id,
        subject=subject.name,
        hooks=list(points),
        contexts=results,
        contrasts=contrasts,
    )


@dataclass(frozen=True)
class _Picks:
    per_context: list[list[int]]
    shared: list[int]
    distinct: list[int]


def _pick(
    vectors: list[dict[str, torch.Tensor]], points: Sequence[str], top: int
) -> dict[str, _Picks]:
    """Per point: the top feature indices of each context and, with several contexts,
    the shared ones and the distinguishing ones, each strongest first."""
    picks: dict[str, _Picks] = {}
    for hook in points:
        per_context = [_strongest(v[hook], v[hook] > 0, top) for v in vectors]
        shared: list[int] = []
        distinct: list[int] = []
        if len(vectors) > 1:
            matrix = torch.stack([v[hook] for v in vectors])
            low = matrix.min(dim=0).values.clamp_min(0)
            high = matrix.max(dim=0).values
            apart = (high > 0) & (low <= MUCH_WEAKER * high)
            shared = _strongest(low, (low > 0) & ~apart, top)
            distinct = _strongest(high - low, apart, top)
        picks[hook] = _Picks(per_context, shared, distinct)
    return picks


def _strongest(values: torch.Tensor, keep: torch.Tensor, top: int) -> list[int]:
    """Indices where `keep`, by value descending (ties: lower index first), at most `top`."""
    order = torch.sort(values, descending=True, stable=True).indices
    return order[keep[order]][:top].tolist()


def _feature_meta(store: Store, info: SourceInfo, indices: set[int]):
    """A lookup index -> (feature id, max_act, label, score) for the features shown."""
    rows = {f.index: f for f in store.features(info.id, indices=sorted(indices))} if indices else {}
    labels = store.current_labels(info.id) if rows else {}

    def meta(index: int) -> tuple[int | None, float | None, str | None, float | None]:
        row, label = rows.get(index), labels.get(index)
        return (
            row.id if row else None,
            row.max_act if row else None,
            label.label if label else None,
            label.score if label else None,
        )

    return meta


def _rel(value: float, max_act: float | None) -> float | None:
    return value / max_act if max_act and max_act > 0 else None


def _compared(info: SourceInfo, matrix: torch.Tensor, index: int, meta) -> Compared:
    feature_id, max_act, label, score = meta(index)
    values = [float(v) for v in matrix[:, index]]
    return Compared(
        index=index,
        ref=f"{info.name}:{index}",
        feature_id=feature_id,
        activations=values,
        relative=[_rel(v, max_act) for v in values],
        strongest=max(range(len(values)), key=lambda c: values[c]) + 1,
        label=label,
        score=score,
    )


# ---------------------------------------------------------------- terminal text


def text_lines(result: Decomposition) -> list[str]:
    """The terminal layout: per context and point `activation  rel%  ref  label (score)`,
    then what the contexts share and what tells them apart. Data goes through `printable`."""
    from gloss.pipeline.prompts import printable

    lines = [
        f"{printable(result.word)!r} · source {printable(result.source)} · "
        f"{len(result.hooks)} point{'s' if len(result.hooks) != 1 else ''}"
    ]
    for ctx in result.contexts:
        marked = (
            ctx.text[: ctx.start] + "[" + ctx.text[ctx.start : ctx.end] + "]" + ctx.text[ctx.end :]
        )
        more = f" (first of {ctx.occurrences})" if ctx.occurrences > 1 else ""
        lines += ["", f"context {ctx.number}: {printable(marked)}{more}"]
        lines.append(
            "  tokens: "
            + " ".join(printable(repr(t)) for t in ctx.tokens)
            + f" at position{'s' if len(ctx.positions) > 1 else ''} "
            + ", ".join(map(str, ctx.positions))
        )
        for point in ctx.points:
            lines.append(f"  {point.hook}  ({point.active} active)")
            if not point.features:
                lines.append("      no feature is active on the word here")
            for h in point.features:
                lines.append(
                    f"    {h.activation:9.3f}  {_pct(h.relative):>5}  {printable(h.ref)}  "
                    + _label(h.label, h.score, h.feature_id)
                )
    if result.contrasts:
        n = len(result.contexts)
        heads = " | ".join(f"ctx {i}" for i in range(1, n + 1))
        lines += ["", f"shared by all {n} contexts  (activation per context: {heads})"]
        lines += _contrast_lines(result, "shared")
        lines += [
            "",
            f"tell them apart  (absent or at most {MUCH_WEAKER:.0%} as strong in some context)",
        ]
        lines += _contrast_lines(result, "distinct")
    return lines


def _contrast_lines(result: Decomposition, which: str) -> list[str]:
    from gloss.pipeline.prompts import printable

    lines = []
    for contrast in result.contrasts:
        rows = getattr(contrast, which)
        lines.append(f"  {contrast.hook}" + ("" if rows else "  none"))
        for c in rows:
            values = " | ".join(f"{v:7.3f}" for v in c.activations)
            where = f"  ctx {c.strongest}" if which == "distinct" else ""
            lines.append(
                f"    {values}{where}  {printable(c.ref)}  "
                + _label(c.label, c.score, c.feature_id)
            )
    return lines


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{value:.0%}"


def _label(label: str | None, score: float | None, feature_id: int | None) -> str:
    from gloss.pipeline.prompts import printable

    if feature_id is None:
        return "(not mined)"
    if label is None:
        return "(no label)"
    return printable(label) + ("" if score is None else f" ({score:.2f})")
