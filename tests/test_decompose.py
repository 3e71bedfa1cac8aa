"""`gloss decompose` on the real MiniLM: a word's features per hook point, checked by brute force.

The shared dictionary is written here in the design's on-disk format (gloss_dictionary.json
plus one SAELens folder per point, each point's scale folded into its weights). Until
`load_source` reads that format, `use_dictionary` stands in for it with a Source built from
the per-point folders; once it does, the real loader is used and the stand-in is idle.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from gloss.pipeline import decompose as dec
from gloss.pipeline.cli import main
from gloss.pipeline.sources import Source, load_source
from gloss.store import InputError, MinedFeature, ModelError, NotFoundError, open_store

SPEC = "layer.0-5.resid"
WIDTH, K, D_IN = 512, 16, 384
PIE, LAPTOP = "She baked an apple pie.", "Apple unveiled a new laptop."


@dataclass
class Dictionary:
    folder: Path
    hooks: list[str]
    weights: dict[str, dict[str, torch.Tensor]]  # per point, scale folded in
    k: int
    source: Source | None = field(default=None)


def write_dictionary(
    folder: Path, hooks: list[str], *, width: int = WIDTH, k: int = K, seed: int = 0
) -> Dictionary:
    """A shared TopK dictionary in the design's format, with random weights."""
    gen = torch.Generator().manual_seed(seed)
    W_enc = torch.randn(D_IN, width, generator=gen) / D_IN**0.5
    b_enc = torch.randn(width, generator=gen) * 0.05
    W_dec = torch.nn.functional.normalize(torch.randn(width, D_IN, generator=gen), dim=1)
    b_dec = torch.randn(D_IN, generator=gen) * 0.05
    scales = {h: 1.0 / (1 + i) for i, h in enumerate(hooks)}
    weights = {}
    for h in hooks:
        s = scales[h]
        w = {"W_enc": W_enc * s, "b_enc": b_enc.clone(), "W_dec": W_dec / s, "b_dec": b_dec / s}
        (folder / h).mkdir(parents=True)
        save_file(
            {n: t.contiguous() for n, t in w.items()}, str(folder / h / "sae_weights.safetensors")
        )
        cfg = {
            "architecture": "topk",
            "d_in": D_IN,
            "d_sae": width,
            "activation_fn_kwargs": {"k": k},
            "apply_b_dec_to_input": True,
            "normalize_activations": "none",
            "hook_name": h,
            "model_name": "minilm",
            "dtype": "float32",
            "device": "cpu",
        }
        (folder / h / "cfg.json").write_text(json.dumps(cfg))
        weights[h] = w
    manifest = {
        "format": 1,
        "architecture": "topk",
        "hooks": hooks,
        "d_in": D_IN,
        "width": width,
        "k": k,
        "scales": scales,
        "subject": {"name": "minilm", "revision": "test"},
        "training": {"corpus": {}, "tokens": 0, "steps": 0, "seed": seed},
        "quality": {"fvu": None, "l0": float(k), "dead_share": None, "per_hook": {}},
    }
    (folder / "gloss_dictionary.json").write_text(json.dumps(manifest))
    return Dictionary(folder, list(hooks), weights, k)


def stand_in_loader(spec: str, hook_width: int) -> Source:
    """What `load_source("sae:FOLDER")` returns for a shared dictionary, from its point folders."""
    folder = Path(spec.partition(":")[2])
    manifest = json.loads((folder / "gloss_dictionary.json").read_text())
    encoders = {h: load_source(f"sae:{folder / h}", hook_width).encoder for h in manifest["hooks"]}
    digest = hashlib.sha256((folder / "gloss_dictionary.json").read_bytes())
    for h in manifest["hooks"]:
        digest.update((folder / h / "sae_weights.safetensors").read_bytes())
    return Source(
        "sae",
        manifest["width"],
        manifest["d_in"],
        digest.hexdigest(),
        str(folder.resolve()),
        manifest,
        encoders=encoders,
    )


