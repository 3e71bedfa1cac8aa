"""gloss learn: a TopK dictionary trained on a small real corpus through MiniLM.

Determinism under a seed, FVU falling with training, a killed training resuming to the
uninterrupted result, the saved folder reading back through `sae:` with the trained
module's encodings (and through SAELens 6.x when installed), the CLI end to end, and
one-line errors for bad input.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from gloss.pipeline.cli import main
from gloss.pipeline.corpus import Corpus, CorpusConfig
from gloss.pipeline.learn import (
    LearnConfig,
    TopKSAE,
    Trained,
    evaluate,
    grad_weight,
    manifest_of,
    save_dictionary,
    train,
)
from gloss.pipeline.sources import load_source
from gloss.pipeline.subjects import hook_spec
from gloss.store import open_store
from tests.test_mining import SENTENCES

SPEC = "layer.0-1.resid"
TINY = LearnConfig(
    width=48, k=4, train_tokens=1200, holdout_tokens=80, batch_size=64,
    lr=0.01, aux_k=8, dead_after_tokens=300, buffer_tokens=320, checkpoint_every_s=0,
)  # fmt: skip


def write_corpus(folder: Path, docs: int = 8) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for d in range(docs):
        order = [SENTENCES[(d * 3 + i) % len(SENTENCES)] for i in range(4 + d % 3)]
        (folder / f"doc{d}.txt").write_text(" ".join(order))
    return folder


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory) -> Path:
    return write_corpus(tmp_path_factory.mktemp("corpus"))


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("GLOSS_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def corpus_of(subject, folder: Path) -> Corpus:
    return Corpus(CorpusConfig((str(folder),), ctx_len=16, min_len=4), subject.encode)


def weights(trained: Trained) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in trained.model.state_dict().items()}


def raw_acts(subject, hooks: list[str], text: str) -> dict[str, torch.Tensor]:
    ids = torch.tensor([subject.encode(text)])
    return {h: a[0] for h, a in subject.activations(ids, None, hooks).items()}


def test_same_seed_same_dictionary_and_fvu_falls(minilm, corpus_dir):
    first = train(minilm, SPEC, corpus_of(minilm, corpus_dir), TINY, progress=False)
    again = train(minilm, SPEC, corpus_of(minilm, corpus_dir), TINY, progress=False)
    other = train(
        minilm, SPEC, corpus_of(minilm, corpus_dir), replace(TINY, seed=1), progress=False
    )
    a, b, c = weights(first), weights(again), weights(other)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["W_enc"], c["W_enc"])
    assert first.tokens >= TINY.train_tokens and first.steps == again.steps > 20
    assert first.hooks == ["layer.0.resid", "layer.1.resid"]
    # Each point is scaled so its mean norm is sqrt(d_in), measured on the first block.
    acts = raw_acts(minilm, first.hooks, SENTENCES[0])
    for h, x in acts.items():
        assert 0.5 < float((x * first.scales[h]).norm(dim=1).mean()) / math.sqrt(384) < 2

    short = train(minilm, SPEC, corpus_of(minilm, corpus_dir), replace(TINY, train_tokens=60),
                  progress=False)  # fmt: skip
    ctx = corpus_of(minilm, corpus_dir).config.ctx_len
    q_short, q_long = evaluate(minilm, short, ctx), evaluate(minilm, first, ctx)
    assert q_long["fvu"] < 0.7 * q_short["fvu"], (q_short["fvu"], q_long["fvu"])
    early, late = first.history[:5], first.history[-5:]
    assert sum(late) < 0.7 * sum(early)
    assert set(q_long["per_hook"]) == set(first.hooks)
    assert q_long["l0"] <= TINY.k and 0 <= q_long["dead_share"] < 1
    assert q_long["lm_loss"] is None  # MiniLM is no causal LM
    assert q_long["holdout_tokens"] == sum(len(w.token_ids) for w in first.holdout) > 0
    held = {(w.doc_id, w.offset) for w in first.holdout}
    trained_on = [w for w in corpus_of(minilm, corpus_dir).scan() if (w.doc_id, w.offset) in held]
    assert len(trained_on) == len(first.holdout)  # held-out windows are corpus windows


def test_interrupted_training_resumes_to_the_same_weights(minilm, corpus_dir, tmp_path):
    whole = train(minilm, SPEC, corpus_of(minilm, corpus_dir), TINY, progress=False)
    checkpoint = tmp_path / "ckpt.pt"

    def stop(tokens: int) -> None:
        if tokens >= 600:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(minilm, SPEC, corpus_of(minilm, corpus_dir), TINY, checkpoint=checkpoint,
              progress=False, on_block=stop)  # fmt: skip
    assert checkpoint.exists()
    resumed = train(minilm, SPEC, corpus_of(minilm, corpus_dir), TINY, checkpoint=checkpoint,
                    progress=False)  # fmt: skip
    assert resumed.resumed_from is not None and 600 <= resumed.resumed_from < TINY.train_tokens
    a, b = weights(whole), weights(resumed)
    for name in a:
        assert torch.allclose(a[name], b[name], atol=1e-6), name
    assert resumed.steps == whole.steps and resumed.history == pytest.approx(whole.history)


def test_saved_folder_encodes_as_the_trained_module(minilm, corpus_dir, tmp_path):
    corpus = corpus_of(minilm, corpus_dir).scan()
    text = " ".join(SENTENCES[:3])
    for spec in (SPEC, "layer.1.resid"):
        trained = train(minilm, spec, corpus, replace(TINY, train_tokens=400),
                        progress=False)  # fmt: skip
        quality = evaluate(minilm, trained, corpus.config.ctx_len)
        manifest = manifest_of(minilm, corpus, TINY, trained, quality, "test")
        folder = tmp_path / spec
        save_dictionary(folder, trained, manifest)
        source = load_source(f"sae:{folder}", 384)
        assert source.kind == "sae" and source.width == TINY.width and source.d_in == 384
        assert source.hooks == tuple(trained.hooks)
        assert source.config["quality"]["fvu"] == pytest.approx(quality["fvu"])
        assert load_source(str(folder), 384).params_hash == source.params_hash
        for h, x in raw_acts(minilm, trained.hooks, text).items():
            ours = source.encode(x, hook=h)
            module = trained.model.encode_dense(x * trained.scales[h])
            assert torch.allclose(ours, module, atol=1e-5), h
            assert (ours > 0).sum(dim=1).max() <= TINY.k
            point = load_source(f"sae:{folder / h}", 384)  # each point is a SAELens folder
            assert torch.allclose(point.encode(x), module, atol=1e-5)
            # The folded decoder reconstructs raw activations.
            from safetensors.torch import load_file

            w = load_file(str(folder / h / "sae_weights.safetensors"))
            raw_hat = ours @ w["W_dec"] + w["b_dec"]
            scaled_hat = trained.model.decode(*trained.model.encode(x * trained.scales[h]))
            assert torch.allclose(raw_hat * trained.scales[h], scaled_hat, atol=1e-4)


def test_sae_lens_loads_the_point_folders(minilm, corpus_dir, tmp_path):
    sae_lens = pytest.importorskip("sae_lens")
    corpus = corpus_of(minilm, corpus_dir).scan()
    trained = train(minilm, SPEC, corpus, replace(TINY, train_tokens=300), progress=False)
    manifest = manifest_of(minilm, corpus, TINY, trained, {}, "test")
    save_dictionary(tmp_path / "d", trained, manifest)
    for h, x in raw_acts(minilm, trained.hooks, SENTENCES[4]).items():
        sae = sae_lens.SAE.load_from_disk(str(tmp_path / "d" / h))
        theirs = sae.encode(x)
        assert torch.allclose(theirs, trained.model.encode_dense(x * trained.scales[h]), atol=1e-5)
        scaled_hat = trained.model.decode(*trained.model.encode(x * trained.scales[h]))
        assert torch.allclose(sae.decode(theirs) * trained.scales[h], scaled_hat, atol=1e-4)


@pytest.mark.parametrize("n_dead", [0, 5, 20])
def test_sparse_backward_equals_dense_autograd(n_dead):
    """The step's hand-written sparse gradients (and the aux loss) against plain autograd."""
    torch.manual_seed(0)
    x = torch.randn(32, 16)
    dead = torch.arange(64) < n_dead
    ours = TopKSAE(16, 64, 4, seed=3)
    loss, _, _ = ours.loss(x, dead, n_dead, aux_k=8)
    loss.backward()
    ref = TopKSAE(16, 64, 4, seed=3)
    pre = torch.relu((x - ref.b_dec) @ ref.W_enc.T + ref.b_enc)
    top = pre.topk(4, dim=-1)
    x_hat = torch.zeros_like(pre).scatter(1, top.indices, top.values) @ ref.W_dec + ref.b_dec
    total = (x - x.mean(dim=0)).pow(2).sum()
    expected = (x_hat - x).pow(2).sum() / total
    if n_dead:
        taken = min(8, n_dead)
        aux = pre.masked_fill(~dead, -1.0).topk(taken, dim=-1).indices
        guess = torch.zeros_like(pre).scatter(1, aux, pre.gather(1, aux)) @ ref.W_dec
        expected = expected + (guess - (x - x_hat).detach()).pow(2).sum() / total * taken / 8 / 32
    expected.backward()
    assert float(loss.detach()) == pytest.approx(float(expected.detach()), rel=1e-6)
    for name, param in ref.named_parameters():
        assert torch.allclose(param.grad, dict(ours.named_parameters())[name].grad, atol=1e-6)
    # The GPU path (a dense product) gives the same weight gradient as the CPU's sparse one.
    grad, indices = torch.randn(32, 4), top.indices
    assert torch.allclose(grad_weight(indices, grad, x, 64, dense=True),
                          grad_weight(indices, grad, x, 64, dense=False), atol=1e-5)  # fmt: skip


