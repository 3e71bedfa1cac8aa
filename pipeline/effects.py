"""Effects: what the model loses without a feature, and which tokens the feature pushes.

For each mined feature of a causal subject, on windows mining already stored:

- `ablation`: the rise in next-token loss (nats per token) when the feature is ablated
  (zeroed, or set to its mean) on its top explain windows, at and after the first token
  where it fires; beside it, in details, the same on its random windows, where it mostly
  does not fire, and the clean loss. "What the model loses without it."
- `output`: TokenChange, the tokens whose log-probability rises and falls most, averaged
  over the positions of its top explain windows, when its activation is raised by
  `scale` x its peak; VocabProj, the tokens its decoder direction raises and lowers when
  read through the final norm and the unembedding. Value: the mean log-probability rise
  of the most promoted token.

Both are feature scores (`feature_scores`, model = the subject's name), written once per
feature: a rerun measures only the features that lack them. The forward passes are the
only real cost: clean passes of a window are shared by every feature that shows it, and a
random window where the feature never fires needs none (zeroing it there changes nothing).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from tqdm import tqdm

from gloss.pipeline.interventions import Edit, directions, hooks_of, logprobs, vocab_projection
from gloss.pipeline.settings import EffectsConfig
from gloss.pipeline.sources import Source
from gloss.pipeline.subjects import Subject
from gloss.store import ConflictError, InputError, SourceInfo, Store
from gloss.store.types import EFFECT_METHODS, ExampleOut

log = logging.getLogger(__name__)
FEATURES_PER_CALL = 4  # measured together: their windows' forward passes fill batches


@dataclass
class Target:
    """One feature to measure: its index, peak and mean, and the windows to use."""

    feature_id: int
    index: int
    max_act: float
    mean_act: float
    top: list[ExampleOut]
    random: list[ExampleOut]


@dataclass
class Measured:
    feature_id: int
    ablation: float | None
    ablation_details: dict[str, Any]
    output: float | None
    output_details: dict[str, Any]


@dataclass
class _Row:
    """One window run once: clean, or with one feature's edit."""

    window: ExampleOut
    edit: Edit | None
    nll: torch.Tensor | None = None  # [len - 1] loss of each next token
    mean_lp: torch.Tensor | None = None  # [vocab] mean log-probability over positions
    want_mean: bool = False
    users: list[int] = field(default_factory=list)


def measure(
    subject: Subject,
    source: Source,
    hook_spec: str,
    targets: Sequence[Target],
    config: EffectsConfig,
) -> list[Measured]:
    """Ablation and output effects of `targets`, in as few forward passes as they need."""
    hooks = hooks_of(subject, source, hook_spec)
    rows: list[_Row] = []
    clean: dict[int, _Row] = {}

    def row(window: ExampleOut, edit: Edit | None, want_mean: bool = False) -> _Row:
        if edit is None and window.window_id in clean:
            found = clean[window.window_id]
            found.want_mean |= want_mean
            return found
        made = _Row(window, edit, want_mean=want_mean)
        rows.append(made)
        if edit is None:
            clean[window.window_id] = made
        return made

    plans = []
    for t in targets:
        off = Edit.of(t.index, config.ablation, mean=t.mean_act)
        up = Edit.of(t.index, "steer", amount=config.scale * t.max_act)
        top = [(w, row(w, None, True), row(w, off), row(w, up, True)) for w in t.top]
        rand = [
            (w, row(w, None), row(w, off)) if _changes(w, off) else (w, None, None)
            for w in t.random
        ]
        plans.append((t, top, rand))
    _run(subject, source, hooks, rows, config.batch)
    return [_effects(subject, source, hook_spec, config, *plan) for plan in plans]


def _run(subject: Subject, source: Source, hooks: list[str], rows: list[_Row], batch: int) -> None:
    """Forward every row in batches of windows of one length; keep only the reductions."""
    order = sorted(rows, key=lambda r: len(r.window.token_ids))
    for start in range(0, len(order), batch):
        chunk = order[start : start + batch]
        width = max(len(r.window.token_ids) for r in chunk)
        ids = torch.full((len(chunk), width), subject.pad_id, dtype=torch.long)
        valid = torch.zeros((len(chunk), width), dtype=torch.bool)
        for i, r in enumerate(chunk):
            ids[i, : len(r.window.token_ids)] = torch.tensor(r.window.token_ids)
            valid[i, : len(r.window.token_ids)] = True
        lp = logprobs(subject, ids, valid, source, hooks, [r.edit for r in chunk])
        targets = ids[:, 1:].to(lp.device)
        nll = -lp[:, :-1].gather(-1, targets[..., None])[..., 0]
        for i, r in enumerate(chunk):
            n = len(r.window.token_ids)
            r.nll = nll[i, : n - 1].float().cpu()
            if r.want_mean:
                r.mean_lp = lp[i, :n].mean(dim=0).float().cpu()


