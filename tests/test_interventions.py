"""Interventions and effects on the bundled Gemma 3 270M, with an SAE the test writes.

The SAE (SAELens layout) reads the residual stream after the last block. Its latent 0 is
planted: its decoder row is the unembedding row of a chosen token, taken back through
the final norm's weight, so steering it must raise that token; it fires on most tokens.
Latent 1 never fires.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from gloss.pipeline.corpus import Corpus
from gloss.pipeline.effects import compute_effects, measure, pending, target_of
from gloss.pipeline.interventions import (
    Edit,
    compare,
    directions,
    edit_for,
    intervened,
    logprobs,
    vocab_projection,
)
from gloss.pipeline.mining import mine
from gloss.pipeline.settings import CorpusConfig, EffectsConfig, MiningConfig
from gloss.pipeline.sources import load_source
from gloss.pipeline.terminal import format_card, intervention_lines
from gloss.store import InputError, open_store
from tests.test_sources import write_sparsify

pytestmark = pytest.mark.slow

HOOK = "layer.17.resid"
D_SAE = 12
WORD = " Paris"
SMALL = MiningConfig(
    top_explain=4, top_holdout=1, quantiles=2, quantile_explain=1, quantile_holdout=1,
    quantile_pool=8, random_explain=2, random_holdout=1, batch_size=8,
    top_validation=1, quantile_validation=1, random_validation=1, silent_validation=1,
    silent_explain=1, silent_holdout=1,
)  # fmt: skip


@pytest.fixture(scope="module")
def gemma():
    from gloss.pipeline.subjects import load_subject

    return load_subject("gemma-3-270m")


@pytest.fixture(scope="module")
def token(gemma) -> int:
    return gemma.encode(WORD)[0]


@pytest.fixture(scope="module")
def sae_folder(gemma, token, tmp_path_factory) -> Path:
    d_in = gemma.hidden_size
    g = torch.Generator().manual_seed(0)
    W_dec = torch.randn(D_SAE, d_in, generator=g)
    with torch.no_grad():
        planted = gemma.unembedding()[token].float() / (1 + gemma.final_norm().weight.float())
    W_dec[0] = planted
    W_dec = W_dec / W_dec.norm(dim=-1, keepdim=True)
    W_enc = W_dec.T.clone() / 100
    W_enc[:, 0] = W_dec[11] / 100  # it reads another direction than it writes, and fires
    b_enc = torch.zeros(D_SAE)
    b_enc[1] = -1e6  # latent 1 never fires
    folder = tmp_path_factory.mktemp("sae")
    (folder / "cfg.json").write_text(
        json.dumps({"d_in": d_in, "d_sae": D_SAE, "architecture": "standard"})
    )
    weights = {"W_enc": W_enc.contiguous(), "b_enc": b_enc, "W_dec": W_dec.contiguous(),
               "b_dec": torch.zeros(d_in)}  # fmt: skip
    save_file(weights, str(folder / "sae_weights.safetensors"))
    return folder


@pytest.fixture(scope="module")
def sae(gemma, sae_folder):
    return load_source(f"sae:{sae_folder}", gemma.hook_width(HOOK))


def _window(gemma, text: str) -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.tensor([gemma.encode(text)])
    return ids, torch.ones_like(ids, dtype=torch.bool)


def test_an_edit_that_changes_nothing_is_exact(gemma, sae):
    ids, valid = _window(gemma, "The weather in the mountains was cold and clear.")
    ids, valid = ids.repeat(3, 1), valid.repeat(3, 1)
    clean = logprobs(gemma, ids, valid)
    same = [Edit(0, 1.0, 0.0), Edit.of(1, "zero"), None]  # keep as is; ablate a silent one
    edited = logprobs(gemma, ids, valid, sae, [HOOK], same)
    assert torch.equal(edited, clean)
    moved = logprobs(gemma, ids, valid, sae, [HOOK], [Edit.of(0, "zero"), None, None])
    assert not torch.equal(moved[0], clean[0]) and torch.equal(moved[1:], clean[1:])


def test_ablation_subtracts_only_the_feature_and_keeps_the_sae_error(gemma, sae):
    """x' - x = -f * d exactly where it fires: the reconstruction error stays in x."""
    ids, valid = _window(gemma, "Apples and pears were sold at the market in town.")
    seen: dict[str, torch.Tensor] = {}

    def keep(name):
        def hook(_m, _a, out):
            seen[name] = (out[0] if isinstance(out, tuple) else out).detach().clone()

        return hook

    block = gemma.blocks[17]
    handle = block.register_forward_hook(keep("clean"))
    logprobs(gemma, ids, valid)
    handle.remove()
    with intervened(gemma, sae, [HOOK], [Edit.of(0, "zero")], slice(1, None), valid):
        handle = block.register_forward_hook(keep("edited"))  # after the edit's own hook
        with torch.inference_mode():
            gemma.model(input_ids=torch.cat([torch.tensor([[2]]), ids], 1), use_cache=False)
        handle.remove()
    x = seen["clean"][:, 1:]
    f = sae.encode(x.float(), torch.tensor([0]))[..., 0]
    assert (f > 0).any()
    expected = x - f[..., None] * directions(sae, HOOK, torch.tensor([0]))[0]
    torch.testing.assert_close(seen["edited"][:, 1:], expected, rtol=1e-5, atol=1e-4)
    assert torch.equal(seen["edited"][:, :1], seen["clean"][:, :1])  # <bos> is left alone