def test_hook_spec_is_the_shortest_name():
    assert hook_spec(["layer.0.resid", "layer.1.resid", "layer.2.resid"]) == "layer.0-2.resid"
    assert hook_spec(["layer.3.mlp"]) == "layer.3.mlp"
    assert hook_spec(["layer.0.resid", "layer.2.resid"]) == "layer.0.resid,layer.2.resid"


# ---------------------------------------------------------------- the command


def write_config(folder: Path, corpus: Path, **learn) -> Path:
    settings = {**{k: v for k, v in TINY.to_dict().items() if v is not None}, **learn}
    lines = ["[subject]", 'model = "minilm"', f'hook = "{SPEC}"', "[corpus]", f"paths = [{json.dumps(str(corpus))}]",
             "ctx_len = 16", "min_len = 4", "[learn]"]  # fmt: skip
    lines += [f"{k} = {json.dumps(v)}" for k, v in settings.items()]
    path = folder / "gloss.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def gloss(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def one_line_error(err: str) -> str:
    """The `gloss: ...` line, checked to be the only one and the last (model loading may
    draw a progress bar before it)."""
    lines = err.strip().splitlines()
    assert [line for line in lines if line.startswith("gloss: ")] == lines[-1:], err
    assert "Traceback" not in err
    return lines[-1]


