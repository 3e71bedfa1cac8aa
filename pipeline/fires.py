"""`gloss fires`: run the subject model on a text and list, per token, the labeled features that fire most.

This answers "what does the model see in *apple* here?" with the database's labels.
Features are ranked by activation relative to their own maximum over the mined
corpus (1.0 = as strong as they ever fired), so a feature with small raw values
but a sharp meaning is not drowned by one with large raw values.

A dictionary shared by several hook points is read at all of them in one forward
pass, and a token's activation is the largest over the points, as in mining (so it
compares with the mined maximum); `point` says where it was largest.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from gloss.store import GlossError, InputError, ModelError, NotFoundError, SourceInfo, Store


@dataclass(frozen=True)
class FeatureFire:
    feature_id: int
    ref: str
    activation: float
    relative: float  # activation / the feature's max over the mined corpus
    label: str | None
    score: float | None
    point: str | None = None  # a shared dictionary: the hook point where it fired most


@dataclass(frozen=True)
class TokenFires:
    position: int
    token: str
    features: list[FeatureFire]


def fires(store: Store, text: str, *, source: str | None = None, top: int = 5) -> list[TokenFires]:
    """Per token of `text`, the `top` labeled features of `source` that fire most (relative)."""
    try:
        import gloss.pipeline.subjects  # noqa: F401
        from gloss.pipeline.mining import text_activations
    except ImportError:
        raise GlossError(
            "gloss fires is not available in this build: it needs pipeline.subjects "
            "(the subject-model code) to run text through"
        ) from None

    sources = [store.source(source)] if source else store.sources()
    if not sources:
        raise NotFoundError("no feature sources in this database: run gloss mine first")
    subjects = {s.subject_id for s in sources}
    if len(subjects) > 1:
        names = ", ".join(s.name for s in sources)
        raise InputError(f"sources of several subjects here; pick one with --source ({names})")
    if top < 1:
        raise InputError("--top must be at least 1")
    subject = subject_of(store, sources[0].id)
    per_token: list[list[FeatureFire]] | None = None
    tokens: list[str] = []
    for info in sources:
        labeled = store.current_labels(info.id)
        if not labeled:
            continue
        indices = torch.tensor(sorted(labeled))
        source = source_of(info, subject.hook_width(info.hook))
        tokens, acts, points, at = text_activations(subject, source, info.hook, text, indices)
        scale = torch.tensor([labeled[i].max_act or 1.0 for i in indices.tolist()])
        relative = acts / scale.clamp_min(1e-8)
        k = min(top, len(indices))
        values, order = relative.topk(k, dim=-1)
        if per_token is None:
            per_token = [[] for _ in tokens]
        for position in range(len(tokens)):
            for value, column in zip(
                values[position].tolist(), order[position].tolist(), strict=True
            ):
                if value <= 0:
                    continue
                row = labeled[int(indices[column])]
                per_token[position].append(
                    FeatureFire(
                        feature_id=row.feature_id,
                        ref=row.ref,
                        activation=float(acts[position, column]),
                        relative=value,
                        label=row.label,
                        score=row.score,
                        point=points[int(at[position, column])] if at is not None else None,
                    )
                )
    if per_token is None:
        raise NotFoundError("no labeled features in these sources yet: run gloss explain first")
    return [
        TokenFires(i, token, sorted(found, key=lambda f: -f.relative)[:top])
        for i, (token, found) in enumerate(zip(tokens, per_token, strict=True))
    ]


def subject_of(store: Store, source_id: int, device: str = "cpu"):
    """The subject model a source was mined on, loaded again; a changed model is an error."""
    from gloss.pipeline.subjects import BUILTIN, load_subject

    row = store.subject_of(source_id)
    name = row["name"] if row["name"] in BUILTIN else row["path"]
    subject = load_subject(name, device=device)
    if subject.revision != row["revision"]:
        raise ModelError(
            f"the model at {name} is revision {subject.revision}, but the features were mined "
            f"on {row['revision']}: restore that model, or mine this one"
        )
    return subject


def source_of(info: SourceInfo, hook_width: int):
    """A stored source's encoder, loaded again from its files; changed files are an error."""
    try:
        from gloss.pipeline.sources import load_source
    except ImportError:
        raise GlossError("gloss fires needs pipeline.sources, which this build lacks") from None

    spec = "neurons" if info.kind == "neurons" else f"{info.kind}:{info.path}"
    source = load_source(spec, hook_width)
    if source.params_hash != info.params_hash:
        raise ModelError(
            f"the {info.kind} files at {info.path} changed since {info.name} was mined "
            "(weights hash differs): restore them, or mine the new ones as a new source"
        )
    return source
