"""Interventions: turn a feature off or up where it is read, and see what the model says.

    edit = Edit(feature=42, keep=0.0, add=0.0)                  # ablate to zero
    edit = Edit(feature=42, keep=1.0, add=4 * max_act)          # steer: add 4x its peak
    with intervened(subject, source, hooks, [edit, None], seq, valid):
        hidden = subject.model(...)                              # row 0 edited, row 1 clean

An intervention never rebuilds the hook's value from the dictionary. It adds the change
of the feature's activation times the feature's decoder direction,

    x' = x + (f' - f) * d,    f' = keep * f + add,

so an SAE's error term (what its reconstruction misses) stays in x, and an edit that
changes nothing (keep 1, add 0, or ablating a feature that is silent) leaves x bit for
bit. For neurons the direction is the unit itself: ablation zeroes it, steering adds to
it. A dictionary shared by several points is edited at each of them.

`compare` runs a prompt with and without an edit (`gloss intervene`, the review app);
`pipeline.effects` measures what each feature's ablation and steering do.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from gloss.pipeline.sources import Source
from gloss.pipeline.subjects import Subject
from gloss.store.errors import InputError
from gloss.store.types import FeatureInfo

MODES = ("zero", "mean", "steer")


@dataclass(frozen=True)
class Edit:
    """One feature's edit on one row of a batch: its activation becomes keep * f + add."""

    feature: int
    keep: float
    add: float

    @classmethod
    def of(cls, feature: int, mode: str, *, mean: float = 0.0, amount: float = 0.0) -> Edit:
        """`zero` and `mean` ablation, or `steer` by `amount` (a multiple of its peak)."""
        if mode == "zero":
            return cls(feature, 0.0, 0.0)
        if mode == "mean":
            return cls(feature, 0.0, mean)
        if mode == "steer":
            return cls(feature, 1.0, amount)
        raise InputError(f"unknown intervention {mode!r}; use one of {', '.join(MODES)}")


def edit_for(feature: FeatureInfo, mode: str, scale: float | None = None) -> tuple[Edit, str]:
    """The edit `mode` asks for on a stored feature, and how to say it: steering adds
    `scale` x the feature's peak activation, mean ablation sets it to its mean."""
    if mode == "steer":
        if scale is None or not math.isfinite(scale):
            raise InputError("give the steering scale: a number, e.g. 4 (times the feature's peak)")
        amount = scale * (feature.max_act or 0.0)
        if not amount:
            raise InputError(
                "this feature's peak activation is 0 (it never fired when mined), so steering "
                "by a multiple of it changes nothing: ablate it, or steer another feature"
            )
        return Edit.of(feature.index, mode, amount=amount), (
            f"steered {scale:+g} × its peak ({amount:+.3f})"
        )
    mean = feature.mean_act or 0.0
    edit = Edit.of(feature.index, mode, mean=mean)
    return edit, "ablated to 0" if mode == "zero" else f"ablated to its mean ({mean:.3f})"


def directions(source: Source, hook: str | None, features: torch.Tensor) -> torch.Tensor:
    """What a unit of each feature adds at its hook point [len(features), d_in]."""
    if source.encoder is None and not source.encoders:
        eye = torch.zeros(len(features), source.d_in)
        eye[torch.arange(len(features)), features] = 1.0
        return eye
    encoder = source.encoders[hook] if source.encoders else source.encoder
    assert encoder is not None
    if encoder.transcoder:
        raise InputError(
            "this source is a transcoder: its decoder writes the MLP's output, not the point "
            "it reads, so gloss cannot intervene on it; use an SAE, a dictionary or neurons"
        )
    if encoder.W_dec is None:
        raise InputError(
            "this source's files have no decoder (W_dec), which an intervention adds back; "
            "give the full SAE or dictionary"
        )
    rows = encoder.W_dec[features]
    if not bool(torch.isfinite(rows).all()):  # mining never reads W_dec: checked on use
        raise InputError(
            "this source's decoder (W_dec) holds NaN or infinite values for these features; "
            "the weights are damaged, give a good copy"
        )
    return rows


def hooks_of(subject: Subject, source: Source, hook_spec: str) -> list[str]:
    """The points an intervention edits: every point a shared dictionary reads, else the one."""
    return list(source.hooks) if source.hooks else subject.parse_hooks(hook_spec)[:1]


@contextlib.contextmanager
def intervened(
    subject: Subject,
    source: Source,
    hooks: Sequence[str],
    edits: Sequence[Edit | None],
    seq: slice,
    valid: torch.Tensor,
) -> Iterator[None]:
    """While open, forward passes of len(edits) rows edit row i's feature as edits[i] says
    (None: the row runs clean), at the text positions `seq` where `valid` [rows, len] is set."""
    handles = []
    if any(e is not None for e in edits):
        rows = [i for i, e in enumerate(edits) if e is not None]
        picked = [e for e in edits if e is not None]
        features = torch.tensor([e.feature for e in picked])
        keep = torch.tensor([e.keep for e in picked], dtype=torch.float32)
        add = torch.tensor([e.add for e in picked], dtype=torch.float32)
        for hook in hooks:
            dirs = directions(source, hook, features).float()
            edit = _editor(source, hook, rows, features, keep, add, dirs, seq, valid)
            handles.append(subject.splice(hook, edit))
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def _editor(
    source: Source,
    hook: str,
    rows: list[int],
    features: torch.Tensor,
    keep: torch.Tensor,
    add: torch.Tensor,
    dirs: torch.Tensor,
    seq: slice,
    valid: torch.Tensor,
):
    unique, column = torch.unique(features, return_inverse=True)
    encoder = source.encoders.get(hook) if source.encoders else source.encoder

    def edit(value: torch.Tensor) -> torch.Tensor:
        device = value.device
        at = torch.tensor(rows, device=device)
        x = value[at][:, seq].float()  # [edited rows, len, d_in]
        width = x.shape[1]
        f = source.encode(x, unique.to(device), hook if source.encoders else None)
        f = f.gather(-1, column.to(device).view(-1, 1, 1).expand(-1, width, 1))[..., 0]
        change = add.to(device)[:, None] - (1.0 - keep.to(device))[:, None] * f
        change = change * valid.to(device)[at][:, :width]
        if encoder is not None and encoder.norm_scale:  # its input was rescaled to sqrt(d_in)
            change = change * x.norm(dim=-1) / x.shape[-1] ** 0.5
        delta = change[..., None] * dirs.to(device)[:, None, :]
        value = value.clone()
        inner = value[:, seq]
        inner[at] = (x + delta).to(value.dtype)
        value[:, seq] = inner
        return value

    return edit