def use_dictionary(monkeypatch, d: Dictionary) -> Source:
    """The real loader when it reads shared dictionaries, else the stand-in (patched in).

    Only today's "no cfg.json at the top" refusal falls back: once the loader reads the
    format, anything it refuses in these folders fails the test instead.
    """
    try:
        source = load_source(f"sae:{d.folder}", D_IN)
    except InputError as error:
        if not str(error).startswith(f"missing {d.folder}/cfg.json"):
            raise
        source = None
    if source is None or not source.encoders:
        monkeypatch.setattr(dec, "read_source", stand_in_loader)
        source = stand_in_loader(f"sae:{d.folder}", D_IN)
    d.source = source
    return source


def max_act(index: int) -> float:
    return 5.0 + index / 100


def register(store, subject, source: Source, hook: str, *, mined=None, labels=None) -> str:
    """Register `source` at `hook` with mined features (all, or `mined`) and human labels."""
    subject_id = store.get_or_create_subject(**subject.identity())
    source_id = store.get_or_create_source(
        subject_id,
        hook,
        source.kind,
        source.width,
        source.params_hash,
        path=source.path,
        config=source.config,
    )
    indices = range(source.width) if mined is None else mined
    store.write_mined_features(
        source_id, [MinedFeature(i, max_act(i), 0.1, 0.01, 1000, None) for i in indices]
    )
    ids = {f.index: f.id for f in store.features(source_id)}
    for index, (text, score) in (labels or {}).items():
        explanation = store.add_explanation(ids[index], text, author_kind="human", author_name="t")
        if score is not None:
            store.add_score(explanation, "simulation", score)
    return store.source(source_id).name


def brute_force(subject, d: Dictionary, text: str, positions: list[int]) -> dict[str, torch.Tensor]:
    """Per point: topk(relu((x - b_dec) @ W_enc + b_enc)) on the raw activation, max over positions."""
    ids = subject.encode(text)
    acts = subject.activations(torch.tensor([ids]), None, d.hooks)
    out = {}
    for h in d.hooks:
        w = d.weights[h]
        pre = torch.relu((acts[h][0, positions] - w["b_dec"]) @ w["W_enc"] + w["b_enc"])
        top = pre.topk(d.k, dim=-1)
        f = torch.zeros_like(pre).scatter_(-1, top.indices, top.values)
        out[h] = f.max(dim=0).values
    return out


def expected_top(vec: torch.Tensor, top: int) -> list[int]:
    ranked = sorted((i for i in range(len(vec)) if vec[i] > 0), key=lambda i: (-float(vec[i]), i))
    return ranked[:top]


MINED = [i for i in range(WIDTH) if i % 5]  # every fifth feature was never mined
# A third of the mined features are labeled, half of those scored.
LABELS = {
    i: (f"meaning number {i}", 0.1 + i / 1000 if i % 2 else None) for i in MINED if i % 3 == 0
}


@pytest.fixture(autouse=True)
def fresh_sources():
    dec.clear_cache(subjects=False)
    yield
    dec.clear_cache(subjects=False)


@pytest.fixture
def dictionary(tmp_path, monkeypatch) -> Dictionary:
    d = write_dictionary(tmp_path / "dictionary", [f"layer.{i}.resid" for i in range(6)])
    use_dictionary(monkeypatch, d)
    return d


@pytest.fixture
def dict_store(sqlite_url, minilm, dictionary):
    with open_store(sqlite_url) as store:
        name = register(store, minilm, dictionary.source, SPEC, mined=MINED, labels=LABELS)
        yield store, name


def token_position(subject, text: str, token: str) -> list[int]:
    return [i for i, t in enumerate(subject.token_strings(subject.encode(text))) if t == token]


# ---------------------------------------------------------------- results


