"""Feature sources from the Hugging Face hub (`saelens:RELEASE/SAE_ID`, `hf:REPO_ID/PATH`),
read offline from a local hub cache laid out as huggingface_hub lays it out
(models--ORG--NAME/{blobs,snapshots/COMMIT,refs/main}), weights written by the test."""

from __future__ import annotations

import hashlib
import io
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save

from gloss.pipeline.sources import load_source
from gloss.store.errors import ConfigError, InputError, ModelError

D_IN, D_SAE = 384, 40  # MiniLM's hidden size: its layer.N.resid points
COMMIT = "0123456789abcdef0123456789abcdef01234567"
GEMMA = "google/gemma-scope-2b-pt-res"
GEMMA_PATH = "layer_20/width_16k/average_l0_71"  # where gemma-scope-2b-pt-res-canonical points
X = torch.randn(3, 5, D_IN, generator=torch.Generator().manual_seed(1))


@pytest.fixture
def hub(tmp_path, monkeypatch) -> Path:
    """An empty hub cache, offline: HF_HOME and HF_HUB_CACHE point into tmp_path."""
    from huggingface_hub import constants

    cache = tmp_path / "hf" / "hub"
    monkeypatch.setenv("HF_HOME", str(cache.parent))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    # huggingface_hub reads these once, at import
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return cache


