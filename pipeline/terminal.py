"""Feature cards and search results as terminal text (what `gloss show` and `gloss search` print).

Activating tokens are highlighted with ANSI bold and colour on a terminal and
marked `<<like this>>` otherwise, so piped output stays greppable and plain. Every
string from the database goes through `printable`: labels, tokens and notes are data,
and must not be able to move the cursor, retitle the window or clear the screen.
"""

from __future__ import annotations

import dataclasses
import json
from datetime import datetime
from typing import Any

from gloss.pipeline.prompts import printable, spell
from gloss.store import (
    ExampleOut,
    ExplanationInfo,
    FeatureCard,
    FeatureRow,
    ScoreInfo,
    SourceInfo,
)
from gloss.store.api import LayerPeaks
from gloss.store.types import EFFECT_METHODS

KIND_ORDER = {"top": 0, "quantile": 1, "random": 2}
BAR = "█"
HISTOGRAM_ROWS = 12


def to_json(value: Any) -> str:
    """Dataclasses (cards, rows) as JSON; datetimes as ISO strings."""

    def default(obj: Any) -> Any:
        if dataclasses.is_dataclass(obj):
            return dataclasses.asdict(obj)
        if isinstance(obj, datetime):
            return obj.isoformat()
        raise TypeError(f"cannot encode {type(obj).__name__}")

    return json.dumps(value, default=default, ensure_ascii=False)


def row_dict(row: FeatureRow) -> dict[str, Any]:
    return {**dataclasses.asdict(row), "ref": row.ref}


def format_rows(rows: list[FeatureRow], total: int) -> str:
    if not rows:
        return "no features match"
    like = rows[0].similarity is not None  # a search by meaning: show how close each is
    lines = [
        ("  like" if like else "")
        + f"{'id':>7}  {'score':>6}  {'status':<10}  {'feature':<34}  label"
    ]
    for r in rows:
        score = "" if r.score is None else f"{r.score:.3f}"
        status = printable(r.label_status or "unlabeled")
        lines.append(
            (f"{r.similarity:6.3f}" if like else "")
            + f"{r.feature_id:>7}  {score:>6}  {status:<10}  {printable(r.ref):<34}  "
            f"{_short(r.label or '', 70)}"
        )
    lines.append(f"{len(rows)} of {total} shown")
    return "\n".join(lines)


def format_layer_peaks(source: SourceInfo, peaks: list[LayerPeaks]) -> str:
    """`gloss layers`: per hook point, the features that peak there, strongest first."""
    out = [f"{printable(source.name)}  hook {printable(source.hook)}: features by the point "
           "where their layer map peaks",
           f"  {'peak':>8}  {'score':>6}  {'feature':<34}  label"]  # fmt: skip
    for layer in peaks:
        shown = (
            f", the strongest {len(layer.features)}" if len(layer.features) < layer.count else ""
        )
        noun = "feature peaks" if layer.count == 1 else "features peak"
        out += ["", f"{printable(layer.point)}: {layer.count} {noun} here{shown}"]
        for row, layers in layer.features:
            score = "" if row.score is None else f"{row.score:.3f}"
            out.append(
                f"  {layers[layer.point]:8.3f}  {score:>6}  {printable(row.ref):<34}  "
                f"{_short(row.label or '(no label yet)', 70)}"
            )
    return "\n".join(out)


def layer_peaks_dict(source: SourceInfo, peaks: list[LayerPeaks]) -> dict[str, Any]:
    """`gloss layers --json`."""
    return {
        "source": source.name,
        "hook": source.hook,
        "points": [
            {
                "point": layer.point,
                "count": layer.count,
                "features": [
                    {**row_dict(row), "peak": layers[layer.point], "layers": layers}
                    for row, layers in layer.features
                ],
            }
            for layer in peaks
        ],
    }


def _score_line(sc: ScoreInfo) -> str:
    """`detection 0.833 by gpt-4o-mini (auc 0.91; 2 calls, 1,204 tokens)` or why it is undefined."""
    model = f" by {printable(sc.simulator_model)}" if sc.simulator_model else ""
    extra = []
    if sc.details.get("auc") is not None:
        extra.append(f"auc {_num(sc.details['auc'])}")
    if sc.value is None and sc.details.get("reason"):
        extra.append(_short(printable(str(sc.details["reason"])), 80))
    if sc.calls:
        extra.append(f"{sc.calls} calls, {sc.tokens_in + sc.tokens_out:,} tokens")
    note = f" ({'; '.join(extra)})" if extra else ""
    return f"{printable(sc.method)} {_num(sc.value)}{model}{note}"


