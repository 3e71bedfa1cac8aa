"""Feature sources: SAE and dictionary encodings match their formulas; bad files are clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from gloss.pipeline.sources import load_source
from gloss.store.errors import InputError, ModelError

D_IN, D_SAE = 16, 24


def _weights(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "W_enc": torch.randn(D_IN, D_SAE, generator=g),
        "b_enc": torch.randn(D_SAE, generator=g) * 0.5,
        "W_dec": torch.randn(D_SAE, D_IN, generator=g),
        "b_dec": torch.randn(D_IN, generator=g),
        "threshold": torch.rand(D_SAE, generator=g),
        "b_gate": torch.randn(D_SAE, generator=g) * 0.5,
        "r_mag": torch.randn(D_SAE, generator=g) * 0.1,
        "b_mag": torch.randn(D_SAE, generator=g) * 0.5,
    }


def write_sae(folder: Path, cfg: dict, weights: dict[str, torch.Tensor]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "cfg.json").write_text(json.dumps({"d_in": D_IN, "d_sae": D_SAE, **cfg}))
    save_file(weights, str(folder / "sae_weights.safetensors"))
    return folder


X = torch.randn(5, 7, D_IN, generator=torch.Generator().manual_seed(1))


def test_standard_sae_matches_formula(tmp_path):
    w = _weights()
    source = load_source(f"sae:{write_sae(tmp_path / 's', {}, w)}", D_IN)
    expected = torch.relu((X - w["b_dec"]) @ w["W_enc"] + w["b_enc"])
    assert source.kind == "sae" and source.width == D_SAE
    torch.testing.assert_close(source.encode(X), expected)
    subset = torch.tensor([3, 0, 17])
    torch.testing.assert_close(source.encode(X, subset), expected[..., subset])
    # apply_b_dec_to_input=False leaves the input alone.
    plain = load_source(str(write_sae(tmp_path / "p", {"apply_b_dec_to_input": False}, w)), D_IN)
    torch.testing.assert_close(plain.encode(X), torch.relu(X @ w["W_enc"] + w["b_enc"]))


def test_jumprelu_sae_matches_formula(tmp_path):
    w = _weights()
    source = load_source(str(write_sae(tmp_path / "j", {"architecture": "jumprelu"}, w)), D_IN)
    pre = (X - w["b_dec"]) @ w["W_enc"] + w["b_enc"]
    expected = torch.where(pre > w["threshold"], pre, torch.zeros_like(pre)).clamp(min=0)
    torch.testing.assert_close(source.encode(X), expected)
    assert (source.encode(X)[(pre > 0) & (pre <= w["threshold"])] == 0).all()


def test_topk_and_gated_saes_match_formulas(tmp_path):
    w = _weights()
    cfg = {"architecture": "topk", "activation_fn_kwargs": {"k": 3}}
    topk = load_source(str(write_sae(tmp_path / "t", cfg, w)), D_IN)
    pre = torch.relu((X - w["b_dec"]) @ w["W_enc"] + w["b_enc"])
    out = topk.encode(X)
    assert ((out > 0).sum(-1) <= 3).all()
    kth = pre.topk(3, dim=-1).values[..., -1:]
    torch.testing.assert_close(out, torch.where(pre >= kth, pre, torch.zeros_like(pre)))
    gated = load_source(str(write_sae(tmp_path / "g", {"architecture": "gated"}, w)), D_IN)
    x = X - w["b_dec"]
    gate = x @ w["W_enc"] + w["b_gate"] > 0
    mag = torch.relu(x @ (w["W_enc"] * w["r_mag"].exp()) + w["b_mag"])
    torch.testing.assert_close(gated.encode(X), gate * mag)


def test_dictionary_learning_layouts(tmp_path):
    g = torch.Generator().manual_seed(2)
    enc_w, enc_b, bias = (
        torch.randn(D_SAE, D_IN, generator=g),
        torch.randn(D_SAE, generator=g),
        torch.randn(D_IN, generator=g),
    )
    folder = tmp_path / "ae"
    folder.mkdir()
    state = {"encoder.weight": enc_w, "encoder.bias": enc_b, "bias": bias,
             "decoder.weight": torch.randn(D_IN, D_SAE, generator=g)}  # fmt: skip
    torch.save(state, folder / "ae.pt")
    (folder / "config.json").write_text(
        json.dumps(
            {
                "trainer": {
                    "dict_class": "AutoEncoder",
                    "activation_dim": D_IN,
                    "dict_size": D_SAE,
                    "layer": 3,
                }
            }
        )  # fmt: skip
    )
    source = load_source(f"dictionary:{folder}", D_IN)
    assert source.kind == "dictionary" and source.width == D_SAE
    torch.testing.assert_close(source.encode(X), torch.relu((X - bias) @ enc_w.T + enc_b))
    assert load_source(str(folder), D_IN).params_hash == source.params_hash  # detected layout

    w = _weights()
    jump = tmp_path / "jump"
    jump.mkdir()
    torch.save({k: w[k] for k in ("W_enc", "b_enc", "b_dec", "threshold", "W_dec")},
               jump / "ae.pt")  # fmt: skip
    (jump / "config.json").write_text(
        json.dumps({"trainer": {"dict_class": "JumpReluAutoEncoder"}})
    )
    pre = X @ w["W_enc"] + w["b_enc"]
    torch.testing.assert_close(
        load_source(str(jump), D_IN).encode(X), torch.relu(pre * (pre > w["threshold"]))
    )


def test_neurons_are_the_hook_point_itself():
    source = load_source("neurons", 1536)
    assert source.width == 1536 and source.encoder is None
    assert source.encode(X) is X
    assert load_source("neurons", 1536).params_hash == source.params_hash


def test_params_hash_tracks_the_weights(tmp_path):
    w = _weights()
    a = load_source(str(write_sae(tmp_path / "a", {}, w)), D_IN)
    b = load_source(str(write_sae(tmp_path / "b", {}, w)), D_IN)
    c = load_source(str(write_sae(tmp_path / "c", {}, _weights(seed=5))), D_IN)
    assert a.params_hash == b.params_hash != c.params_hash


def test_dimension_mismatch_names_both_sizes(tmp_path):
    folder = write_sae(tmp_path / "s", {}, _weights())
    with pytest.raises(InputError, match=r"16-dimensional.*384 units"):
        load_source(str(folder), 384)


def test_bad_sources(tmp_path):
    with pytest.raises(InputError, match="not a folder"):
        load_source(f"sae:{tmp_path / 'missing'}", D_IN)
    with pytest.raises(InputError, match="unknown feature source"):
        load_source(str(tmp_path), D_IN)
    w = _weights()
    no_weights = tmp_path / "nw"
    no_weights.mkdir()
    (no_weights / "cfg.json").write_text("{}")
    with pytest.raises(InputError, match="sae_weights.safetensors"):
        load_source(str(no_weights), D_IN)
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "cfg.json").write_text("{not json")
    with pytest.raises(InputError, match="not valid JSON"):
        load_source(str(broken), D_IN)
    lacking = write_sae(tmp_path / "l", {"architecture": "jumprelu"},
                        {k: w[k] for k in ("W_enc", "b_enc", "b_dec")})  # fmt: skip
    with pytest.raises(InputError, match="lacks threshold"):
        load_source(str(lacking), D_IN)
    with pytest.raises(ModelError, match="normalize_activations"):
        load_source(str(write_sae(tmp_path / "n", {"normalize_activations": "expected_average_only_in"}, w)), D_IN)  # fmt: skip
    with pytest.raises(ModelError, match="unsupported SAE architecture"):
        load_source(str(write_sae(tmp_path / "u", {"architecture": "weird"}, w)), D_IN)
    with pytest.raises(InputError, match="d_sae=99"):
        load_source(str(write_sae(tmp_path / "d", {"d_sae": 99}, w)), D_IN)
    bad_pt = tmp_path / "badpt"
    bad_pt.mkdir()
    (bad_pt / "ae.pt").write_bytes(b"garbage")
    (bad_pt / "config.json").write_text("{}")
    with pytest.raises(InputError, match="cannot read"):
        load_source(str(bad_pt), D_IN)


@pytest.mark.parametrize(
    "cfg",
    [{}, {"architecture": "jumprelu"}, {"architecture": "gated"},
     {"architecture": "topk", "activation_fn_kwargs": {"k": 3}}, None],
    ids=["relu", "jumprelu", "gated", "topk", "neurons"],
)  # fmt: skip
def test_feature_major_encodings_are_the_same_numbers_latent_first(tmp_path, cfg):
    """Mining asks for [latents, batch, tokens], computed in that layout."""
    spec = "neurons" if cfg is None else str(write_sae(tmp_path / "s", cfg, _weights()))
    source = load_source(spec, D_IN)
    subset = torch.tensor([3, 0, 11])
    for features in (None, subset):
        expected = source.encode(X, features).movedim(-1, 0)
        got = source.encode(X, features, feature_major=True)
        assert got.shape == expected.shape == (len(features) if features is not None
                                                else source.width, 5, 7)  # fmt: skip
        torch.testing.assert_close(got, expected)


def write_gemma_scope(path: Path, weights: dict[str, torch.Tensor], keys=None) -> Path:
    import numpy as np

    keys = keys or ("W_enc", "b_enc", "threshold", "W_dec", "b_dec")
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **{k: weights[k].numpy() for k in keys})
    return path


def test_gemma_scope_params_npz_matches_its_formula(tmp_path):
    w = _weights()
    file = write_gemma_scope(tmp_path / "layer_3" / "width_16k" / "params.npz", w)
    pre = X @ w["W_enc"] + w["b_enc"]  # Gemma Scope's encoder reads the input as it is
    expected = (pre > w["threshold"]) * torch.relu(pre)
    for spec in (f"gemmascope:{file}", str(file), str(file.parent), f"sae:{file}"):
        source = load_source(spec, D_IN)
        assert (source.kind, source.width, source.d_in) == ("sae", D_SAE, D_IN), spec
        assert source.config["format"] == "gemma-scope" and source.path == str(file.resolve())
        torch.testing.assert_close(source.encode(X), expected)
        subset = torch.tensor([5, 1])
        torch.testing.assert_close(source.encode(X, subset), expected[..., subset])
    saelens = ((X - w["b_dec"]) @ w["W_enc"] + w["b_enc"]).clamp(min=0)
    assert not torch.allclose(expected, saelens * (saelens > w["threshold"]))  # not b_dec-first
    assert load_source(str(file), D_IN).params_hash == load_source(f"sae:{file}", D_IN).params_hash


def test_bad_gemma_scope_files_are_one_line_errors(tmp_path):
    w = _weights()
    file = write_gemma_scope(tmp_path / "params.npz", w)
    with pytest.raises(InputError, match=r"16-dimensional.*384 units"):
        load_source(str(file), 384)
    lacking = write_gemma_scope(tmp_path / "l" / "params.npz", w, keys=("W_enc", "b_enc"))
    with pytest.raises(InputError, match="lacks threshold"):
        load_source(str(lacking), D_IN)
    broken = tmp_path / "broken.npz"
    broken.write_bytes(b"not a zip at all")
    with pytest.raises(InputError, match="cannot read .*broken.npz"):
        load_source(str(broken), D_IN)
    with pytest.raises(InputError, match="missing .*params.npz"):
        load_source(f"gemmascope:{tmp_path / 'nowhere' / 'params.npz'}", D_IN)
    short = dict(w, threshold=w["threshold"][:3])
    with pytest.raises(InputError, match=r"threshold has shape \[3\]"):
        load_source(str(write_gemma_scope(tmp_path / "s" / "params.npz", short)), D_IN)


def write_sparsify(folder: Path, weights: dict[str, torch.Tensor], **cfg) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {
        "encoder.weight": weights["W_enc"].T.contiguous(),  # nn.Linear: [latents, d_in]
        "encoder.bias": weights["b_enc"],
        "W_dec": weights["W_dec"],
        "b_dec": weights["b_dec"],
    }
    save_file(tensors, str(folder / "sae.safetensors"))
    settings = {"d_in": D_IN, "k": 5, "num_latents": D_SAE, "expansion_factor": 32,
                "normalize_decoder": True, "multi_topk": False, "skip_connection": False,
                "transcode": False, **cfg}  # fmt: skip
    (folder / "cfg.json").write_text(json.dumps(settings))
    return folder


def _top_k(pre: torch.Tensor, k: int) -> torch.Tensor:
    acts = torch.relu(pre)
    top = acts.topk(k, dim=-1)
    return torch.zeros_like(acts).scatter_(-1, top.indices, top.values)


def test_sparsify_coders_match_their_formulas(tmp_path):
    w = _weights()
    sae = write_sparsify(tmp_path / "ckpt" / "layers.3", w)
    expected = _top_k((X - w["b_dec"]) @ w["W_enc"] + w["b_enc"], 5)
    for spec in (f"sparsify:{sae}", str(sae), f"sae:{sae}"):
        source = load_source(spec, D_IN)
        assert (source.kind, source.width, source.d_in) == ("sae", D_SAE, D_IN), spec
        assert source.config["format"] == "sparsify" and not source.config["transcoder"]
        torch.testing.assert_close(source.encode(X), expected)
    assert ((source.encode(X) > 0).sum(-1) <= 5).all()
    # A transcoder reads the MLP input as it is: its b_dec is the output's bias.
    transcoder = write_sparsify(tmp_path / "tc" / "layers.3.mlp", w, transcode=True)
    source = load_source(f"sparsify:{transcoder}", D_IN)
    assert source.config["transcoder"]
    torch.testing.assert_close(source.encode(X), _top_k(X @ w["W_enc"] + w["b_enc"], 5))
    assert load_source(str(sae), D_IN).params_hash != source.params_hash


def test_bad_sparsify_folders_are_one_line_errors(tmp_path):
    w = _weights()
    for point in ("layers.0", "layers.1"):
        write_sparsify(tmp_path / "ckpt" / point, w)
    with pytest.raises(InputError, match=r"2 hook points \(layers.0, layers.1\).*sparsify:"):
        load_source(str(tmp_path / "ckpt"), D_IN)
    with pytest.raises(InputError, match=r"16-dimensional.*384 units"):
        load_source(f"sparsify:{tmp_path / 'ckpt' / 'layers.0'}", 384)
    with pytest.raises(InputError, match="missing .*sae.safetensors"):
        load_source(f"sparsify:{tmp_path / 'empty'}", D_IN)
    with pytest.raises(ModelError, match="groupmax"):
        load_source(str(write_sparsify(tmp_path / "g", w, activation="groupmax")), D_IN)
    with pytest.raises(InputError, match="d_in=99"):
        load_source(str(write_sparsify(tmp_path / "d", w, d_in=99)), D_IN)
    broken = write_sparsify(tmp_path / "b", w)
    (broken / "sae.safetensors").write_bytes(b"garbage")
    with pytest.raises(InputError, match="cannot read"):
        load_source(str(broken), D_IN)