# ---------------------------------------------------------------- running a prompt


@torch.inference_mode()
def logprobs(
    subject: Subject,
    ids: torch.Tensor,
    valid: torch.Tensor,
    source: Source | None = None,
    hooks: Sequence[str] = (),
    edits: Sequence[Edit | None] = (),
) -> torch.Tensor:
    """Next-token log-probabilities [rows, len, vocab] of windows `ids` [rows, len], each
    row edited as `edits` says (clean without a source)."""
    if not subject.causal:
        raise InputError(
            f"{subject.name} is an encoder ({subject.architecture}), not a causal LM: it "
            "predicts no next token, so interventions have no output to compare"
        )
    full, mask = subject._with_specials(ids.to(subject.device), valid.long())
    start = len(subject.prefix_ids)
    seq = slice(start, start + ids.shape[1])
    context = (
        intervened(subject, source, hooks, edits, seq, valid)
        if source is not None
        else contextlib.nullcontext()
    )
    with context:
        hidden = subject.model(input_ids=full, attention_mask=mask, use_cache=False)[0]
    return torch.log_softmax(subject.logits(hidden[:, seq]), dim=-1)


def compare(
    subject: Subject,
    source: Source,
    hook_spec: str,
    edit: Edit,
    text: str,
    *,
    tokens: int = 12,
    top: int = 10,
) -> dict[str, Any]:
    """A prompt's next-token distribution and greedy continuation, clean and edited.

    The edit applies at every prompt position and at each generated one, as a steered
    model would run. `top` tokens of each distribution come with their probabilities.
    """
    if tokens < 0 or top < 1:
        raise InputError("--tokens must be 0 or more and --top at least 1")
    ids = subject.encode(text)[: subject.max_text_tokens - tokens]
    if not ids:
        raise InputError("the text has no tokens; give a prompt to run")
    hooks = hooks_of(subject, source, hook_spec)
    runs: dict[str, Any] = {}
    for name, chosen in (("clean", None), ("edited", edit)):
        generated: list[int] = []
        first: torch.Tensor | None = None
        for _ in range(max(tokens, 1)):
            row = torch.tensor([ids + generated])
            lp = logprobs(subject, row, torch.ones_like(row, dtype=torch.bool), source, hooks,
                          [chosen])[0, -1]  # fmt: skip
            if first is None:
                first = lp
            if tokens == 0:
                break
            generated.append(int(lp.argmax()))
        assert first is not None
        runs[name] = {"next": first, "continuation": generated}
    clean, edited = runs["clean"]["next"], runs["edited"]["next"]
    shift = edited - clean
    return {
        "prompt": text,
        "prompt_tokens": len(ids),
        "clean": _side(subject, clean, runs["clean"]["continuation"], top),
        "edited": _side(subject, edited, runs["edited"]["continuation"], top),
        "kl": float((edited.exp() * shift).sum()),
        "promoted": _tokens(subject, shift, top, largest=True),
        "suppressed": _tokens(subject, shift, top, largest=False),
    }


def _side(subject: Subject, lp: torch.Tensor, continuation: list[int], top: int) -> dict:
    values, ids = lp.topk(top)
    return {
        "continuation": "".join(subject.token_strings(continuation)),
        "next": [
            [token, round(float(v.exp()), 6)]
            for token, v in zip(subject.token_strings(ids.tolist()), values, strict=True)
        ],
    }


def _tokens(subject: Subject, values: torch.Tensor, top: int, *, largest: bool) -> list:
    """The `top` tokens with the largest (or smallest) values, as [token, value] pairs."""
    picked, ids = values.topk(top, largest=largest)
    return [
        [token, round(float(v), 4)]
        for token, v in zip(subject.token_strings(ids.tolist()), picked, strict=True)
    ]


def vocab_projection(
    subject: Subject, source: Source, hook_spec: str, feature: int, top: int = 10
) -> dict[str, list]:
    """VocabProj: the tokens a feature's direction, read through the final norm and the
    unembedding, raises and lowers most (at the deepest point it is read)."""
    hook = hooks_of(subject, source, hook_spec)[-1]
    if subject.unembedding() is None:
        raise InputError(f"{subject.name} is an encoder ({subject.architecture}): no unembedding")
    with torch.inference_mode():
        d = directions(source, hook, torch.tensor([feature])).to(subject.device)
        resid = subject.to_residual(hook, d.to(next(subject.model.parameters()).dtype))
        logits = subject.logits(subject.final_norm()(resid))[0]
    return {
        "up": _tokens(subject, logits, top, largest=True),
        "down": _tokens(subject, logits, top, largest=False),
    }
