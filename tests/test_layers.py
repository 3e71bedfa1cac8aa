"""Features of a dictionary shared by several hook points: mining against brute force, the
layer map, `gloss layers`, `gloss show`, the feature page, `gloss fires`, the migration and
the one-line errors.

The dictionary is built here in the on-disk format of issue 12's design (random TopK
weights over MiniLM's residual stream after blocks 0-2, each point's scale folded in).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from sqlalchemy import create_engine
from sqlalchemy import inspect as inspect_db
from starlette.testclient import TestClient

from gloss.pipeline import sources as source_module
from gloss.pipeline.cli import main
from gloss.pipeline.corpus import Corpus, CorpusConfig
from gloss.pipeline.fires import fires
from gloss.pipeline.mining import LAYER_TOP, LayerMap, MiningConfig, mine
from gloss.pipeline.sources import Encoder, Source, load_source
from gloss.review.app import create_app
from gloss.store import InputError, MinedFeature, NotFoundError, db, open_store

POINTS = ["layer.0.resid", "layer.1.resid", "layer.2.resid"]
SPEC = "layer.0-2.resid"
D_IN, WIDTH, K = 384, 40, 5
SCALES = {"layer.0.resid": 0.9, "layer.1.resid": 0.5, "layer.2.resid": 0.3}
DEAD = (0, 1)  # latents whose bias keeps them silent
TEXTS = [
    "She turned left at the bank, then left the money on the table.",
    "Convert 5 miles to kilometers: multiply by 1.609 to get about 8 kilometers.",
    "The apple pie was sweet, and Apple unveiled a new laptop the same day.",
    "He said it again and again and again until the room went quiet.",
    "Water boils at 100 degrees Celsius, which is 212 degrees Fahrenheit.",
    "The committee approved the budget after a long debate about roads.",
]
SMALL = MiningConfig(
    top_explain=4, top_holdout=2, quantiles=2, quantile_explain=1, quantile_holdout=1,
    quantile_pool=6, random_explain=1, random_holdout=2, batch_size=4, write_every=9,
)  # fmt: skip


def shared_dictionary(folder: Path | None = None) -> Source:
    """A shared TopK dictionary as a Source, written to `folder` in the design's layout."""
    g = torch.Generator().manual_seed(0)
    W_enc = torch.randn(D_IN, WIDTH, generator=g) / D_IN**0.5
    b_enc = torch.randn(WIDTH, generator=g) * 0.1
    b_enc[list(DEAD)] = -1e4
    W_dec = torch.randn(WIDTH, D_IN, generator=g)
    W_dec /= W_dec.norm(dim=1, keepdim=True)
    b_dec = torch.randn(D_IN, generator=g) * 0.1
    encoders = {}
    for point, scale in SCALES.items():
        weights = {
            "W_enc": (scale * W_enc).contiguous(),
            "b_enc": b_enc.clone(),
            "W_dec": (W_dec / scale).contiguous(),
            "b_dec": (b_dec / scale).contiguous(),
        }
        encoders[point] = Encoder(weights["W_enc"], weights["b_enc"], "topk", weights["b_dec"], k=K)
        if folder is not None:
            (folder / point).mkdir(parents=True)
            save_file(weights, str(folder / point / "sae_weights.safetensors"))
            cfg = {
                "architecture": "topk", "d_in": D_IN, "d_sae": WIDTH,
                "activation_fn_kwargs": {"k": K}, "apply_b_dec_to_input": True,
                "normalize_activations": "none", "hook_name": point, "model_name": "minilm",
                "dtype": "float32", "device": "cpu",
            }  # fmt: skip
            (folder / point / "cfg.json").write_text(json.dumps(cfg))
    if folder is not None:
        manifest = {
            "format": 1, "architecture": "topk", "hooks": POINTS, "d_in": D_IN, "width": WIDTH,
            "k": K, "scales": SCALES, "subject": {"name": "minilm", "revision": "test"},
            "training": {"tokens": 0, "steps": 0, "seed": 0},
            "quality": {"fvu": None, "l0": float(K), "dead_share": None, "per_hook": {}},
        }  # fmt: skip
        (folder / "gloss_dictionary.json").write_text(json.dumps(manifest))
    path = str(folder.resolve()) if folder is not None else "/dictionaries/test"
    return Source("sae", WIDTH, D_IN, "f" * 64, path, {}, encoders=encoders)