def put(cache: Path, repo_id: str, files: dict[str, bytes], commit: str = COMMIT) -> None:
    """Files of a model repository at `commit`, as a download leaves them: content in
    blobs/, snapshots/COMMIT/PATH linking to it, refs/main naming the commit."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    (repo / "blobs").mkdir(parents=True, exist_ok=True)
    (repo / "refs").mkdir(exist_ok=True)
    for path, content in files.items():
        blob = repo / "blobs" / hashlib.sha256(content).hexdigest()
        blob.write_bytes(content)
        link = repo / "snapshots" / commit / path
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(Path(*[".."] * (len(Path(path).parts) + 1), "blobs", blob.name))
    (repo / "refs" / "main").write_text(commit)


def weights(d_in: int = D_IN, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "W_enc": torch.randn(d_in, D_SAE, generator=g) / d_in**0.5,
        "b_enc": torch.randn(D_SAE, generator=g) * 0.1,
        "W_dec": torch.randn(D_SAE, d_in, generator=g),
        "b_dec": torch.randn(d_in, generator=g) * 0.1,
        "threshold": torch.rand(D_SAE, generator=g) * 0.5,
    }


def npz(w: dict[str, torch.Tensor]) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **{k: w[k].numpy() for k in ("W_enc", "b_enc", "threshold", "W_dec", "b_dec")})
    return buffer.getvalue()


def saelens_files(w: dict[str, torch.Tensor], **cfg) -> dict[str, bytes]:
    d_in = w["W_enc"].shape[0]
    settings = {
        "architecture": "standard", "d_in": d_in, "d_sae": D_SAE, "activation_fn": "relu",
        "apply_b_dec_to_input": True, "normalize_activations": "none", "dtype": "float32",
        "device": "cpu", "metadata": {"hook_name": "blocks.8.hook_resid_pre"}, **cfg,
    }  # fmt: skip
    tensors = {k: w[k].contiguous() for k in ("W_enc", "b_enc", "W_dec", "b_dec")}
    return {"cfg.json": json.dumps(settings).encode(), "sae_weights.safetensors": save(tensors)}


def sparsify_files(w: dict[str, torch.Tensor], k: int = 6) -> dict[str, bytes]:
    tensors = {"encoder.weight": w["W_enc"].T.contiguous(), "encoder.bias": w["b_enc"],
               "W_dec": w["W_dec"], "b_dec": w["b_dec"]}  # fmt: skip
    cfg = {"d_in": D_IN, "k": k, "num_latents": D_SAE, "transcode": False}
    return {"cfg.json": json.dumps(cfg).encode(), "sae.safetensors": save(tensors)}


def dictionary_files(w: dict[str, torch.Tensor]) -> dict[str, bytes]:
    state = {"encoder.weight": w["W_enc"].T.contiguous(), "encoder.bias": w["b_enc"],
             "bias": w["b_dec"], "decoder.weight": w["W_dec"].T.contiguous()}  # fmt: skip
    buffer = io.BytesIO()
    torch.save(state, buffer)
    cfg = {"trainer": {"dict_class": "AutoEncoder", "activation_dim": D_IN, "dict_size": D_SAE}}
    return {"config.json": json.dumps(cfg).encode(), "ae.pt": buffer.getvalue()}


def under(folder: str, files: dict[str, bytes]) -> dict[str, bytes]:
    return {f"{folder}/{name}": content for name, content in files.items()}


def jumprelu(w: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    pre = x @ w["W_enc"] + w["b_enc"]  # Gemma Scope's encoder reads the input as it is
    return (pre > w["threshold"]) * torch.relu(pre)


def one_line(error: pytest.ExceptionInfo) -> str:
    text = str(error.value)
    assert "\n" not in text, text
    return text


def test_hf_gemma_scope_matches_its_formula_and_reloads_pinned(hub):
    w = weights()
    put(hub, GEMMA, {f"{GEMMA_PATH}/params.npz": npz(w)})
    spec = f"hf:{GEMMA}/{GEMMA_PATH}"
    source = load_source(spec, D_IN)
    assert (source.kind, source.width, source.d_in) == ("sae", D_SAE, D_IN)
    torch.testing.assert_close(source.encode(X), jumprelu(w, X))
    assert source.path == f"{spec}@{COMMIT}"
    assert source.config["hub"] == {"repo_id": GEMMA, "path": GEMMA_PATH, "revision": COMMIT}
    by_file = load_source(f"{spec}/params.npz", D_IN)
    assert by_file.params_hash == source.params_hash
    # The store keeps KIND:PATH; `gloss fires` reloads that, from the cache.
    again = load_source(f"{source.kind}:{source.path}", D_IN)
    assert again.params_hash == source.params_hash and again.path == source.path
    # main moves on: the pinned spec still reads the files it was mined with.
    newer, later = weights(seed=7), "f" * 40
    put(hub, GEMMA, {f"{GEMMA_PATH}/params.npz": npz(newer)}, commit=later)
    torch.testing.assert_close(load_source(spec, D_IN).encode(X), jumprelu(newer, X))
    pinned = load_source(f"sae:{source.path}", D_IN)
    assert pinned.params_hash == source.params_hash
    torch.testing.assert_close(pinned.encode(X), jumprelu(w, X))


@pytest.mark.parametrize("layout", ["saelens", "sparsify", "dictionary"])
def test_hf_folders_are_read_by_their_layout(hub, layout):
    w = weights(seed=3)
    repo, folder = "EleutherAI/sae-pythia-70m-32k", "layers.3"
    files = {"saelens": saelens_files, "sparsify": sparsify_files, "dictionary": dictionary_files}
    put(hub, repo, under(folder, files[layout](w)))
    source = load_source(f"hf:{repo}/{folder}", D_IN)
    assert source.kind == ("dictionary" if layout == "dictionary" else "sae")
    assert load_source(f"{source.kind}:{source.path}", D_IN).params_hash == source.params_hash
    pre = torch.relu((X - w["b_dec"]) @ w["W_enc"] + w["b_enc"])
    if layout == "sparsify":
        assert source.config["format"] == "sparsify"
        kth = pre.topk(6, dim=-1).values[..., -1:]
        pre = torch.where(pre >= kth, pre, torch.zeros_like(pre))
    torch.testing.assert_close(source.encode(X), pre)


def _sae_lens_place(release: str, sae_id: str) -> tuple[str, str]:
    """Where sae-lens itself says a release's SAE lives."""
    from sae_lens.loading.pretrained_saes_directory import get_repo_id_and_folder_name

    return get_repo_id_and_folder_name(release, sae_id)