def _effects(subject, source, hook_spec, config, target, top, rand) -> Measured:
    t: Target = target
    settings = {"windows": len(top), "random_windows": len(rand), "ablation": config.ablation}
    if not top or t.max_act <= 0:
        reason = "the feature never fired in the mined corpus: nothing to ablate or steer"
        ablation, ab_details = None, {**settings, "reason": reason}
        output, out_details = None, {"scale": config.scale, "reason": reason}
    else:
        top_delta, top_n, clean_sum = 0.0, 0, 0.0
        for window, clean, off, _ in top:
            first = next((i for i, a in enumerate(window.acts) if a > 0), None)
            if first is None or first >= len(window.token_ids) - 1:
                continue
            top_delta += float((off.nll[first:] - clean.nll[first:]).sum())
            clean_sum += float(clean.nll[first:].sum())
            top_n += len(clean.nll[first:])
        rand_delta = sum(float((off.nll - clean.nll).sum()) for _, clean, off in rand if off)
        rand_n = sum(len(w.token_ids) - 1 for w, _, _ in rand)
        ablation = top_delta / top_n if top_n else None
        ab_details = {
            **settings,
            "top": ablation,
            "random": rand_delta / rand_n if rand_n else None,
            "clean_loss": clean_sum / top_n if top_n else None,
            "tokens": top_n,
            "random_tokens": rand_n,
        }
        if ablation is None:
            ab_details["reason"] = "no top window has a token after the feature fires"
        shift = torch.stack([up.mean_lp - clean.mean_lp for _, clean, _, up in top]).mean(0)
        promoted, suppressed = (_pairs(subject, shift, config.top, largest) for largest in (1, 0))
        output = promoted[0][1]
        out_details = {
            "scale": config.scale,
            "amount": config.scale * t.max_act,
            "windows": len(top),
            "promoted": promoted,
            "suppressed": suppressed,
        }
    vocab = vocab_projection(subject, source, hook_spec, t.index, config.top)
    out_details.update(vocab_up=vocab["up"], vocab_down=vocab["down"])
    return Measured(t.feature_id, ablation, ab_details, output, out_details)


def _changes(window: ExampleOut, edit: Edit) -> bool:
    """Whether an ablation changes anything on a window: zeroing a feature where it never
    fires leaves every logit bit for bit, so such a window costs no forward pass."""
    return edit.add != 0.0 or max(window.acts, default=0.0) > 0.0


def _pairs(subject: Subject, values: torch.Tensor, top: int, largest: int) -> list:
    picked, ids = values.topk(min(top, len(values)), largest=bool(largest))
    names = subject.token_strings(ids.tolist())
    return [[name, round(float(v), 4)] for name, v in zip(names, picked, strict=True)]


# ---------------------------------------------------------------- the stage


def pending(store: Store, source_id: int, model: str, **kwargs: Any) -> list[int]:
    """Mined features of a source that lack either effect measured on subject `model`."""
    missing: set[int] = set()
    for method in EFFECT_METHODS:
        missing.update(
            store.features_to_judge(source_id, method=method, model=model, prompt=None, **kwargs)
        )
    return sorted(missing)


def compute_effects(
    store: Store,
    subject: Subject,
    source: Source,
    info: SourceInfo,
    config: EffectsConfig,
    *,
    run_id: int | None = None,
    again: bool = False,
    feature_ids: Sequence[int] | None = None,
    limit: int | None = None,
    progress: bool = False,
) -> dict[str, int]:
    """Measure and store both effects for the source's features that lack them (all with
    `again`). Returns counts: measured, and skipped (another process got there first)."""
    check_subject(store, subject, info)
    directions(source, hooks_of(subject, source, info.hook)[-1], torch.tensor([0]))
    todo = pending(store, info.id, subject.name, rescore=again, feature_ids=feature_ids)
    if limit is not None:
        todo = todo[:limit]
    counts = {"measured": 0, "skipped": 0}
    bar = tqdm(total=len(todo), desc="effects", unit="feature", disable=not progress)
    for start in range(0, len(todo), FEATURES_PER_CALL):
        chunk = [target_of(store, fid, config) for fid in todo[start : start + FEATURES_PER_CALL]]
        for result in measure(subject, source, info.hook, chunk, config):
            stored = 0
            for method, value, details in (
                ("ablation", result.ablation, result.ablation_details),
                ("output", result.output, result.output_details),
            ):
                try:
                    store.add_feature_score(
                        result.feature_id, method, value, details=details, model=subject.name,
                        run_id=run_id, replace=again,
                    )  # fmt: skip
                    stored += 1
                except ConflictError:  # another worker measured it first, or half of it
                    pass
            counts["measured" if stored else "skipped"] += 1
        bar.update(len(chunk))
    bar.close()
    return counts


def check_subject(store: Store, subject: Subject, info: SourceInfo) -> None:
    """Effects need the very model the source was mined on, and a causal one."""
    row = store.subject_of(info.id)
    if (row["name"], row["revision"]) != (subject.name, subject.revision):
        raise InputError(
            f"{info.name} belongs to subject {row['name']} ({row['revision']}), not to "
            f"{subject.name} ({subject.revision}): load that model to measure its features"
        )
    if not subject.causal:
        raise InputError(
            f"{subject.name} is an encoder ({subject.architecture}), not a causal LM: "
            "effects measure next-token loss and output tokens, which it has not"
        )


def target_of(store: Store, feature_id: int, config: EffectsConfig) -> Target:
    """A stored feature as a Target: its top explain windows and its random windows."""
    feature = store.feature(feature_id)
    examples = store.examples(feature_id)
    top = [e for e in examples if e.split == "explain" and e.kind == "top"][: config.windows]
    rand = [e for e in examples if e.kind == "random"][: config.random]
    return Target(
        feature_id, feature.index, feature.max_act or 0.0, feature.mean_act or 0.0, top, rand
    )