def topk_reference(x: torch.Tensor, encoder: Encoder) -> torch.Tensor:
    """The SAELens TopK formula written out: topk(relu((x - b_dec) @ W_enc + b_enc))."""
    pre = torch.relu((x - encoder.pre_bias) @ encoder.W_enc + encoder.b_enc)
    top = pre.topk(K, dim=-1)
    return torch.zeros_like(pre).scatter_(-1, top.indices, top.values)


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("corpus")
    for i in range(3):
        (folder / f"doc{i}.txt").write_text(" ".join(TEXTS[i:] + TEXTS[:i][: i + 1]))
    return folder


def corpus_for(subject, folder: Path) -> Corpus:
    return Corpus(CorpusConfig((str(folder),), ctx_len=16, min_len=4), subject.encode)


def brute_force(subject, folder: Path, source: Source, points: list[str]):
    """Per window (one per forward pass): its tokens and {point: activations [T, WIDTH]}."""
    out = []
    for w in corpus_for(subject, folder).scan():
        acts = subject.activations(torch.tensor([w.token_ids]), None, points)
        out.append(
            (
                tuple(w.token_ids),
                {p: topk_reference(acts[p][0], source.encoders[p]) for p in points},
            )
        )
    return out


def one_line(capsys) -> str:
    """The command's error: one `gloss:` line, no traceback (model loading may log too)."""
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("gloss: ")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_shared_dictionary_mining_matches_brute_force(minilm, corpus_dir, sqlite_store):
    source = shared_dictionary()
    reference = brute_force(minilm, corpus_dir, source, POINTS)
    assert any(len(t) < 16 for t, _ in reference), "the corpus should exercise padded windows"
    result = mine(sqlite_store, minilm, source, SPEC, corpus_for(minilm, corpus_dir), SMALL,
                  progress=False)  # fmt: skip
    assert result.features == WIDTH and result.windows == len(reference)
    assert sqlite_store.source(result.source_id).hook == SPEC
    per_point = {p: torch.cat([acts[p] for _, acts in reference]).numpy() for p in POINTS}
    best = np.maximum.reduce([per_point[p] for p in POINTS])  # [tokens, WIDTH]
    assert result.tokens == len(best)
    window_best = {t: torch.stack([a[p] for p in POINTS]).amax(0).numpy() for t, a in reference}
    infos = {f.index: f for f in sqlite_store.features(result.source_id)}
    for j in range(WIDTH):
        info, column = infos[j], best[:, j]
        assert info.max_act == pytest.approx(column.max(), abs=1e-4)
        assert info.mean_act == pytest.approx(column.mean(), abs=1e-4)
        assert info.density == pytest.approx((column > 0).mean(), abs=1e-3)
        assert list(info.layers) == POINTS
        for p in POINTS:  # the mean of the LAYER_TOP largest token activations at p
            expected = np.sort(per_point[p][:, j])[::-1][:LAYER_TOP].mean()
            assert info.layers[p] == pytest.approx(expected, abs=1e-4), (j, p)
        if column.max() <= 0:
            assert info.status == "dead" and set(info.layers.values()) == {0.0}
            continue
        assert j not in DEAD
        assert info.status == "mined" and sum(info.histogram["counts"]) == int((column > 0).sum())
        examples = sqlite_store.examples(info.id)
        tops = sorted((e.max_act for e in examples if e.kind == "top"), reverse=True)
        maxes = sorted((float(a[:, j].max()) for a in window_best.values()), reverse=True)
        np.testing.assert_allclose(tops, [m for m in maxes if m > 0][: len(tops)], atol=1e-4)
        n_top = SMALL.top_explain + SMALL.top_validation + SMALL.top_holdout
        assert len(tops) == min(n_top, sum(m > 0 for m in maxes))
        for e in examples:  # strips are the max over points, token by token
            np.testing.assert_allclose(
                e.acts, window_best[tuple(e.token_ids)][:, j].astype(np.float16), atol=2e-3
            )
    peaks = {max(POINTS, key=lambda p, f=f: f.layers[p]) for f in infos.values() if f.max_act}
    assert len(peaks) > 1, "random weights should peak at more than one point"
    assert sum(f.status == "mined" for f in infos.values()) >= WIDTH // 2