def test_saelens_release_resolves_as_sae_lens_resolves_it(hub):
    pytest.importorskip("sae_lens")
    release, sae_id = "gemma-scope-2b-pt-res-canonical", "layer_20/width_16k/canonical"
    repo_id, path = _sae_lens_place(release, sae_id)
    assert path != sae_id  # the release maps the id to a path: something to resolve
    w = weights(seed=2)
    put(hub, repo_id, {f"{path}/params.npz": npz(w)})
    source = load_source(f"saelens:{release}/{sae_id}", D_IN)
    torch.testing.assert_close(source.encode(X), jumprelu(w, X))
    assert source.path == f"saelens:{release}/{sae_id}@{COMMIT}"
    hub_info = source.config["hub"]
    assert (hub_info["repo_id"], hub_info["path"], hub_info["release"]) == (repo_id, path, release)
    assert source.params_hash == load_source(f"hf:{repo_id}/{path}", D_IN).params_hash
    assert load_source(f"sae:{source.path}", D_IN).params_hash == source.params_hash


@pytest.mark.parametrize(
    "release, sae_id",
    [("gpt2-small-res-jb", "blocks.8.hook_resid_pre"),
     ("gemma-2b-res-jb", "blocks.12.hook_resid_post")],  # this one has a norm_scaling_factor
)  # fmt: skip
def test_saelens_releases_encode_as_sae_lens_does(hub, release, sae_id):
    """The reference: SAELens's own from_pretrained, reading the same cache offline."""
    sae_lens = pytest.importorskip("sae_lens")
    repo_id, path = _sae_lens_place(release, sae_id)
    w = weights(d_in=64, seed=4)
    put(
        hub,
        repo_id,
        under(path, saelens_files(w, normalize_activations="expected_average_only_in")),
    )
    x = torch.randn(4, 64, generator=torch.Generator().manual_seed(5)) * 3
    scale = sae_lens.loading.pretrained_saes_directory.get_norm_scaling_factor(release, sae_id)
    if scale is None:
        with pytest.raises(ModelError, match="expected_average_only_in"):
            load_source(f"saelens:{release}/{sae_id}", 64)
        put(hub, repo_id, under(path, saelens_files(w)), commit="e" * 40)
    source = load_source(f"saelens:{release}/{sae_id}", 64)
    theirs = sae_lens.SAE.from_pretrained(release, sae_id, device="cpu")
    expected = torch.relu((x * (scale or 1) - w["b_dec"]) @ w["W_enc"] + w["b_enc"])
    torch.testing.assert_close(source.encode(x), expected)
    torch.testing.assert_close(source.encode(x), theirs.encode(x).detach(), atol=1e-5, rtol=1e-5)


def test_missing_from_the_cache_while_offline_is_one_line(hub):
    put(hub, GEMMA, {f"{GEMMA_PATH}/params.npz": npz(weights())})
    for spec in (f"hf:{GEMMA}/layer_3/width_16k/average_l0_9", "hf:google/not-cached/layer_0"):
        with pytest.raises(InputError) as error:
            load_source(spec, D_IN)
        message = one_line(error)
        assert message.startswith(
            f"{spec} is not in the Hugging Face cache and HF_HUB_OFFLINE is set"
        )
    # a layout whose second file is missing: named
    put(
        hub,
        "acme/half",
        {"sae/sae_weights.safetensors": saelens_files(weights())["sae_weights.safetensors"]},
    )
    with pytest.raises(InputError, match="sae/cfg.json") as error:
        load_source("hf:acme/half/sae", D_IN)
    assert "HF_HUB_OFFLINE" in one_line(error)