def test_gloss_learn_registers_the_source_and_reuses_it(corpus_dir, tmp_path, capsys, cache):
    db = f"sqlite:///{tmp_path / 'gloss.db'}"
    config = write_config(tmp_path, corpus_dir, train_tokens=300)
    code, out, err = gloss(capsys, "--db", db, "learn", "--config", str(config), "--json")
    assert code == 0, err
    first = json.loads(out)
    folder = Path(first["path"])
    assert not first["reused"] and folder.parent == cache / "dictionaries"
    assert (folder / "gloss_dictionary.json").is_file()
    assert first["hooks"] == ["layer.0.resid", "layer.1.resid"]
    assert 0 < first["quality"]["fvu"] < 2 and first["tokens"] >= 300
    assert not list((cache / "learn").glob("*.pt"))  # the checkpoint is gone once saved

    code, out, err = gloss(capsys, "--db", db, "learn", "--config", str(config), "--json")
    assert code == 0, err
    second = json.loads(out)
    assert second["reused"] and second["source_id"] == first["source_id"]
    assert second["path"] == first["path"] and second["run"] != first["run"]

    with open_store(db) as store:
        (source,) = store.sources()
        assert (source.kind, source.hook, source.width) == ("sae", SPEC, TINY.width)
        assert Path(source.path) == folder.resolve()
        assert source.config["training"]["tokens"] == first["tokens"]
        runs = [r for r in store.runs(10) if r.kind == "learn"]
        assert [r.status for r in runs] == ["done", "done"]

    code, out, err = gloss(capsys, "--db", db, "learn", "--config", str(config), "--k", "3")
    assert code == 0, err
    assert "learned a dictionary" in out and "FVU" in out and "layer.1.resid" in out
    with open_store(db) as store:
        assert len(store.sources()) == 2


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--k", "64", "--width", "32"], "k=64 is invalid"),
        (["--hook", "layer.9.resid"], "unknown hook point 'layer.9.resid'"),
        (["--hook", "layer.0.mlp,layer.1.resid"], "mixes mlp and resid"),
        (["--width", "0"], "width=0 is invalid"),
        (["--device", "gpu"], "device 'gpu' is not a torch device"),
    ],
)
def test_bad_input_is_one_line(corpus_dir, tmp_path, capsys, flags, message):
    config = write_config(tmp_path, corpus_dir)
    db = f"sqlite:///{tmp_path / 'gloss.db'}"
    code, _, err = gloss(capsys, "--db", db, "learn", "--config", str(config), *flags)
    assert code == 2 and message in one_line_error(err), err