def test_the_layer_map_keeps_each_points_largest_token_activations():
    """Batches smaller than LAYER_TOP, padding, batches that beat every kept value and
    batches that beat only some."""
    g = torch.Generator().manual_seed(1)
    layer_map = LayerMap(2, 6, torch.device("cpu"))
    seen: dict[int, list[torch.Tensor]] = {0: [], 1: []}
    for batch in range(8):
        growth = 10.0**batch if batch % 3 == 0 else 1.0
        valid = torch.ones(3, 4, dtype=torch.bool)
        valid[2, 1 + batch % 3 :] = False
        for point in (0, 1):
            acts = torch.relu(torch.randn(3, 4, 6, generator=g)) * growth * (point + 1)
            layer_map.update(point, acts.movedim(-1, 0), valid)
            seen[point].append(acts[valid])
    for point in (0, 1):
        everything = torch.cat(seen[point])
        expected = everything.topk(LAYER_TOP, dim=0).values.mean(dim=0)
        torch.testing.assert_close(layer_map.means()[point], expected)


def test_a_shared_dictionary_at_one_of_its_points_has_no_layer_map(
    minilm, corpus_dir, sqlite_store
):
    source = shared_dictionary()
    point = POINTS[1]
    reference = brute_force(minilm, corpus_dir, source, [point])
    acts = torch.cat([a[point] for _, a in reference]).numpy()
    result = mine(sqlite_store, minilm, source, point, corpus_for(minilm, corpus_dir), SMALL,
                  range(2, 8), progress=False)  # fmt: skip
    for info in sqlite_store.features(result.source_id):
        assert info.layers is None
        assert info.max_act == pytest.approx(acts[:, info.index].max(), abs=1e-4)


def test_an_interrupted_shared_pass_resumes_with_the_same_layer_map(
    minilm, corpus_dir, sqlite_store, tmp_path, monkeypatch
):
    monkeypatch.setenv("GLOSS_CACHE", str(tmp_path / "cache"))
    config = MiningConfig(**{**SMALL.to_dict(), "checkpoint_every_s": 0})
    source = shared_dictionary()
    real, calls = minilm.activations, []

    def crashing(ids, *args, **kwargs):
        calls.append(len(ids))
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(ids, *args, **kwargs)

    monkeypatch.setattr(minilm, "activations", crashing)
    with pytest.raises(KeyboardInterrupt):
        mine(sqlite_store, minilm, source, SPEC, corpus_for(minilm, corpus_dir), config,
             range(10), progress=False)  # fmt: skip
    assert list((tmp_path / "cache" / "mining").glob("*.pt")), "a checkpoint was left"
    resumed = mine(sqlite_store, minilm, source, SPEC, corpus_for(minilm, corpus_dir), config,
                   range(10), progress=False)  # fmt: skip
    assert sum(calls[3:]) == resumed.windows - 2 * config.batch_size, "2 batches not redone"
    monkeypatch.setattr(minilm, "activations", real)
    with open_store(f"sqlite:///{tmp_path / 'fresh.db'}") as fresh:
        clean = mine(fresh, minilm, source, SPEC, corpus_for(minilm, corpus_dir), config,
                     range(10), progress=False)  # fmt: skip
        got = {f.index: (f.max_act, f.layers) for f in sqlite_store.features(resumed.source_id)}
        want = {f.index: (f.max_act, f.layers) for f in fresh.features(clean.source_id)}
    assert got == want and all(layers for _, layers in got.values())