def test_features_per_point_match_brute_force_on_a_shared_dictionary(
    dict_store, minilm, dictionary
):
    store, name = dict_store
    result = dec.decompose(store, "apple", [PIE, LAPTOP], top=10)
    assert result.source == name and result.word == "apple"
    assert result.hooks == [f"layer.{i}.resid" for i in range(6)]
    for ctx, text in zip(result.contexts, [PIE, LAPTOP], strict=True):
        assert ctx.text[ctx.start : ctx.end].lower() == "apple" and ctx.tokens == ["apple"]
        assert ctx.positions == token_position(minilm, text, "apple")
        truth = brute_force(minilm, dictionary, text, ctx.positions)
        assert [p.hook for p in ctx.points] == result.hooks
        for point in ctx.points:
            vec = truth[point.hook]
            assert point.active == int((vec > 0).sum()) <= dictionary.k
            assert [h.index for h in point.features] == expected_top(vec, 10)
            values = [h.activation for h in point.features]
            assert values == sorted(values, reverse=True) and values[-1] > 0
            for h in point.features:
                assert h.activation == pytest.approx(float(vec[h.index]), rel=1e-4, abs=1e-5)
                assert h.ref == f"{name}:{h.index}"
                if h.index in MINED:
                    assert h.feature_id is not None
                    assert h.relative == pytest.approx(h.activation / max_act(h.index))
                    assert (h.label, h.score) == (
                        LABELS[h.index] if h.index in LABELS else (None, None)
                    )
                else:
                    assert (h.feature_id, h.relative, h.label) == (None, None, None)
    labeled = [h for c in result.contexts for p in c.points for h in p.features if h.label]
    assert labeled, "no shown feature carries a label: the test would not check labels"


def test_two_senses_get_different_features_and_a_consistent_contrast(
    dict_store, minilm, dictionary
):
    store, _ = dict_store
    result = dec.decompose(store, "apple", [PIE, LAPTOP], top=8)
    pie, laptop = result.contexts
    deepest = result.hooks[-1]
    top_pie = {h.index for h in pie.points[-1].features}
    top_laptop = {h.index for h in laptop.points[-1].features}
    assert top_pie != top_laptop, f"the same top features for both senses at {deepest}"
    assert [c.hook for c in result.contrasts] == result.hooks
    truths = [brute_force(minilm, dictionary, c.text, c.positions) for c in result.contexts]
    for contrast in result.contrasts:
        matrix = torch.stack([t[contrast.hook] for t in truths])
        low, high = matrix.min(0).values, matrix.max(0).values
        both = [i for i in range(WIDTH) if low[i] > 0 and low[i] > dec.MUCH_WEAKER * high[i]]
        apart = [i for i in range(WIDTH) if high[i] > 0 and low[i] <= dec.MUCH_WEAKER * high[i]]
        assert [c.index for c in contrast.shared] == sorted(
            both, key=lambda i: (-float(low[i]), i)
        )[:8]
        assert [c.index for c in contrast.distinct] == sorted(
            apart, key=lambda i: (-float(high[i] - low[i]), i)
        )[:8]
        for c in contrast.distinct:
            assert c.activations == pytest.approx(matrix[:, c.index].tolist(), abs=1e-5)
            assert c.strongest == 1 + int(matrix[:, c.index].argmax())
    assert any(c.distinct for c in result.contrasts)


