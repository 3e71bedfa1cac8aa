"""A sentence embedder: texts to unit vectors, for the embedding scorer.

The bundled all-MiniLM-L6-v2 (or any sentence-transformers BERT folder) read with
transformers: mean pooling over the tokens, then L2 normalisation, as
sentence-transformers does for this model, so a dot product is a cosine similarity.
One instance per process is enough; `encode` is safe to call from several threads.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

import torch

from gloss.store.errors import ModelError

MAX_TOKENS = 256  # MiniLM's training length; longer texts are cut


class Embedder:
    def __init__(self, name: str = "minilm"):
        from transformers import AutoModel, AutoTokenizer

        from gloss.pipeline.subjects import _builtin_minilm

        path = _builtin_minilm() if name == "minilm" else name
        if name != "minilm" and not Path(path).is_dir():
            raise ModelError(f"no sentence embedder folder {name!r}: give minilm or a folder")
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(path)
            self.model = AutoModel.from_pretrained(path).eval()
        except (OSError, ValueError) as error:
            raise ModelError(f"cannot load sentence embedder {name!r}: {error}") from error
        self.name = embedder_name(name)
        self._lock = threading.Lock()

    @torch.inference_mode()
    def encode(self, texts: Sequence[str], batch_size: int = 32) -> torch.Tensor:
        """[len(texts), dim] unit vectors."""
        out = []
        with self._lock:
            for start in range(0, len(texts), batch_size):
                batch = self.tokenizer(
                    list(texts[start : start + batch_size]),
                    padding=True,
                    truncation=True,
                    max_length=MAX_TOKENS,
                    return_tensors="pt",
                )
                hidden = self.model(**batch).last_hidden_state
                mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
                out.append(torch.nn.functional.normalize(pooled, dim=-1))
        return torch.cat(out) if out else torch.zeros((0, 0))


def closest(
    anchors: Sequence[str], candidates: Sequence[str], k: int, name: str = "minilm"
) -> list[int]:
    """Indices of the `k` candidates closest in meaning to the mean of `anchors`, closest
    first (ties: the earlier candidate): near misses for the silent windows of a feature."""
    if not anchors or not candidates or k < 1:
        return []
    vectors = embedder(name).encode([*anchors, *candidates])
    centre = vectors[: len(anchors)].mean(dim=0)
    similarity = (vectors[len(anchors) :] @ centre).tolist()
    return sorted(range(len(candidates)), key=lambda i: (-similarity[i], i))[:k]


def embedder_name(name: str) -> str:
    """The name scores record: the bundled model's own name, else the folder's."""
    return "all-MiniLM-L6-v2" if name == "minilm" else Path(name).name


@lru_cache(maxsize=2)
def embedder(name: str = "minilm") -> Embedder:
    return Embedder(name)