def test_specs_a_source_cannot_mine_are_one_line_errors(minilm, corpus_dir, sqlite_store, capsys):
    corpus = corpus_for(minilm, corpus_dir)
    neurons = load_source("neurons", minilm.hook_width("layer.0-1.mlp"))
    with pytest.raises(InputError, match="names 2 points, but a neurons source reads one"):
        mine(sqlite_store, minilm, neurons, "layer.0-1.mlp", corpus, SMALL, progress=False)
    with pytest.raises(InputError, match="reads layer.0.resid, .* not layer.3.resid"):
        mine(sqlite_store, minilm, shared_dictionary(), "layer.0-3.resid", corpus, SMALL,
             progress=False)  # fmt: skip
    assert sqlite_store.sources() == [], "nothing is registered for a refused spec"
    database = f"sqlite:///{corpus_dir.parent / 'cli-errors.db'}"
    code = main(["--database", database, "mine", "--hook", "layer.0-1.mlp", "--corpus",
                 str(corpus_dir), "--ctx-len", "16"])  # fmt: skip
    assert code != 0 and one_line(capsys).startswith("gloss: hook 'layer.0-1.mlp' names 2")


def test_a_gloss_dictionary_folder_loads_and_mines_as_one_source(
    minilm, corpus_dir, tmp_path, capsys
):
    folder = tmp_path / "dictionary"
    built = shared_dictionary(folder)
    loaded = load_source(f"sae:{folder}", minilm.hook_width(SPEC))
    assert (loaded.kind, loaded.width, loaded.d_in) == ("sae", WIDTH, D_IN)
    assert sorted(loaded.hooks) == POINTS
    acts = minilm.activations(torch.tensor([minilm.encode(TEXTS[0])]), None, POINTS)
    for point in POINTS:
        torch.testing.assert_close(
            loaded.encode(acts[point], hook=point), built.encode(acts[point], hook=point)
        )
    database = f"sqlite:///{tmp_path / 'gloss.db'}"
    common = ["--database", database, "mine", "--source", f"sae:{folder}", "--corpus",
              str(corpus_dir), "--ctx-len", "16"]  # fmt: skip
    assert main([*common, "--hook", SPEC, "--features", "0:6", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["features"] == 6
    with open_store(database) as store:
        layers = [f.layers for f in store.features(store.source(summary["source"]).id)]
    assert all(list(m) == POINTS for m in layers)
    assert main([*common, "--hook", "layer.0-3.resid"]) != 0
    err = one_line(capsys)
    assert "reads layer.0.resid" in err and "not layer.3.resid" in err


# ---------------------------------------------------------------- queries, cards, the page

MAPS = {  # index -> (layer map, label, score); keys out of order on purpose
    0: ({"layer.2.resid": 0.1, "layer.0.resid": 0.9, "layer.1.resid": 0.2}, "word senses", 0.5),
    1: ({"layer.1.resid": 0.5, "layer.0.resid": 0.1, "layer.2.resid": 0.3}, "units", 0.4),
    2: ({"layer.0.resid": 0.3, "layer.1.resid": 0.2, "layer.2.resid": 1.4}, "repeats", None),
    3: ({"layer.0.resid": 0.5, "layer.1.resid": 0.1, "layer.2.resid": 0.0}, None, None),
    4: ({"layer.0.resid": 0.0, "layer.1.resid": 0.0, "layer.2.resid": 0.0}, None, None),
    5: ({"layer.0.resid": 1.2, "layer.1.resid": 0.4, "layer.2.resid": 0.1}, "left, right", 0.7),
}


def layered(store) -> tuple[str, dict[int, int], int]:
    """A shared source with the layer maps of MAPS; returns (its name, feature ids by index,
    the id of a feature of a one-point source)."""
    subject = store.get_or_create_subject("minilm", "/m", "rev", "bert")
    source = store.get_or_create_source(subject, SPEC, "sae", 8, "f" * 64)
    store.write_mined_features(
        source,
        [
            MinedFeature(i, max(m.values()), 0.1, 0.01, 100, None, [], m)
            for i, (m, _, _) in MAPS.items()
        ],
    )
    ids = {f.index: f.id for f in store.features(source)}
    for index, (_, label, score) in MAPS.items():
        if label is not None:
            eid = store.add_explanation(ids[index], label, author_kind="human", author_name="t")
            if score is not None:
                store.add_score(eid, "simulation", score)
    plain = store.get_or_create_source(subject, "layer.3.mlp", "neurons", 4, "n" * 64)
    store.write_mined_features(plain, [MinedFeature(0, 1.0, 0.1, 0.1, 10, None)])
    return store.source(source).name, ids, store.features(plain)[0].id


def test_gloss_layers_lists_features_by_the_point_they_peak_at(store, db_url, capsys):
    name, ids, _ = layered(store)
    assert main(["--database", db_url, "layers", name]) == 0
    out = capsys.readouterr().out
    headers = [line for line in out.splitlines() if line.startswith("layer.")]
    assert headers == [
        "layer.0.resid: 3 features peak here",
        "layer.1.resid: 1 feature peaks here",
        "layer.2.resid: 1 feature peaks here",
    ]
    block = out.split("layer.0.resid: ")[1].split("layer.1.resid: ")[0]
    assert block.index(f"{name}:5") < block.index(f"{name}:0") < block.index(f"{name}:3")
    assert "left, right" in block and "0.700" in block and "(no label yet)" in block
    assert f"{name}:4" not in out, "a feature that never fires peaks nowhere"

    assert main(["--database", db_url, "layers", name, "--top", "2", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["source"] == name and data["hook"] == SPEC
    assert [(p["point"], p["count"]) for p in data["points"]] == [
        ("layer.0.resid", 3), ("layer.1.resid", 1), ("layer.2.resid", 1),
    ]  # fmt: skip
    first = data["points"][0]["features"]
    assert [(f["index"], f["peak"], f["label"], f["score"]) for f in first] == [
        (5, 1.2, "left, right", 0.7), (0, 0.9, "word senses", 0.5),
    ]  # fmt: skip
    assert first[0]["feature_id"] == ids[5] and list(first[0]["layers"]) == POINTS
    assert data["points"][2]["features"][0]["label"] == "repeats"


def test_gloss_layers_bad_sources_are_one_line_errors(store, db_url, capsys):
    name, _, plain_id = layered(store)
    plain = store.feature(plain_id).source
    empty = store.get_or_create_source(
        store.get_or_create_subject("minilm", "/m", "rev", "bert"), "layer.0-5.resid", "sae", 4, "e"
    )
    for source, message in [
        ("no/such/source", "no feature source 'no/such/source'"),
        (plain, "reads one hook point (layer.3.mlp)"),
        (store.source(empty).name, "is mined yet: run gloss mine"),
    ]:
        assert main(["--database", db_url, "layers", source]) != 0
        assert message in one_line(capsys)
    with pytest.raises(NotFoundError):
        store.layer_peaks("no/such/source")
    with pytest.raises(InputError, match="--top must be at least 1"):
        store.layer_peaks(name, top=0)


def test_layer_maps_come_back_shallowest_point_first(store):
    subject = store.get_or_create_subject("big", "/b", "rev", "gpt2")
    source = store.get_or_create_source(subject, "layer.0-11.resid", "sae", 2, "b" * 64)
    deep = {f"layer.{i}.resid": float(i) for i in (10, 2, 11, 0, 1)}
    store.write_mined_features(source, [MinedFeature(0, 11.0, 0.1, 0.1, 10, None, [], deep)])
    (info,) = store.features(source)
    assert list(info.layers) == [f"layer.{i}.resid" for i in (0, 1, 2, 10, 11)]
    assert info.layers == deep


def test_gloss_show_draws_the_layer_map(sqlite_store, sqlite_url, capsys):
    name, _, plain_id = layered(sqlite_store)
    assert main(["--database", sqlite_url, "show", f"{name}:0", "--color", "never"]) == 0
    lines = capsys.readouterr().out.splitlines()
    start = lines.index("layer map (mean of the top activations at each point):")
    bars = [line.split() for line in lines[start + 1 : start + 4]]
    assert [b[0] for b in bars] == POINTS
    assert [len(b[1]) if b[1].startswith("█") else 0 for b in bars] == [30, 7, 3]
    assert bars[0][-2:] == ["0.900", "peak"] and bars[1][-1] == "0.200"
    assert main(["--database", sqlite_url, "show", f"{name}:0", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["feature"]["layers"]["layer.0.resid"] == 0.9
    assert main(["--database", sqlite_url, "show", str(plain_id), "--color", "never"]) == 0
    assert "layer map" not in capsys.readouterr().out


def test_the_feature_page_shows_the_layer_map(store):
    name, ids, plain_id = layered(store)
    with TestClient(create_app(store, reviewer="ana")) as client:
        page = client.get(f"/features/{ids[1]}")
        assert page.status_code == 200
        table = page.text.split('id="layer-map"')[1].split("</table>")[0]
        assert [table.index(f"<code>{p}</code>") for p in POINTS] == sorted(
            table.index(f"<code>{p}</code>") for p in POINTS
        )
        assert 'width="20.00"' in table and 'width="100.00"' in table and 'width="60.00"' in table
        assert "0.500" in table and table.count("peak") == 2  # the peak row's class and mark
        assert "<script" not in table
        assert 'id="layer-map"' not in client.get(f"/features/{plain_id}").text


def test_fires_reads_a_shared_dictionary_at_every_point(minilm, sqlite_store, monkeypatch):
    source = shared_dictionary()
    subject_id = sqlite_store.get_or_create_subject(**minilm.identity())
    source_id = sqlite_store.get_or_create_source(
        subject_id, SPEC, "sae", WIDTH, source.params_hash, path=source.path
    )
    scale = {i: 1.0 + i / 10 for i in range(WIDTH)}
    sqlite_store.write_mined_features(
        source_id, [MinedFeature(i, scale[i], 0.1, 0.1, 100, None) for i in range(WIDTH)]
    )
    labeled = list(range(2, WIDTH, 3))
    ids = {f.index: f.id for f in sqlite_store.features(source_id)}
    for i in labeled:
        sqlite_store.add_explanation(ids[i], f"latent {i}", author_kind="human", author_name="t")
    monkeypatch.setattr(source_module, "load_source", lambda spec, width: source)
    text = TEXTS[2]
    result = fires(sqlite_store, text, top=3)
    acts = minilm.activations(torch.tensor([minilm.encode(text)]), None, POINTS)
    per_point = torch.stack([topk_reference(acts[p][0], source.encoders[p]) for p in POINTS])
    best, where = per_point.max(dim=0)
    assert [t.token for t in result] == minilm.token_strings(minilm.encode(text))
    for position, token in enumerate(result):
        expected = sorted(((float(best[position, i]) / scale[i], i) for i in labeled), reverse=True)
        expected = [i for value, i in expected if value > 0][:3]
        assert [int(f.ref.rsplit(":", 1)[1]) for f in token.features] == expected, token.token
        for f in token.features:
            index = int(f.ref.rsplit(":", 1)[1])
            assert f.point == POINTS[int(where[position, index])]
            assert f.activation == pytest.approx(float(best[position, index]), abs=1e-4)


@pytest.mark.empty_database
def test_migration_0006_adds_and_drops_the_layers_column(db_url):
    def columns() -> set[str]:
        engine = create_engine(db_url)
        with engine.connect() as conn:
            names = {c["name"] for c in inspect_db(conn).get_columns("features")}
        engine.dispose()
        return names

    db.upgrade(db_url)
    with open_store(db_url) as store:
        layered(store)
    assert "layers" in columns()
    db.downgrade(db_url, "0005")
    assert "layers" not in columns() and "histogram" in columns()
    db.upgrade(db_url)
    with open_store(db_url) as store:
        features = store.features()
    assert len(features) == len(MAPS) + 1 and all(f.layers is None for f in features)
    assert "layers" in columns()