def test_a_word_of_several_tokens_takes_the_max_over_them(sqlite_url, minilm):
    text = "She sliced a ripe pineapple for the guests."
    positions = token_position(minilm, text, "pine") + token_position(minilm, text, "##apple")
    assert len(positions) == 2
    neurons = load_source("neurons", minilm.hook_width("layer.3.mlp"))
    with open_store(sqlite_url) as store:
        register(store, minilm, neurons, "layer.3.mlp", mined=range(64), labels={7: ("seven", 0.5)})
        result = dec.decompose(store, "PineApple", [text], top=5)
    ctx = result.contexts[0]
    assert ctx.positions == positions and ctx.tokens == ["pine", "##apple"]
    acts = minilm.activations(torch.tensor([minilm.encode(text)]), None, ["layer.3.mlp"])
    vec = acts["layer.3.mlp"][0, positions].max(dim=0).values
    (point,) = ctx.points
    assert point.hook == "layer.3.mlp" and point.active == int((vec > 0).sum())
    assert [h.index for h in point.features] == expected_top(vec, 5)
    assert [h.activation for h in point.features] == pytest.approx(
        [float(vec[i]) for i in expected_top(vec, 5)]
    )
    assert result.contrasts == []


def test_a_single_point_sae_and_the_occurrence_asked_for(sqlite_url, minilm, tmp_path):
    d = write_dictionary(tmp_path / "one", ["layer.2.resid"], width=256, k=8, seed=3)
    sae = load_source(f"sae:{d.folder / 'layer.2.resid'}", D_IN)
    assert not sae.encoders and sae.encoder is not None
    text = "An apple a day, and then another apple."
    with open_store(sqlite_url) as store:
        register(store, minilm, sae, "layer.2.resid")
        first = dec.decompose(store, "apple", [text], top=4)
        second = dec.decompose(store, "apple", [text], top=4, at=[text.rindex("apple")])
    assert first.contexts[0].occurrences == 2
    assert first.contexts[0].positions != second.contexts[0].positions
    for r in (first, second):
        ctx = r.contexts[0]
        truth = brute_force(
            minilm, dataclasses.replace(d, hooks=["layer.2.resid"]), text, ctx.positions
        )
        assert [h.index for h in ctx.points[0].features] == expected_top(truth["layer.2.resid"], 4)


def test_the_default_source(tmp_path, minilm, monkeypatch):
    neurons = load_source("neurons", minilm.hook_width("layer.3.mlp"))
    with open_store(f"sqlite:///{tmp_path / 'g.db'}") as store:
        with pytest.raises(NotFoundError, match="no feature sources"):
            dec.pick_source(store, None)
        only = register(store, minilm, neurons, "layer.3.mlp", mined=[0])
        assert dec.pick_source(store, None).name == only
        resid = load_source("neurons", minilm.hook_width("layer.4.resid"))
        register(store, minilm, resid, "layer.4.resid", mined=[0])
        with pytest.raises(
            InputError, match="several feature sources; pick one with --source"
        ) as e:
            dec.pick_source(store, None)
        assert only in str(e.value) and "\n" not in str(e.value)
        older = write_dictionary(tmp_path / "older", ["layer.0.resid", "layer.1.resid"], seed=1)
        newer = write_dictionary(tmp_path / "newer", ["layer.0.resid", "layer.1.resid"], seed=2)
        names = [
            register(store, minilm, use_dictionary(monkeypatch, d), "layer.0-1.resid", mined=[0])
            for d in (older, newer)
        ]
        assert dec.pick_source(store, None).name == names[1]
        assert dec.pick_source(store, only).name == only