def format_card(card: FeatureCard, *, color: bool, per_kind: int = 5) -> str:
    f, src = card.feature, card.source
    out = [
        _bold(f"feature {f.id}  {printable(f.ref)}", color) + f"  [{printable(f.status)}]",
        f"subject {printable(src.subject_name)}  hook {printable(src.hook)}"
        f"  kind {printable(src.kind)}  width {src.width}",
        f"max {_num(f.max_act)}  mean {_num(f.mean_act)}  density {_pct(f.density)}"
        f"  tokens {f.n_tokens if f.n_tokens is not None else '-'}",
    ]
    if f.last_error:
        out.append(f"last error ({f.failures} failures): {_short(f.last_error, 100)}")
    out += _histogram(f.histogram)
    out += layer_map(f.layers)
    out.append("")
    if card.current is None:
        out.append("label: none yet (run gloss explain, or gloss label FEATURE TEXT --by NAME)")
    else:
        e = card.current
        out.append(_bold("label: ", color) + printable(e.text))
        out.append(f"       [{printable(e.status)}] score {_num(e.score)}  {_provenance(e)}")
        for sc in e.scores:
            out.append(f"       {_score_line(sc)}")
    effects = {sc.method: sc for sc in card.feature_scores if sc.method in EFFECT_METHODS}
    for sc in card.feature_scores:
        if sc.method not in EFFECT_METHODS:
            out.append(f"feature {_score_line(sc)}  (a measure of the feature, not of a label)")
    if effects:
        out += ["", _bold("effects", color) + f" (on {printable(src.subject_name)})"]
        out += effect_lines(effects.get("ablation"), effects.get("output"))
    if len(card.history) > 1 or (card.history and card.current is None):
        out += ["", _bold("history (newest first)", color)]
        for e in card.history:
            out.append(
                f"  #{e.id:<6} {printable(e.status):<10} {_num(e.score):>6}  {_provenance(e)}"
                f"  {e.created_at:%Y-%m-%d %H:%M}"
            )
            out.append(f"          {printable(e.text)}")
            for sc in e.scores:
                out.append(f"          {_score_line(sc)}")
    if card.reviews:
        out += ["", _bold("reviews", color)]
        for r in card.reviews:
            note = f"  {printable(r.note)}" if r.note else ""
            out.append(
                f"  {r.created_at:%Y-%m-%d %H:%M}  {printable(r.reviewer)}  "
                f"{printable(r.action)}{note}"
            )
    for title, examples in group_examples(card.examples):
        out += ["", _bold(printable(title), color)]
        for ex in examples[:per_kind]:
            out.append(f"  {ex.max_act:6.2f}  " + highlight(ex, color=color))
    return "\n".join(out)


def effect_lines(ablation: ScoreInfo | None, output: ScoreInfo | None) -> list[str]:
    """What the model loses without the feature, and which tokens it pushes up and down."""
    out = []
    if ablation is not None:
        d = ablation.details
        if ablation.value is None:
            out.append(f"  without it: unknown ({_short(printable(str(d.get('reason', ''))), 80)})")
        else:
            how = "zeroed" if d.get("ablation", "zero") == "zero" else "set to its mean"
            out.append(
                f"  without it ({how}): {_signed(ablation.value)} nats/token where it fires"
                f" ({_signed(d.get('random'))} on random windows; clean loss "
                f"{_num(d.get('clean_loss'))}, {d.get('tokens', 0)} tokens)"
            )
    if output is not None:
        d = output.details
        if output.value is None and d.get("reason"):
            out.append(f"  steered: unknown ({_short(printable(str(d['reason'])), 80)})")
        if d.get("promoted"):
            out.append(f"  steered +{d.get('scale', 0):g}x its peak, pushes up:   "
                       + _token_list(d["promoted"]))  # fmt: skip
            out.append(f"  {'':>{len(str(d.get('scale', 0))) + 23}}pushes down: "
                       + _token_list(d["suppressed"]))  # fmt: skip
        if d.get("vocab_up"):
            out.append("  its direction through the unembedding (VocabProj):")
            out.append("    up:   " + _token_list(d["vocab_up"], values=False))
            out.append("    down: " + _token_list(d["vocab_down"], values=False))
    return out


def intervention_lines(result: dict[str, Any]) -> str:
    """`gloss intervene`: the clean and edited runs of a prompt side by side."""
    width = 38
    clean, edited = result["clean"], result["edited"]
    label = f"  {_short(printable(result['label']), 60)}" if result.get("label") else ""
    out = [
        f"feature {printable(result['feature'])}{label}",
        f"edit: {result['edit']}, at every position of the prompt and of the continuation",
        f"prompt ({result['prompt_tokens']} tokens): {_short(printable(result['prompt']), 100)}",
        "",
        f"{'':<14}{'clean':<{width}}  edited",
    ]
    left = _wrap(printable(clean["continuation"]), width)
    right = _wrap(printable(edited["continuation"]), width)
    for i in range(max(len(left), len(right))):
        head = "continuation" if i == 0 else ""
        a = left[i] if i < len(left) else ""
        b = right[i] if i < len(right) else ""
        out.append(f"{head:<14}{a:<{width}}  {b}")
    for i, (a, b) in enumerate(zip(clean["next"], edited["next"], strict=True)):
        head = "next token" if i == 0 else ""
        cell = f"{repr(printable(a[0])):<24}{a[1]:>8.4f}"
        out.append(f"{head:<14}{cell:<{width}}  {repr(printable(b[0])):<24}{b[1]:>8.4f}")
    out += [
        "",
        f"KL(edited || clean) of the next token: {result['kl']:.4f} nats",
        "pushed up:   " + _token_list(result["promoted"]),
        "pushed down: " + _token_list(result["suppressed"]),
    ]
    return "\n".join(out)


