"""`gloss fires` with the real MiniLM subject: per-token labeled features, checked against the model."""

from __future__ import annotations

import pytest

from gloss.pipeline.cli import main  # noqa: E402
from gloss.pipeline.fires import fires  # noqa: E402
from gloss.store import MinedFeature, ModelError, open_store  # noqa: E402

HOOK = "layer.1.mlp"
TEXT = "She ate an apple in Paris."


@pytest.fixture(scope="module")
def minilm():
    from gloss.pipeline.subjects import load_subject

    return load_subject("minilm")


def register(store, subject, labeled: dict[int, str], *, revision: str | None = None):
    from gloss.pipeline.sources import load_source

    identity = subject.identity()
    if revision:
        identity["revision"] = revision
    subject_id = store.get_or_create_subject(**identity)
    width = subject.hook_width(HOOK)
    source = load_source("neurons", width)
    source_id = store.get_or_create_source(subject_id, HOOK, "neurons", width, source.params_hash)
    store.write_mined_features(
        source_id,
        [MinedFeature(i, 2.0 + i / 1000, 0.1, 0.01, 1000, None) for i in range(64)],
    )
    ids = {f.index: f.id for f in store.features(source_id)}
    for index, text in labeled.items():
        store.add_explanation(ids[index], text, author_kind="human", author_name="t")
    return store.source(source_id).name


def test_fires_lists_the_strongest_labeled_features_per_token(sqlite_url, minilm):
    labeled = {i: f"neuron {i}" for i in range(0, 64, 3)}
    with open_store(sqlite_url) as store:
        name = register(store, minilm, labeled)
        result = fires(store, TEXT, source=name, top=3)
    run = minilm.run_text(TEXT, HOOK)
    assert [t.token for t in result] == run.tokens
    for position, token in enumerate(result):
        expected = sorted(
            ((float(run.acts[position, i]) / (2.0 + i / 1000), i) for i in labeled),
            reverse=True,
        )
        expected = [i for value, i in expected if value > 0][:3]
        got = [int(f.ref.rsplit(":", 1)[1]) for f in token.features]
        assert got == expected, token.token
        for f in token.features:
            assert f.label == labeled[int(f.ref.rsplit(":", 1)[1])]
            assert f.activation == pytest.approx(
                float(run.acts[position, int(f.ref.rsplit(":", 1)[1])])
            )


def test_fires_refuses_another_model_revision(sqlite_url, minilm, capsys):
    with open_store(sqlite_url) as store:
        name = register(store, minilm, {0: "zero"}, revision="sha256:older")
        with pytest.raises(ModelError, match="revision"):
            fires(store, TEXT, source=name)
    assert main(["--database", sqlite_url, "fires", TEXT]) == ModelError.exit_code
    assert "revision" in capsys.readouterr().err