def test_an_empty_corpus_is_one_line(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "blank.txt").write_text("\n\n")
    config = write_config(tmp_path, empty)
    db = f"sqlite:///{tmp_path / 'gloss.db'}"
    code, _, err = gloss(capsys, "--db", db, "learn", "--config", str(config))
    assert code == 2 and "gave no windows" in one_line_error(err), err


def test_a_killed_gloss_learn_resumes_from_its_checkpoint(
    corpus_dir, tmp_path, capsys, cache, monkeypatch
):
    """A real SIGKILL mid-training; the rerun resumes and ends where an uninterrupted run does."""
    db = f"sqlite:///{tmp_path / 'gloss.db'}"
    config = write_config(tmp_path, corpus_dir, train_tokens=6000)
    env = {**os.environ, "GLOSS_CACHE": str(cache)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "gloss.pipeline.cli", "--db", db, "learn", "--config", str(config),
         "--json"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=Path(__file__).parent.parent,
    )  # fmt: skip
    deadline = time.monotonic() + 120
    while not list((cache / "learn").glob("*.pt")):
        assert proc.poll() is None, proc.communicate()[1].decode()[-2000:]
        assert time.monotonic() < deadline, "no checkpoint was written"
        time.sleep(0.05)
    assert proc.poll() is None, "training ended before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    code, out, err = gloss(capsys, "--db", db, "learn", "--config", str(config), "--json")
    assert code == 0, err
    resumed = json.loads(out)
    manifest = json.loads((Path(resumed["path"]) / "gloss_dictionary.json").read_text())
    assert manifest["training"]["resumed_from"] is not None

    whole = tmp_path / "whole"
    monkeypatch.setenv("GLOSS_CACHE", str(tmp_path / "other-cache"))
    code, out, err = gloss(capsys, "--db", f"sqlite:///{tmp_path / 'other.db'}", "learn",
                           "--config", str(config), "--out", str(whole), "--json")  # fmt: skip
    assert code == 0, err
    from safetensors.torch import load_file

    for h in manifest["hooks"]:
        a = load_file(str(Path(resumed["path"]) / h / "sae_weights.safetensors"))
        b = load_file(str(whole / h / "sae_weights.safetensors"))
        for name in a:
            assert torch.allclose(a[name], b[name], atol=1e-5), (h, name)
    with open_store(db) as store:
        statuses = sorted(r.status for r in store.runs(10) if r.kind == "learn")
    assert statuses == ["abandoned", "done"]  # the killed process's run was swept up


# ---------------------------------------------------------------- a causal subject


@pytest.fixture(scope="module")
def tiny_gpt2(minilm, tmp_path_factory):
    """A small random GPT-2 with MiniLM's tokenizer: a real causal LM, built in the test."""
    from transformers import GPT2Config, GPT2Model

    from gloss.pipeline.subjects import load_subject

    folder = tmp_path_factory.mktemp("gpt2")
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=len(minilm.tokenizer), n_embd=32, n_layer=2, n_head=2,
                        n_positions=64)  # fmt: skip
    GPT2Model(config).save_pretrained(folder)
    minilm.tokenizer.save_pretrained(folder)
    return load_subject(str(folder))


def test_lm_loss_with_the_reconstruction_spliced_in(tiny_gpt2, corpus_dir):
    corpus = corpus_of(tiny_gpt2, corpus_dir)
    trained = train(tiny_gpt2, "layer.0-1.resid", corpus, replace(TINY, width=16, k=2,
                                               train_tokens=300), progress=False)  # fmt: skip
    quality = evaluate(tiny_gpt2, trained, corpus.config.ctx_len)
    lm = quality["lm_loss"]
    assert lm is not None and lm["tokens"] > 0
    assert math.isfinite(lm["clean"]) and math.isfinite(lm["spliced"])
    assert abs(lm["clean"] - math.log(len(tiny_gpt2.tokenizer))) < 1.0  # a random model
    spliced = [quality["per_hook"][h]["lm_loss"] for h in trained.hooks]
    assert all(s != lm["clean"] for s in spliced)  # the splice changed the forward pass
    again = evaluate(tiny_gpt2, trained, corpus.config.ctx_len)["lm_loss"]
    assert again["clean"] == pytest.approx(lm["clean"])  # every splice hook was removed