def _wrap(text: str, width: int) -> list[str]:
    """Fixed-width slices (a continuation is one line of model text, spaces matter)."""
    shown = repr(text)[1:-1]
    return [shown[i : i + width] for i in range(0, len(shown), width)] or [""]


def _token_list(pairs: list, *, values: bool = True, n: int = 8) -> str:
    return ", ".join(
        repr(printable(str(token))) + (f" {_signed(value, 2)}" if values else "")
        for token, value in pairs[:n]
    )


def _signed(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:+.{digits}f}"


def highlight(ex: ExampleOut, *, color: bool) -> str:
    """One context with its activating tokens marked; strength shown by colour on a TTY."""
    top = max(ex.acts, default=0.0) or 1.0
    parts = []
    for (gap, token), act in zip(spell(ex.tokens), ex.acts, strict=False):
        token = printable(token)
        if act <= 0:
            parts.append(gap + token)
        elif color:
            shade = "\033[1;31m" if act >= 0.5 * top else "\033[1;33m"
            parts.append(f"{gap}{shade}{token}\033[0m")
        else:
            parts.append(f"{gap}<<{token}>>")
    return "".join(parts)


def group_examples(examples: list[ExampleOut]) -> list[tuple[str, list[ExampleOut]]]:
    groups: dict[tuple[int, str, str], list[ExampleOut]] = {}
    for ex in examples:
        family = ex.kind.split(":")[0]
        key = (KIND_ORDER.get(family, 9), family, ex.split)
        groups.setdefault(key, []).append(ex)
    titled = []
    for (_, family, split), items in sorted(groups.items(), key=lambda kv: (kv[0][2], kv[0][0])):
        items.sort(key=lambda e: (-e.max_act, e.rank) if family == "top" else (_q(e.kind), e.rank))
        titled.append((f"{family} contexts ({split} split, {len(items)})", items))
    return titled


def _q(kind: str) -> float:
    """The quantile of a `quantile:Q` kind, so quantile 10 sorts after 9."""
    try:
        return float(kind.partition(":")[2] or 0)
    except ValueError:
        return 0.0


def _histogram(histogram: dict[str, Any] | None) -> list[str]:
    if not histogram or not histogram.get("counts"):
        return []
    counts, edges = histogram["counts"], histogram.get("edges", [])
    step = -(-len(counts) // HISTOGRAM_ROWS)
    if step > 1:  # merge neighbouring bins so the histogram stays a glance
        counts = [sum(counts[i : i + step]) for i in range(0, len(counts), step)]
        edges = edges[::step] + ([edges[-1]] if edges and (len(edges) - 1) % step else [])
    peak = max(counts) or 1
    lines = ["activation histogram (nonzero):"]
    for i, count in enumerate(counts):
        lo = edges[i] if i < len(edges) else float("nan")
        hi = edges[i + 1] if i + 1 < len(edges) else float("nan")
        lines.append(
            f"  {lo:7.3f} – {hi:7.3f} {BAR * max(1 if count else 0, round(30 * count / peak)):<30} {count}"
        )
    return lines


def layer_map(layers: dict[str, float] | None) -> list[str]:
    """One bar per hook point of a shared dictionary, scaled to the feature's largest."""
    if not layers:
        return []
    peak = max(layers.values())
    width = max(len(printable(point)) for point in layers)
    lines = ["layer map (mean of the top activations at each point):"]
    for point, value in layers.items():
        bar = BAR * round(30 * value / peak) if peak > 0 else ""
        mark = "  peak" if peak > 0 and value == peak else ""
        lines.append(f"  {printable(point):<{width}} {bar:<30} {value:7.3f}{mark}")
    return lines


def _provenance(e: ExplanationInfo) -> str:
    parts = [f"{e.author_kind} {e.author_name}"]
    if e.model:
        parts.append(e.model)
    if e.prompt_name:
        parts.append(f"prompt {e.prompt_name} v{e.prompt_version}")
    if e.parent_id:
        parts.append(f"edit of #{e.parent_id}")
    return printable(", ".join(parts))


def _short(text: str, width: int) -> str:
    """One line of at most `width` characters: whitespace runs (line breaks included)
    become one space, then what is left of the control characters is escaped."""
    text = " ".join(text.split())
    return printable(text if len(text) <= width else text[: width - 1] + "…")


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.3g}%"


def _bold(text: str, color: bool) -> str:
    return f"\033[1m{text}\033[0m" if color else text