def test_changed_files_are_refused(dict_store, dictionary):
    store, _ = dict_store
    weights = dictionary.folder / "layer.0.resid" / "sae_weights.safetensors"
    w = {n: t.clone() for n, t in dictionary.weights["layer.0.resid"].items()}
    w["b_enc"] += 1
    save_file(w, str(weights))
    with pytest.raises(ModelError, match="changed since"):
        dec.decompose(store, "apple", [PIE])


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["apple", "--context", PIE, "--context", "Bananas are yellow."],
            "'apple' does not occur in context 2: 'Bananas are yellow.'",
        ),
        (
            ["apple", "--context", "pineapples and applesauce"],
            "'apple' does not occur in context 1",
        ),
        (["apple", "--context", PIE, "--context", "   "], "context 2 is empty"),
        (["apple"], "give at least one context"),
        (["  ", "--context", PIE], "give a word to decompose"),
        (["apple", "--context", PIE, "--top", "0"], "top must be at least 1"),
        (["apple", "--context", PIE, "--source", "nope"], "no feature source 'nope'"),
        (
            ["apple", "--context", PIE, "--hook", "layer.3.mlp"],
            "not layer.3.mlp: pick --hook among those",
        ),
        (
            ["apple", "--context", PIE, "--hook", "layer.9.resid"],
            "unknown hook point 'layer.9.resid'",
        ),
        (["apple", "--context", "apple " * 300], "decompose reads at most 256"),
    ],
)
def test_bad_input_is_one_line(dict_store, capsys, args, message):
    store, _ = dict_store
    code = main(["--database", store.url, "decompose", *args])
    err = capsys.readouterr().err
    assert code != 0
    assert err.startswith("gloss: ") and err.count("\n") == 1, err
    assert message in err


def test_no_sources_is_one_line(sqlite_url, capsys):
    open_store(sqlite_url).close()
    assert (
        main(["--database", sqlite_url, "decompose", "apple", "--context", PIE])
        == NotFoundError.exit_code
    )
    err = capsys.readouterr().err
    assert (
        err == "gloss: no feature sources in this database: run gloss learn or gloss mine first\n"
    )


# ---------------------------------------------------------------- the command


def test_cli_text_and_json(dict_store, capsys):
    store, name = dict_store
    args = ["--database", store.url, "decompose", "apple", "--context", PIE, "--context", LAPTOP]
    assert main([*args, "--top", "3", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    expected = dec.decompose(store, "apple", [PIE, LAPTOP], top=3)
    assert data == json.loads(json.dumps(dataclasses.asdict(expected)))
    assert data["source"] == name and len(data["contexts"]) == 2
    assert [p["hook"] for p in data["contexts"][0]["points"]] == expected.hooks

    assert main([*args, "--top", "3", "--hook", "layer.4-5.resid"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0] == f"'apple' · source {name} · 2 points"
    assert "context 1: She baked an [apple] pie." in lines
    assert "context 2: [Apple] unveiled a new laptop." in lines
    assert "layer.3.resid" not in out and "  layer.5.resid  (" in out
    narrowed = dec.decompose(store, "apple", [PIE, LAPTOP], top=3, hooks="layer.4-5.resid")
    for point in narrowed.contexts[1].points:
        for h in point.features:
            rel = "–" if h.relative is None else f"{h.relative:.0%}"
            label = "(not mined)" if h.feature_id is None else (h.label or "(no label)")
            if h.label and h.score is not None:
                label += f" ({h.score:.2f})"
            assert f"    {h.activation:9.3f}  {rel:>5}  {h.ref}  {label}" in lines
    assert any(line.startswith("shared by all 2 contexts") for line in lines)
    assert any(line.startswith("tell them apart") for line in lines)
    for c in narrowed.contrasts[0].distinct:
        values = " | ".join(f"{v:7.3f}" for v in c.activations)
        assert any(line.startswith(f"    {values}  ctx {c.strongest}  {c.ref}") for line in lines)


def test_labels_are_made_inert_for_the_terminal():
    hit = dec.Hit(1, "src:1", 5, 1.0, 0.5, "ok\u2028\x1b]0;pwned\x07 label", None)
    ctx = dec.ContextResult(
        1, "an apple\x1b[2J", 3, 8, 1, ["apple"], [1], [dec.PointHits("layer.0.resid", 1, [hit])]
    )
    lines = dec.text_lines(
        dec.Decomposition("apple", "src", 1, "minilm", ["layer.0.resid"], [ctx], [])
    )
    text = "\n".join(lines)
    assert "\x1b" not in text and "\u2028" not in text and "\x07" not in text
    assert "ok\\u2028\\x1b]0;pwned\\x07 label" in text and "[apple]\\x1b[2J" in text