def test_steering_the_planted_feature_raises_its_token(gemma, sae, token):
    vocab = vocab_projection(gemma, sae, HOOK, 0, top=10)
    assert vocab["up"][0][0] == gemma.token_strings([token])[0]
    prompt = "I went to see"
    ids = torch.tensor([gemma.encode(prompt)])
    scale = float(gemma.activations(ids, None, [HOOK])[HOOK].norm(dim=-1).max())
    result = compare(gemma, sae, HOOK, Edit.of(0, "steer", amount=2 * scale), prompt, tokens=3)
    assert result["promoted"][0][0] == WORD
    assert result["edited"]["next"][0][0] == WORD and result["kl"] > 0
    assert result["clean"]["continuation"] != result["edited"]["continuation"]
    assert WORD in result["edited"]["continuation"]
    text = intervention_lines({**result, "feature": "x:0", "edit": "steered", "label": None})
    assert "continuation" in text and "pushed up:   ' Paris'" in text


def test_effects_are_measured_once_stored_and_shown(gemma, sae, token, tmp_path):
    from gloss.pipeline.corpus import default_corpus_files

    corpus_file = tmp_path / "corpus.txt"  # a play's first 300 lines: about 60 windows
    lines = default_corpus_files()[0].read_text(encoding="utf-8").splitlines()[:300]
    corpus_file.write_text("\n".join(lines), encoding="utf-8")
    corpus = Corpus(CorpusConfig((str(corpus_file),), ctx_len=24, min_len=4), gemma.encode)
    store = open_store(f"sqlite:///{tmp_path / 'e.db'}")
    result = mine(store, gemma, sae, HOOK, corpus, SMALL, progress=False)
    info = store.source(result.source_id)
    mined = [f.id for f in store.features(info.id, status="mined")]
    statuses = store.feature_statuses(info.id)
    assert statuses[0] == "mined" and statuses[1] == "dead"
    config = EffectsConfig(windows=3, random=2, batch=6, top=5)
    counts = compute_effects(store, gemma, sae, info, config)
    assert counts == {"measured": len(mined), "skipped": 0}
    assert pending(store, info.id, gemma.name) == []
    again = compute_effects(store, gemma, sae, info, config)
    assert again == {"measured": 0, "skipped": 0}

    planted = store.feature_card(f"{info.name}:0")
    scores = {s.method: s for s in planted.feature_scores}
    assert set(scores) == {"ablation", "output"}
    ablation, output = scores["ablation"], scores["output"]
    assert ablation.simulator_model == gemma.name and ablation.details["tokens"] > 0
    assert ablation.value is not None and ablation.details["random"] is not None
    assert output.details["vocab_up"][0][0] == WORD
    assert output.details["promoted"][0][0] == WORD and output.value > 0
    card = format_card(planted, color=False)
    assert "without it (zeroed):" in card and "pushes up:" in card and "' Paris'" in card
    rows = list(store.export(source=info.name))
    assert rows[0]["effects"]["output"]["vocab_up"][0][0] == WORD
    assert set(rows[0]["feature_scores"]) == {"ablation", "output"}

    # Measured the same way in one call or feature by feature (batches do not leak).
    targets = [target_of(store, fid, config) for fid in mined[:2]]
    together = measure(gemma, sae, HOOK, targets, config)
    alone = measure(gemma, sae, HOOK, targets[1:], config)
    assert together[1].ablation == pytest.approx(alone[0].ablation, abs=1e-4)
    store.close()