def test_unknown_release_or_sae_id_is_one_line_naming_close_ones(hub):
    pytest.importorskip("sae_lens")
    with pytest.raises(
        InputError,
        match=r"unknown SAELens release 'gemma-scope-2b-pt-rez' \(close: .*gemma-scope-2b-pt-res",
    ) as error:
        load_source("saelens:gemma-scope-2b-pt-rez/layer_20/width_16k/canonical", D_IN)
    one_line(error)
    with pytest.raises(
        InputError,
        match=r"has no SAE 'layer_20/width_16k/average_l0_72' \(close: .*layer_20/width_16k/average_l0_71",
    ) as error:
        load_source("saelens:gemma-scope-2b-pt-res/layer_20/width_16k/average_l0_72", D_IN)
    one_line(error)
    with pytest.raises(ModelError, match="'llama_scope' format") as error:
        load_source("saelens:llama_scope_lxr_8x/l0r_8x", D_IN)
    one_line(error)
    with pytest.raises(InputError, match="give hf:ORG/REPO/PATH"):
        load_source("hf:just-a-name", D_IN)


def test_width_mismatch_names_the_hub_source(hub):
    put(hub, GEMMA, {f"{GEMMA_PATH}/params.npz": npz(weights())})
    with pytest.raises(
        InputError,
        match=rf"sae at hf:{GEMMA}/{GEMMA_PATH}@{COMMIT} reads 384-dimensional.*1536 units",
    ) as error:
        load_source(f"hf:{GEMMA}/{GEMMA_PATH}", 1536)
    one_line(error)


def test_without_sae_lens_saelens_asks_for_it_and_hf_still_works(hub, monkeypatch):
    monkeypatch.setitem(sys.modules, "sae_lens", None)  # what an environment without it finds
    with pytest.raises(
        ConfigError, match=r"pip install 'gloss\[saelens\]'.*hf:REPO_ID/PATH"
    ) as error:
        load_source("saelens:gemma-scope-2b-pt-res-canonical/layer_20/width_16k/canonical", D_IN)
    one_line(error)
    w = weights()
    put(hub, GEMMA, {f"{GEMMA_PATH}/params.npz": npz(w)})
    torch.testing.assert_close(
        load_source(f"hf:{GEMMA}/{GEMMA_PATH}", D_IN).encode(X), jumprelu(w, X)
    )


@pytest.mark.slow
def test_cli_mines_a_saelens_release_and_fires_reloads_it(
    hub, tmp_path, monkeypatch, capsys, minilm
):
    pytest.importorskip("sae_lens")
    from gloss.pipeline.cli import main
    from gloss.pipeline.corpus import Corpus, CorpusConfig
    from gloss.pipeline.fires import source_of
    from gloss.store import open_store
    from tests.test_mining import SENTENCES

    monkeypatch.chdir(tmp_path)
    w = weights(seed=9)
    put(hub, GEMMA, {f"{GEMMA_PATH}/params.npz": npz(w)})
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(SENTENCES))
    db = f"sqlite:///{tmp_path / 'g.db'}"
    spec, hook = (
        "saelens:gemma-scope-2b-pt-res-canonical/layer_20/width_16k/canonical",
        "layer.3.resid",
    )
    code = main(["--database", db, "mine", "--source", spec, "--hook", hook,
                 "--corpus", str(corpus), "--features", "0:8", "--json"])  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0, out
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["features"] == 8 and summary["windows"] > 0
    store = open_store(db)
    info = store.source(summary["source"])
    assert info.path == f"{spec}@{COMMIT}" and info.config["hub"]["path"] == GEMMA_PATH
    source = source_of(info, minilm.hook_width(hook))  # what `gloss fires` reads back
    torch.testing.assert_close(source.encode(X), jumprelu(w, X))
    # each mined maximum is the formula's maximum over the corpus's windows
    windows = Corpus(CorpusConfig((str(corpus),)), minilm.encode).scan()
    acts = torch.cat([
        minilm.activations(torch.tensor([win.token_ids]), None, [hook])[hook][0] for win in windows
    ])  # fmt: skip
    expected = jumprelu(w, acts)[:, :8].max(0).values
    mined = {f.index: f.max_act for f in store.features(info.id)}
    assert sorted(mined) == list(range(8))
    assert [mined[i] for i in range(8)] == pytest.approx(expected.tolist(), abs=1e-4)
    assert expected.max() > 0