def test_bad_inputs_give_one_line_errors(gemma, sae, minilm, tmp_path):
    mean = Edit.of(3, "mean", mean=0.5)
    assert (mean.keep, mean.add) == (0.0, 0.5)
    with pytest.raises(InputError, match="unknown intervention"):
        Edit.of(3, "boost")
    ids, valid = _window(minilm, "a text")
    with pytest.raises(InputError, match="is an encoder") as error:
        logprobs(minilm, ids, valid)
    assert "\n" not in str(error.value)

    store = open_store(f"sqlite:///{tmp_path / 'b.db'}")
    subject_id = store.get_or_create_subject(**gemma.identity())
    source_id = store.get_or_create_source(subject_id, HOOK, sae.kind, sae.width, sae.params_hash)
    info = store.source(source_id)
    with pytest.raises(InputError, match="belongs to subject gemma-3-270m") as error:
        compute_effects(store, minilm, sae, info, EffectsConfig())
    assert "\n" not in str(error.value)
    other = store.get_or_create_subject(**minilm.identity())
    neurons = load_source("neurons", minilm.hook_width("layer.1.mlp"))
    mini = store.source(
        store.get_or_create_source(other, "layer.1.mlp", "neurons", neurons.width, "n" * 8)
    )
    with pytest.raises(InputError, match="not a causal LM"):
        compute_effects(store, minilm, neurons, mini, EffectsConfig())
    store.close()

    class Silent:
        index, max_act, mean_act = 4, 0.0, 0.0

    with pytest.raises(InputError, match="peak activation is 0"):
        edit_for(Silent(), "steer", 4.0)  # type: ignore[arg-type]
    decoderless = load_source(f"sae:{_without_decoder(Path(sae.path), tmp_path)}", 640)
    with pytest.raises(InputError, match="no decoder"):
        directions(decoderless, HOOK, torch.tensor([0]))
    transcoder = load_source(f"sparsify:{_as_transcoder(Path(sae.path), tmp_path)}", 640)
    with pytest.raises(InputError, match="is a transcoder") as error:
        directions(transcoder, HOOK, torch.tensor([0]))
    assert "\n" not in str(error.value)


def _as_transcoder(folder: Path, tmp_path: Path) -> Path:
    """The same weights as a sparsify transcoder: its decoder writes the MLP's output."""
    from safetensors.torch import load_file

    weights = load_file(str(folder / "sae_weights.safetensors"))
    out = tmp_path / "tc" / "layers.17.mlp"
    return write_sparsify(out, weights, d_in=640, num_latents=D_SAE, k=4, transcode=True)


def _without_decoder(folder: Path, tmp_path: Path) -> Path:
    from safetensors.torch import load_file

    out = tmp_path / "nodec"
    out.mkdir()
    (out / "cfg.json").write_text((folder / "cfg.json").read_text())
    weights = load_file(str(folder / "sae_weights.safetensors"))
    del weights["W_dec"]
    save_file(weights, str(out / "sae_weights.safetensors"))
    return out


def test_a_run_measures_effects_before_an_output_aware_explainer_reads_them(
    gemma, sae_folder, tmp_path, capsys
):
    """gloss run on Gemma: mine, effects, explain with style output, score; the second
    run measures nothing again. Then gloss show, effects and intervene from the CLI."""
    from gloss.pipeline.cli import main
    from gloss.pipeline.corpus import default_corpus_files
    from tests.scripted_llm import ScriptedLLM

    lines = default_corpus_files()[0].read_text(encoding="utf-8").splitlines()[:300]
    (tmp_path / "corpus.txt").write_text("\n".join(lines), encoding="utf-8")
    database = f"sqlite:///{tmp_path / 'run.db'}"
    with ScriptedLLM() as llm:
        endpoint = f'model = "scripted"\nbase_url = "{llm.base_url}"\nmax_attempts = 2\n'
        (tmp_path / "gloss.toml").write_text(
            f'database = "{database}"\n'
            f'[subject]\nmodel = "gemma-3-270m"\nhook = "{HOOK}"\nsource = "sae:{sae_folder}"\n'
            'features = "0:3"\n'
            f'[corpus]\npaths = ["{tmp_path / "corpus.txt"}"]\nctx_len = 24\n'
            "[mining]\ntop_explain = 4\ntop_holdout = 2\nquantiles = 2\nrandom_holdout = 2\n"
            "random_explain = 2\nbatch_size = 8\n"
            "[effects]\nwindows = 3\nrandom = 2\ntop = 5\n"
            '[explainer]\nstyle = "output"\nmax_examples = 4\n'
            '[simulator]\nmethod = "logprobs"\n'
            f"[llm.explainer]\n{endpoint}[llm.simulator]\n{endpoint}",
            encoding="utf-8",
        )
        run = ["run", "--config", str(tmp_path / "gloss.toml")]
        assert main(run) == 0
        asked = [json.dumps(r).split("Label of feature 1")[-1] for r in llm.requests]
        # the planted feature's prompt shows the token it pushes up (past the worked example)
        assert any("it promotes: ' Paris'" in text for text in asked)
        assert main(run) == 0
    with open_store(database) as store:
        workers = [r for r in reversed(store.runs()) if r.kind == "run"]
        assert workers[0].counts["effects"]["measured"] == 2  # latent 1 is dead
        assert workers[1].counts.get("effects", {}).get("measured", 0) == 0
        info = store.sources()[0]
        card = store.feature_card(f"{info.name}:0")
        assert card.current is not None and card.current.prompt_name == "explain-output"
    capsys.readouterr()

    assert main(["--database", database, "show", f"{info.name}:0", "--color", "never"]) == 0
    shown = capsys.readouterr().out
    assert "without it (zeroed):" in shown and "pushes up:" in shown and "VocabProj" in shown
    assert main(["--database", database, "effects", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["measured"] == 0
    prompt = ["--text", "I went to see", "--tokens", "2"]
    assert main(["--database", database, "intervene", f"{info.name}:0", *prompt, "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["edit"] == "ablated to 0" and len(result["clean"]["next"]) == 10
    assert main(["--database", database, "intervene", f"{info.name}:0", *prompt,
                 "--steer", "4"]) == 0  # fmt: skip
    side_by_side = capsys.readouterr().out
    assert "clean" in side_by_side and "edited" in side_by_side and "pushed up:" in side_by_side
    code = main(["--database", database, "intervene", f"{info.name}:0", *prompt,
                 "--steer", "4", "--mean"])  # fmt: skip
    error = capsys.readouterr().err
    assert code != 0 and error.count("\n") == 1 and "--mean" in error


def test_neurons_are_edited_in_place_and_read_through_the_mlp(gemma):
    """An MLP neuron's direction is the unit itself: an edit that keeps it is exact, one
    that zeroes it changes the output, and its VocabProj reads the down projection and
    Gemma's post-MLP norm."""
    neurons = load_source("neurons", gemma.hook_width("layer.3.mlp"))
    ids, valid = _window(gemma, "The cat sat on the mat.")
    acts = gemma.activations(ids, None, ["layer.3.mlp"])["layer.3.mlp"][0]
    loud = int(acts.abs().amax(0).argmax())
    clean = logprobs(gemma, ids, valid)
    same = logprobs(gemma, ids, valid, neurons, ["layer.3.mlp"], [Edit(loud, 1.0, 0.0)])
    assert torch.equal(same, clean)
    ablated = logprobs(gemma, ids, valid, neurons, ["layer.3.mlp"], [Edit.of(loud, "zero")])
    assert not torch.equal(ablated, clean)
    vocab = vocab_projection(gemma, neurons, "layer.3.mlp", loud, top=5)
    assert len(vocab["up"]) == 5 and vocab["up"][0][1] > vocab["down"][0][1]
    d = torch.zeros(1, gemma.mlp_size)
    d[0, loud] = 1.0
    with torch.no_grad():
        mlp = gemma.blocks[3]
        expected = mlp.post_feedforward_layernorm(mlp.mlp.down_proj(d))
    torch.testing.assert_close(gemma.to_residual("layer.3.mlp", d), expected)
