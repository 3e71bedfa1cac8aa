"""Activation mining: one streaming pass that finds what every feature fires on.

For each feature, over every token of the corpus sample:

- top windows: the windows with the highest max activation;
- quantile samples: a uniform sample of the windows where the feature is active,
  cut into equal-count quantiles of their max activation (delphi-style), so the
  explainer also sees weak activations;
- random windows: a uniform sample of all windows, silent ones included;
- statistics: max, mean, density (share of tokens > 0) and a histogram of the
  positive activations.

All three samples are reservoirs merged with one vectorized `topk` per batch: the top
reservoir ranks windows by their max activation, the others by seeded random keys
(the k largest of independent uniform keys are a uniform sample without replacement).
Memory is features x slots x ctx_len, whatever the corpus length.

A dictionary shared by several hook points (`Source.encoders`, mined at a spec such as
`layer.0-5.resid`) reads every point in one forward pass; a token's activation of a
feature is its largest over the points, so everything above is as for one point. Each
feature also gets a layer map: per point, the mean of its LAYER_TOP largest token
activations there (zeros count when it fired on fewer tokens), in raw activation units
(the encoders fold each point's scale in, so points compare); displays scale it to the
feature's largest point. This is Yun et al.'s (2021) importance per layer; it costs
points x LAYER_TOP floats per feature.

Examples go to three disjoint splits: `explain` (what the explainer reads), `validation`
(what best-of-n chooses on) and `holdout` (what reported scores use): top, quantile,
random and silent windows, the last a uniform sample of the windows where the feature
never fires. A window is used at most once per feature. Features are written to the store in groups, each its own
transaction; a rerun skips features already mined, so an interrupted mine resumes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from functools import partial
from itertools import groupby, islice
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gloss.pipeline.corpus import Corpus, CorpusConfig, Window
from gloss.pipeline.liveness import LEASE_S, heartbeat, sweep
from gloss.pipeline.settings import MiningConfig
from gloss.pipeline.sources import Source
from gloss.pipeline.subjects import Subject, cache_dir
from gloss.store import ExampleSet, MinedFeature, Store, WindowIn
from gloss.store.errors import InputError
from gloss.store.types import SPLITS, kind_code

log = logging.getLogger(__name__)

LAYER_TOP = 20  # token activations per feature and point behind its layer map


@dataclass
class MiningResult:
    source_id: int
    run_id: int
    features: int  # mined in this run
    dead: int
    skipped: int  # already mined before this run
    tokens: int
    windows: int
    seconds: float
    dead_indices: list[int] = field(default_factory=list)
    stale: list[int] = field(default_factory=list)  # skipped, but mined over other windows
    elsewhere: int = 0  # left to another process mining their unit, or mined by it meanwhile


# ---------------------------------------------------------------- batches


def iter_batches(
    subject: Subject, windows: Iterable[Window], batch_size: int
) -> Iterator[tuple[torch.Tensor, torch.Tensor, list[Window]]]:
    """(input_ids [B, T], valid [B, T] bool, windows): windows right-padded to the longest."""
    pad = subject.pad_id
    batch: list[Window] = []
    for window in windows:
        batch.append(window)
        if len(batch) == batch_size:
            yield _pack(batch, pad)
            batch = []
    if batch:
        yield _pack(batch, pad)


def _pack(batch: list[Window], pad: int) -> tuple[torch.Tensor, torch.Tensor, list[Window]]:
    width = max(len(w.token_ids) for w in batch)
    ids = torch.full((len(batch), width), pad, dtype=torch.long)
    valid = torch.zeros((len(batch), width), dtype=torch.bool)
    for row, w in enumerate(batch):
        ids[row, : len(w.token_ids)] = torch.tensor(w.token_ids)
        valid[row, : len(w.token_ids)] = True
    return ids, valid, batch


class PassCache:
    """The hook activations of every batch, kept on disk by the first feature chunk's pass
    so that later chunks replay them instead of running the model again.

    Chunking bounds the memory of the encoder and the reservoirs, not the model work:
    with it, mining N chunks costs one forward pass and N encodes. The files (float32, as
    the model gave them, so every chunk sees the same numbers) live in a temporary folder
    under $GLOSS_CACHE/mining that `mine` removes; about tokens x width x 4 bytes per
    hook point. A pass that resumed mid-corpus from a checkpoint records nothing: the
    chunks after it run the model.
    """

    def __init__(self, folder: Path):
        self.folder = folder
        self.batches = 0
        self.complete = False

    @classmethod
    @contextmanager
    def temporary(cls) -> Iterator[PassCache]:
        root = cache_dir() / "mining"
        root.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix="pass-", dir=root) as folder:
            yield cls(Path(folder))

    @staticmethod
    def fits(subject: Subject, points: list[str], corpus: Corpus) -> bool:
        """Whether the pass's activations fit in half the free disk; if not, say so: each
        chunk then runs the model again, as it must."""
        root = cache_dir() / "mining"
        root.mkdir(parents=True, exist_ok=True)
        width = sum(subject.hook_width(p) for p in points)
        need = corpus.n_windows * corpus.config.ctx_len * width * 4
        free = shutil.disk_usage(root).free
        if need <= free // 2:
            return True
        log.warning(
            "the hook activations of this pass (%.1f GB) do not fit in half the free disk "
            "under %s (%.1f GB free): every feature chunk runs the model again; raise "
            "[mining] feature_chunk or free space to run it once", need / 1e9, root, free / 1e9,
        )  # fmt: skip
        return False

    def record(
        self, ids: torch.Tensor, valid: torch.Tensor, batch: list[Window],
        captured: dict[str, torch.Tensor],
    ) -> None:  # fmt: skip
        state = {
            "ids": ids, "valid": valid, "captured": {p: a.cpu() for p, a in captured.items()},
            "docs": [w.doc_id for w in batch], "offsets": [w.offset for w in batch],
        }  # fmt: skip
        torch.save(state, self.folder / f"{self.batches}.pt")
        self.batches += 1

    def replay(
        self, device: torch.device
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor, list[Window], dict[str, torch.Tensor]]]:
        """(ids, valid, windows, hook activations) of every recorded batch, in order: the
        corpus is neither read nor tokenised again."""
        for n in range(self.batches):
            state = torch.load(self.folder / f"{n}.pt", weights_only=True)
            ids, valid = state["ids"], state["valid"]
            batch = [
                Window(doc, offset, tuple(row[mask].tolist()))
                for doc, offset, row, mask in zip(
                    state["docs"], state["offsets"], ids, valid, strict=True
                )
            ]
            yield ids, valid, batch, {p: a.to(device) for p, a in state["captured"].items()}


# ---------------------------------------------------------------- the streaming state


class Reservoir:
    """Per feature, the `size` windows with the largest keys seen so far, with their activations.

    Slots are unordered: a batch's winners overwrite exactly the slots they evict, so
    the work per batch is proportional to how many windows enter, not to the reservoir.
    While every row still has room for a whole batch, the batch is appended as a block.
    """

    def __init__(self, n_features: int, size: int, ctx_len: int, device: torch.device):
        self.size = size
        self.keys = torch.full((n_features, size), -math.inf, device=device)
        self.maxes = torch.zeros((n_features, size), device=device)
        self.windows = torch.full((n_features, size), -1, dtype=torch.long, device=device)
        self.acts = torch.zeros((n_features, size, ctx_len), dtype=torch.float16, device=device)
        self.filled = 0  # slots taken by whole-batch appends; merges take over after

    def state(self) -> dict[str, Any]:
        return {
            "keys": self.keys, "maxes": self.maxes, "windows": self.windows,
            "acts": self.acts, "filled": self.filled,
        }  # fmt: skip

    def load(self, state: dict[str, Any]) -> None:
        device = self.keys.device
        self.keys, self.maxes = state["keys"].to(device), state["maxes"].to(device)
        self.windows, self.acts = state["windows"].to(device), state["acts"].to(device)
        self.filled = state["filled"]

    def update(
        self,
        keys: torch.Tensor,
        maxes: torch.Tensor,
        strips: torch.Tensor,
        window_ids: torch.Tensor,
    ) -> None:
        """Merge a batch: keys and maxes [F, B], strips [F, B, T] float16, window_ids [B]."""
        if self.size == 0:
            return
        n_features, batch = keys.shape
        if self.filled + batch <= self.size:  # windows with key -inf are evicted first later
            block = slice(self.filled, self.filled + batch)
            self.keys[:, block] = keys
            self.maxes[:, block] = maxes
            self.windows[:, block] = window_ids
            self.acts[:, block, : strips.shape[2]] = strips
            self.filled += batch
            return
        self.filled = self.size
        floor = self.keys.amin(dim=1, keepdim=True)
        if not (keys > floor).any():
            return
        merged = torch.cat([self.keys, keys], dim=1)
        # Mark whichever side is smaller, the kept or the evicted: topk costs grow with k.
        if self.size <= batch:
            chosen = torch.zeros(merged.shape, dtype=torch.bool, device=keys.device)
            chosen.scatter_(1, merged.topk(self.size, dim=1).indices, True)
        else:
            chosen = torch.ones(merged.shape, dtype=torch.bool, device=keys.device)
            chosen.scatter_(1, merged.topk(batch, dim=1, largest=False).indices, False)
        # Row-major nonzero pairs each row's evicted slots with its entering windows.
        rows, slots = (~chosen[:, : self.size]).nonzero(as_tuple=True)
        new_rows, columns = chosen[:, self.size :].nonzero(as_tuple=True)
        if len(rows) == 0:
            return
        # Flat row indices: index_select / index_copy_ move whole strips, several times
        # faster than indexing with (row, slot) pairs.
        into = rows * self.size + slots
        taken = new_rows * batch + columns
        self.keys.view(-1).index_copy_(0, into, keys.reshape(-1).index_select(0, taken))
        self.maxes.view(-1).index_copy_(0, into, maxes.reshape(-1).index_select(0, taken))
        self.windows.view(-1).index_copy_(0, into, window_ids.index_select(0, columns))
        width = strips.shape[2]
        found = strips.view(-1, width).index_select(0, taken)
        if width < self.acts.shape[2]:
            found = torch.nn.functional.pad(found, (0, self.acts.shape[2] - width))
        self.acts.view(-1, self.acts.shape[2]).index_copy_(0, into, found)


class LayerMap:
    """Per point and feature, the LAYER_TOP largest token activations seen so far.

    Values start at 0 (the encoders of shared dictionaries never go below 0). A batch
    only touches the features whose largest activation there beats their current
    smallest kept value, which after the first batches is a small share of them.
    """

    def __init__(self, n_points: int, n_features: int, device: torch.device):
        self.values = torch.zeros((n_points, LAYER_TOP, n_features), device=device)

    def update(self, point: int, acts: torch.Tensor, valid: torch.Tensor) -> None:
        """acts [F, B, T] at one point (feature-major), valid [B, T]."""
        flat = acts.reshape(acts.shape[0], -1)
        if not bool(valid.all()):
            flat = flat[:, valid.reshape(-1)]
        if flat.shape[1] == 0:
            return
        kept = self.values[point]
        touched = (flat.amax(dim=1) > kept[-1]).nonzero().squeeze(1)
        if len(touched) == 0:
            return
        k = min(LAYER_TOP, flat.shape[1])
        if len(touched) == flat.shape[0]:
            top = flat.topk(k, dim=1).values.T
            kept[:] = torch.cat([kept, top]).topk(LAYER_TOP, dim=0).values
            return
        top = flat[touched].topk(k, dim=1).values.T
        kept[:, touched] = torch.cat([kept[:, touched], top]).topk(LAYER_TOP, dim=0).values

    def means(self) -> torch.Tensor:
        """[points, features]: each feature's mean top activation at each point."""
        return self.values.mean(dim=1)


class FeatureMiner:
    """The streaming statistics and samples of a block of features."""

    def __init__(
        self, n_features: int, ctx_len: int, config: MiningConfig, device="cpu", n_points: int = 1
    ):
        self.config = config
        device = torch.device(device)
        # A layer map only for a dictionary read at several points.
        self.layers = LayerMap(n_points, n_features, device) if n_points > 1 else None
        self.generator = torch.Generator(device=device).manual_seed(config.seed)
        n_top = config.top_explain + config.top_validation + config.top_holdout
        self.top = Reservoir(n_features, n_top, ctx_len, device)
        pool = config.quantile_pool if config.quantiles else 0
        self.pool = Reservoir(n_features, pool, ctx_len, device)
        n_random = config.random_explain + config.random_validation + config.random_holdout
        # Slack: random windows that are already top or quantile examples are skipped.
        self.random = Reservoir(n_features, 2 * n_random + 5 if n_random else 0, ctx_len, device)
        n_silent = config.silent_explain + config.silent_validation + config.silent_holdout
        # Slack: random windows may be silent ones already taken.
        self.silent = Reservoir(n_features, n_silent + n_random if n_silent else 0, ctx_len, device)
        self.max = torch.full((n_features,), -math.inf, device=device)
        self.sum = torch.zeros(n_features, dtype=torch.float64, device=device)
        self.bins = config.histogram_bins
        self.hist = torch.zeros((n_features, self.bins), dtype=torch.long, device=device)
        self.hist_top = torch.zeros(n_features, device=device)  # upper edge; doubles as needed
        self.tokens = 0

    def state(self) -> dict[str, Any]:
        """Everything a resumed pass needs to continue exactly where this one stopped."""
        return {
            "top": self.top.state(), "pool": self.pool.state(), "random": self.random.state(),
            "silent": self.silent.state(),
            "max": self.max, "sum": self.sum, "hist": self.hist, "hist_top": self.hist_top,
            "tokens": self.tokens, "generator": self.generator.get_state(),
            **({"layers": self.layers.values} if self.layers is not None else {}),
        }  # fmt: skip

    def load(self, state: dict[str, Any]) -> None:
        for name in ("top", "pool", "random", "silent"):
            getattr(self, name).load(state[name])
        device = self.max.device
        self.max, self.sum = state["max"].to(device), state["sum"].to(device)
        self.hist, self.hist_top = state["hist"].to(device), state["hist_top"].to(device)
        self.tokens = state["tokens"]
        self.generator.set_state(state["generator"])
        if self.layers is not None:
            self.layers.values = state["layers"].to(device)

    def update(self, acts: torch.Tensor, valid: torch.Tensor, window_ids: torch.Tensor) -> None:
        """acts [F, B, T] feature activations, feature-major (`Source.encode(...,
        feature_major=True)`), valid [B, T], window_ids [B] (global indices)."""
        n_features = acts.shape[0]
        padded = not bool(valid.all())
        masked = acts.masked_fill(~valid, -math.inf) if padded else acts
        window_max = masked.amax(dim=2)  # [F, B]
        # Each feature's activations along a window, contiguous: reservoirs copy whole strips.
        strips = acts.to(torch.float16, memory_format=torch.contiguous_format)
        self.top.update(window_max, window_max, strips, window_ids)
        if self.pool.size:
            keys = torch.rand(window_max.shape, generator=self.generator, device=acts.device)
            keys = keys.masked_fill(window_max <= 0, -math.inf)
            self.pool.update(keys, window_max, strips, window_ids)
        if self.random.size:
            keys = torch.rand(window_max.shape, generator=self.generator, device=acts.device)
            self.random.update(keys, window_max, strips, window_ids)
        if self.silent.size:
            keys = torch.rand(window_max.shape, generator=self.generator, device=acts.device)
            keys = keys.masked_fill(window_max > 0, -math.inf)
            self.silent.update(keys, window_max, strips, window_ids)
        batch_max = window_max.amax(dim=1)
        self.max = torch.maximum(self.max, batch_max)
        flat = masked.reshape(n_features, -1)
        summed = acts.masked_fill(~valid, 0) if padded else acts
        ones = torch.ones(flat.shape[1], 1, device=acts.device, dtype=acts.dtype)
        self.sum += (summed.reshape(n_features, -1) @ ones)[:, 0].double()  # a GEMV: fastest sum
        positive = flat > 0
        self.tokens += int(valid.sum())
        self._histogram(flat, positive, batch_max)

    def _histogram(self, flat: torch.Tensor, positive: torch.Tensor, batch_max: torch.Tensor):
        """Count positive activations into bins of [0, hist_top], doubling hist_top as needed."""
        fresh = (self.hist_top == 0) & (batch_max > 0)
        self.hist_top[fresh] = torch.exp2(torch.ceil(torch.log2(batch_max[fresh])))
        while True:
            grow = batch_max > self.hist_top
            if not grow.any():
                break
            halves = self.hist[grow].view(-1, self.bins // 2, 2).sum(dim=2)
            self.hist[grow] = torch.cat([halves, torch.zeros_like(halves)], dim=1)
            self.hist_top[grow] *= 2
        scale = self.bins / self.hist_top.clamp(min=1e-30)
        # Only positive activations are counted: gather them first (a fifth of all, or less).
        features, tokens = positive.nonzero(as_tuple=True)
        index = (flat[features, tokens] * scale[features]).clamp_(max=self.bins - 0.5).long()
        index += features * self.bins
        counts = torch.bincount(index, minlength=flat.shape[0] * self.bins)
        self.hist += counts.view(flat.shape[0], self.bins)

    def histograms(self) -> list[dict[str, Any] | None]:
        """Per feature {"edges", "counts"} of its positive activations (None if never positive),
        trailing empty bins dropped."""
        counts, tops = self.hist.cpu().numpy(), self.hist_top.cpu().tolist()
        used = np.where(counts.any(axis=1), self.bins - np.argmax(counts[:, ::-1] > 0, axis=1), 0)
        return [
            None if top == 0 else {
                "edges": [top * i / self.bins for i in range(n + 1)],
                "counts": row[:n].tolist(),
            }
            for row, top, n in zip(counts, tops, used.tolist(), strict=True)
        ]  # fmt: skip


# ---------------------------------------------------------------- choosing examples


class Samples:
    """A finished pass's reservoirs, each row's slots in key order, made once per chunk.

    Keys, windows and maxes ([features, slots]) come to the host; the activations stay
    where the pass ran, and only the chosen examples' are copied back (`acts`).
    """

    def __init__(self, miner: FeatureMiner):
        self.config = miner.config
        self.reservoirs: dict[str, tuple[np.ndarray, ...]] = {}
        self._acts: dict[str, torch.Tensor] = {}
        for name in RESERVOIRS:
            res: Reservoir = getattr(miner, name)
            order = torch.argsort(res.keys, dim=1, descending=True)
            self.reservoirs[name] = tuple(
                t.cpu().numpy()
                for t in (order, torch.gather(res.keys, 1, order),
                          torch.gather(res.windows, 1, order), torch.gather(res.maxes, 1, order))
            )  # fmt: skip
            self._acts[name] = res.acts
        self.span = 1 + max(int(r[2].max(initial=-1)) for r in self.reservoirs.values())
        self.ctx_len = miner.top.acts.shape[2]

    def acts(self, name: str, rows: np.ndarray, slots: np.ndarray) -> np.ndarray:
        """[len(rows), ctx_len] float16: the activations held in these (row, slot) pairs."""
        acts = self._acts[name]
        flat = rows * acts.shape[1] + slots
        if acts.device.type == "cpu":  # numpy gathers float16 rows several times faster
            return acts.numpy().reshape(-1, acts.shape[2]).take(flat, axis=0)
        index = torch.from_numpy(flat).to(acts.device)
        return acts.view(-1, acts.shape[2]).index_select(0, index).cpu().numpy()


RESERVOIRS = ("top", "pool", "random", "silent")


@dataclass
class Chosen:
    """The examples chosen for a group of features, one entry each, ordered by feature.

    `rows` are positions in the group's rows, `windows` pass window numbers, `splits`
    and `kinds` the store's codes (SPLITS, kind_code); `acts` [n, ctx_len] float16."""

    rows: np.ndarray
    windows: np.ndarray
    splits: np.ndarray
    kinds: np.ndarray
    ranks: np.ndarray
    max_acts: np.ndarray
    acts: np.ndarray


def choose_examples(samples: Samples, rows: np.ndarray, indices: Sequence[int]) -> Chosen:
    """Split the samples of a group of features (`rows` of the chunk; `indices` their
    feature indices) into disjoint explain, validation and holdout examples, all features
    at once.

    Per feature, in this order, each taking only windows not taken before: top windows
    (held-out ranks spread over the top range, so every split spans it), random and
    silent windows for holdout then validation, quantile samples, then random and silent
    windows to explain. Held-out splits are filled first where windows are scarce (a small
    corpus, a rare feature): scores need them more than the explainer needs more examples.
    Quantiles are equal-count bins of the sampled active windows, lowest first, each
    bin's order shuffled by the feature's own generator (seed, index), so a feature's
    choice does not depend on which chunk or group it is in.
    """
    c = samples.config
    n = len(rows)
    span = samples.span
    parts: list[tuple[str, np.ndarray, np.ndarray, int | np.ndarray, int | np.ndarray,
                      np.ndarray]] = []  # fmt: skip
    taken = [np.zeros(0, dtype=np.int64)]  # row * span + window of every window used

    def unused(windows: np.ndarray, valid: np.ndarray) -> np.ndarray:
        used = np.concatenate(taken)
        keys = np.arange(n)[:, None] * span + windows
        return valid & ~np.isin(keys, used)

    def take(name: str, mask: np.ndarray, split: int, kind, ranks: np.ndarray) -> None:
        """Take the masked [group, slot] entries; `kind` a code, or one per entry."""
        _, _, windows, _ = samples.reservoirs[name]
        r, position = mask.nonzero()
        kinds = kind[r, position] if isinstance(kind, np.ndarray) else kind
        parts.append((name, r, position, split, kinds, ranks[r, position]))
        taken.append(r * span + windows[rows][r, position])

    def sample(name: str, kind: str, split: str, count: int) -> None:
        if count <= 0 or samples.reservoirs[name][0].shape[1] == 0:
            return
        _, keys, windows, _ = samples.reservoirs[name]
        free = unused(windows[rows], keys[rows] > -math.inf)
        ranks = free.cumsum(axis=1) - 1
        take(name, free & (ranks < count), SPLITS.index(split), kind_code(kind), ranks)

    # Top windows: the table gives the split of each rank for each number of top windows.
    _, keys, _, _ = samples.reservoirs["top"]
    active = keys[rows] > 0
    splits = _spread_table(c, keys.shape[1])[active.sum(axis=1)]
    for code in range(len(SPLITS)):
        mine = active & (splits == code)
        take("top", mine, code, kind_code("top"), mine.cumsum(axis=1) - 1)
    for split in ("holdout", "validation"):
        sample("random", "random", split, getattr(c, f"random_{split}"))
        sample("silent", "silent", split, getattr(c, f"silent_{split}"))
    if c.quantile_pool and c.quantiles:
        _quantiles(samples, rows, indices, unused, take)
    sample("random", "random", "explain", c.random_explain)
    sample("silent", "silent", "explain", c.silent_explain)

    names = np.concatenate([np.full(len(p[1]), RESERVOIRS.index(p[0])) for p in parts])
    r = np.concatenate([p[1] for p in parts])
    positions = np.concatenate([p[2] for p in parts])
    splits_ = np.concatenate([np.broadcast_to(p[3], len(p[1])) for p in parts])
    kinds = np.concatenate([np.broadcast_to(p[4], len(p[1])) for p in parts])
    ranks = np.concatenate([p[5] for p in parts])
    by_row = np.argsort(r, kind="stable")
    names, r, positions = names[by_row], r[by_row], positions[by_row]
    windows = np.zeros(len(r), dtype=np.int64)
    max_acts = np.zeros(len(r), dtype=np.float32)
    acts = np.zeros((len(r), samples.ctx_len), dtype=np.float16)
    for code, name in enumerate(RESERVOIRS):
        at = names == code
        if not at.any():
            continue
        order, _, res_windows, maxes = samples.reservoirs[name]
        windows[at] = res_windows[rows[r[at]], positions[at]]
        max_acts[at] = maxes[rows[r[at]], positions[at]]
        acts[at] = samples.acts(name, rows[r[at]], order[rows[r[at]], positions[at]])
    return Chosen(r, windows, splits_[by_row].astype(np.uint8), kinds[by_row].astype(np.uint16),
                  ranks[by_row].astype(np.uint32), max_acts, acts)  # fmt: skip


def _quantiles(samples: Samples, rows: np.ndarray, indices: Sequence[int], unused, take) -> None:
    """Cut each feature's unused pool windows into equal-count bins of their max activation
    and deal each shuffled bin to holdout, validation and explain."""
    c = samples.config
    _, keys, windows, maxes = samples.reservoirs["pool"]
    free = unused(windows[rows], keys[rows] > -math.inf)
    # Free windows first, lowest max first, ties in key order (a stable sort).
    by_max = np.argsort(np.where(free, maxes[rows], np.inf), axis=1, kind="stable")
    counts = free.sum(axis=1)
    # np.array_split's bins of m positions: the first m % Q hold one more.
    base, extra = (x[:, None] for x in np.divmod(counts, c.quantiles))
    position = np.arange(by_max.shape[1])[None, :]
    big = extra * (base + 1)  # positions in the larger bins
    bins = np.where(
        position < big, position // (base + 1), extra + (position - big) // np.maximum(base, 1)
    )
    places = position - (bins * base + np.minimum(bins, extra))  # place within its bin
    dealt = np.full(by_max.shape, -1, dtype=np.int64)  # position -> place in its shuffled bin
    for i in np.flatnonzero(counts):
        rng = np.random.default_rng([c.seed, indices[i]])
        m, b, e = int(counts[i]), int(base[i, 0]), int(extra[i, 0])
        starts = [q * b + min(q, e) for q in range(min(c.quantiles, m))]
        shuffled = [start + rng.permutation(b + (q < e)) for q, start in enumerate(starts)]
        dealt[i, np.concatenate(shuffled)] = places[i, :m]  # as np.array_split + permutation
    per_bin = (("holdout", c.quantile_holdout), ("validation", c.quantile_validation),
               ("explain", c.quantile_explain))  # fmt: skip
    first = 0
    for split, count in per_bin:
        within = (dealt >= first) & (dealt < first + count)
        r, sorted_at = within.nonzero()
        slot = by_max[r, sorted_at]  # the pool slot, in key order
        mask = np.zeros_like(within)
        mask[r, slot] = True
        ranks = np.zeros(within.shape, dtype=np.int64)
        ranks[r, slot] = dealt[r, sorted_at] - first
        kinds = np.zeros(within.shape, dtype=np.int64)
        kinds[r, slot] = bins[r, sorted_at] + kind_code("quantile:1")
        take("pool", mask, SPLITS.index(split), kinds, ranks)
        first += count


def _spread_table(c: MiningConfig, slots: int) -> np.ndarray:
    """[slots + 1, slots]: for n active top windows, the split code of each of the n ranks."""
    wanted = c.top_explain + c.top_validation + c.top_holdout
    table = np.zeros((slots + 1, slots), dtype=np.int64)
    for n in range(slots + 1):
        share = min(1.0, n / wanted) if wanted else 0.0  # scarce: each split its share
        held = (round(share * c.top_holdout), round(share * c.top_validation))
        table[n, :n] = [SPLITS.index(s) for s in _spread(n, *held)]
    return table


def _spread(n: int, holdout: int, validation: int) -> list[str]:
    """The split of each of `n` top ranks: `holdout` and `validation` ranks spread evenly
    over the range, the rest `explain`."""
    splits = ["explain"] * n
    for split, count in (("holdout", holdout), ("validation", validation)):
        free = [i for i, s in enumerate(splits) if s == "explain"]
        count = min(count, len(free))
        for k in range(count):
            splits[free[(2 * k + 1) * len(free) // (2 * count)]] = split
    return splits


# ---------------------------------------------------------------- the mine stage


def mining_points(subject: Subject, source: Source, hook: str) -> list[str]:
    """The hook points a pass over `source` at `hook` reads, shallowest first.

    Several points make one feature set only for a dictionary shared by them: the
    neurons (or one SAE) of several layers are different features, so such a spec is
    refused rather than mixed into one.
    """
    points = subject.parse_hooks(hook)
    if source.encoders:
        missing = [p for p in points if p not in source.encoders]
        if missing:
            raise InputError(
                f"the dictionary at {source.path or 'this source'} reads "
                f"{', '.join(source.hooks)}, not {', '.join(missing)}; mine it at those points"
            )
    elif len(points) > 1:
        raise InputError(
            f"hook {hook!r} names {len(points)} points, but a {source.kind} source reads one; "
            "give one point (e.g. layer.3.mlp), or a dictionary trained on all of them"
        )
    return points


def encode_points(
    source: Source,
    captured: dict[str, torch.Tensor],
    points: Sequence[str],
    features: torch.Tensor | None = None,
    layers: LayerMap | None = None,
    valid: torch.Tensor | None = None,
    *,
    where: bool = False,
    feature_major: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Feature activations, the largest over `points`, and with `where` (several points) the
    index of the point each is largest at; `layers` (feature-major acts only) takes in each
    point's own activations."""
    if len(points) == 1:
        acts = source.encode(captured[points[0]], features, points[0], feature_major=feature_major)
        return acts, None
    best = at = None
    for i, point in enumerate(points):
        acts = source.encode(captured.pop(point), features, point, feature_major=feature_major)
        if layers is not None:
            layers.update(i, acts, valid)
        if best is None:
            best = acts
            if where:
                at = torch.zeros(acts.shape, dtype=torch.uint8, device=acts.device)
        else:
            if at is not None:
                at.masked_fill_(acts > best, i)
            best = torch.maximum(best, acts, out=best)
    return best, at


def text_activations(
    subject: Subject, source: Source, hook: str, text: str, features: Sequence[int] | None = None
) -> tuple[list[str], torch.Tensor, list[str], torch.Tensor | None]:
    """(tokens, activations [n_tokens, n_features], the points read, and for several points
    the index of the point where each activation is largest), from one forward pass."""
    points = mining_points(subject, source, hook)
    ids = subject.encode(text)[: min(512, subject.max_text_tokens)]
    if not ids:
        raise InputError("the text has no tokens; give some text to run")
    captured = subject.activations(torch.tensor([ids]), None, points)
    captured = {point: acts[0].cpu() for point, acts in captured.items()}
    index = None if features is None else torch.tensor(list(features))
    acts, at = encode_points(source, captured, points, index, where=True)
    return subject.token_strings(ids), acts, points, at


def mine(
    store: Store,
    subject: Subject,
    source: Source,
    hook: str,
    corpus: Corpus,
    config: MiningConfig | None = None,
    features: Sequence[int] | None = None,
    *,
    force: bool = False,
    progress: bool = True,
    on_write: Callable[[list[int]], None] | None = None,
    parent_run_id: int | None = None,
) -> MiningResult:
    """Mine `features` (default: all) of `source` at `hook` over the corpus into the store.

    The pass is recorded as a `mine` run (inside `parent_run_id`'s nightly run, if given)
    that ends done, failed or interrupted, or is found abandoned if the process dies.
    """
    config = config or MiningConfig()
    hook = subject.canonical_hook(hook)
    points = mining_points(subject, source, hook)
    started = time.perf_counter()
    wanted = list(range(source.width)) if features is None else sorted(set(features))
    bad = [i for i in wanted if not 0 <= i < source.width]
    if bad:
        raise InputError(
            f"feature {bad[0]} is out of range: the source has features 0..{source.width - 1}"
        )
    subject_id = store.get_or_create_subject(**subject.identity())
    source_id = store.get_or_create_source(
        subject_id, hook, source.kind, source.width, source.params_hash,
        path=source.path, config=source.config,
    )  # fmt: skip
    done = store.feature_statuses(source_id)
    todo = wanted if force else [i for i in wanted if done.get(i) not in ("mined", "dead")]
    if todo and corpus.n_windows == 0:
        corpus.scan()
    run_config = {
        "model": subject.name,
        "revision": subject.revision,
        "hook": hook,
        "source": source.kind,
        "source_path": source.path,
        "features": [wanted[0], wanted[-1] + 1] if wanted else [],
        "corpus": corpus.record(),
        "mining": config.to_dict(),
    }
    skipped = sorted(set(wanted) - set(todo))
    stale = mined_otherwise(store, source_id, skipped, corpus.config, config)
    with heartbeat(store) as holder:
        sweep(store)
        run_id = store.start_run("mine", run_config, parent_id=parent_run_id, holder=holder)
        result = MiningResult(source_id, run_id, 0, 0, len(skipped), 0, 0, 0.0, stale=stale)
        try:
            with ExitStack() as stack:
                cache = None
                units = list(_units(todo, config.feature_chunk))
                if len(units) > 1 and PassCache.fits(subject, points, corpus):  # replay a pass
                    cache = stack.enter_context(PassCache.temporary())
                # A chunk's examples are chosen and written while the next chunk's pass runs.
                writer = stack.enter_context(
                    ThreadPoolExecutor(max_workers=1, thread_name_prefix="gloss-mine-chunk")
                )
                written = None
                stored = StoredWindows(store, subject, subject_id)
                for first, unit in units:
                    chunk = _claim_unit(store, source_id, first, unit, config, holder, run_id,
                                        force)  # fmt: skip
                    result.elsewhere += len(unit) - len(chunk)
                    if not chunk:
                        continue
                    write = _mine_chunk(store, subject, source, hook, points, corpus, config,
                                        chunk, stored, source_id, run_id, result, progress,
                                        on_write, cache)  # fmt: skip
                    if written is not None:
                        written.result()
                    written = writer.submit(write)
                if written is not None:
                    written.result()
        except BaseException as error:
            status = "interrupted" if isinstance(error, KeyboardInterrupt) else "failed"
            store.drop_claims(holder)
            store.finish_run(run_id, status, str(error)[:2000] or type(error).__name__,
                             counts=_counts(result))  # fmt: skip
            raise
        store.drop_claims(holder)
        result.seconds = time.perf_counter() - started
        store.finish_run(run_id, "done", counts=_counts(result))
    return result


def _units(todo: Sequence[int], size: int) -> Iterator[tuple[int, list[int]]]:
    """(first index, features of `todo` in it) of each unit of `size` features: units are
    fixed blocks of the index range, so every process mining a source draws the same."""
    for key, unit in groupby(todo, key=lambda i: i // size):
        yield key * size, list(unit)


def _claim_unit(store, source_id, first, unit, config, holder, run_id, force) -> list[int]:
    """The features of `unit` this process mines: none if another live process holds an
    overlapping unit; else those still unmined once the lease is held (another process
    may have finished them since this one listed its work), or all of them with `force`."""
    if not store.claim_unit(source_id, first, config.feature_chunk, holder, run_id=run_id,
                            lease_s=LEASE_S):  # fmt: skip
        return []
    if force:
        return unit
    now = store.feature_statuses(source_id, unit)
    return [i for i in unit if now.get(i) not in ("mined", "dead")]


def _counts(result: MiningResult) -> dict[str, Any]:
    return {
        "features": result.features,
        "dead": result.dead,
        "skipped": result.skipped,
        "stale": len(result.stale),
        "elsewhere": result.elsewhere,
        "tokens": result.tokens,
        "windows": result.windows,
    }


# Settings that change how a pass runs, not what it finds.
_OPERATIONAL = ("batch_size", "feature_chunk", "write_every", "checkpoint_every_s")


def mined_otherwise(
    store: Store,
    source_id: int,
    indices: Sequence[int] | None,
    corpus: CorpusConfig,
    config: MiningConfig,
) -> list[int]:
    """Those of `indices` (None: all), already mined, whose run read another corpus or used
    other settings.

    They keep their examples (a rerun skips mined features); the warning logged here
    says how to mine them again. Only settings are compared: the corpus is not rescanned.
    """

    def what(corpus_settings: dict[str, Any], mining: dict[str, Any]) -> tuple:
        corpus_settings = {k: corpus_settings.get(k) for k in CorpusConfig.__dataclass_fields__}
        corpus_settings["paths"] = list(corpus_settings["paths"] or [])
        return corpus_settings, {k: v for k, v in mining.items() if k not in _OPERATIONAL}

    wanted = what(corpus.to_dict(), config.to_dict())
    runs = store.mining_runs(source_id)
    differs: dict[int | None, bool] = {}
    stale = []
    for index in sorted(runs) if indices is None else indices:
        run_id = runs.get(index)
        if run_id not in differs:
            previous = store.run(run_id).config if run_id is not None else {}
            differs[run_id] = bool(previous) and (
                what(previous.get("corpus", {}), previous.get("mining", {})) != wanted
            )
        if differs[run_id]:
            stale.append(index)
    if stale:
        log.warning(
            "%d already mined features were mined over another corpus or with other mining "
            "settings and keep those examples; `gloss mine --force` mines them again",
            len(stale),
        )
    return stale


def _mine_chunk(
    store, subject, source, hook, points, corpus, config, chunk, stored, source_id, run_id,
    result, progress, on_write, cache=None,
) -> Callable[[], None]:  # fmt: skip
    """One pass over the corpus for a block of features; returns what writes them in groups.

    With a `cache`, the first chunk's pass records each batch's hook activations and the
    later chunks replay them: the model runs once, however many chunks there are.
    """
    from tqdm.auto import tqdm

    ctx_len = corpus.config.ctx_len
    miner = FeatureMiner(len(chunk), ctx_len, config, subject.device, n_points=len(points))
    index = None if len(chunk) == source.width else torch.tensor(chunk, device=subject.device)
    tokens: dict[int, np.ndarray] = {}  # token ids of the windows the reservoirs hold
    docs: dict[int, tuple[str, int]] = {}
    seen = n_tokens = 0
    windows = iter(corpus)
    fingerprint = hashlib.sha256()  # of every window seen: a resume must see the same ones
    checkpoint = Checkpoint(store, subject, source_id, hook, corpus, config, chunk)
    checkpoint.discard_stale()
    state = checkpoint.load()
    if state is not None:
        for window in islice(windows, state["seen"]):
            fingerprint.update(np.asarray(window.token_ids, dtype=np.int32).tobytes())
        if fingerprint.hexdigest() == state["fingerprint"]:
            miner.load(state["miner"])
            tokens = {w: t.numpy() for w, t in state["tokens"].items()}
            docs, seen, n_tokens = state["docs"], state["seen"], state["n_tokens"]
            log.info("resuming the pass over %d features after %d windows", len(chunk), seen)
        else:
            log.warning("the corpus changed since the mining checkpoint: starting the pass over")
            windows, fingerprint = iter(corpus), hashlib.sha256()
    saved_at = time.monotonic()
    next_prune = 10_000
    bar = tqdm(
        total=corpus.n_windows, initial=seen, unit="win", disable=not progress,
        desc=f"mining {len(chunk)} feat",
    )  # fmt: skip
    replay = cache is not None and cache.complete and seen == 0
    record = cache is not None and not cache.complete and seen == 0
    for ids, valid, batch, captured in (
        cache.replay(subject.device) if replay else _forward(subject, windows, config, points)
    ):
        if record:
            cache.record(ids, valid, batch, captured)
        mask = valid.to(subject.device)
        acts, _ = encode_points(source, captured, points, index, miner.layers, mask,
                                feature_major=True)  # fmt: skip
        window_ids = torch.arange(seen, seen + len(batch), device=acts.device)
        miner.update(acts, valid.to(acts.device), window_ids)
        for offset, window in enumerate(batch):
            tokens[seen + offset] = np.asarray(window.token_ids, dtype=np.int32)
            docs[seen + offset] = (window.doc_id, window.offset)
            fingerprint.update(tokens[seen + offset].tobytes())
        seen += len(batch)
        n_tokens += int(valid.sum())
        if len(tokens) > next_prune:
            _forget_unused(miner, tokens, docs)
            next_prune = 2 * len(tokens) + 10_000
        if time.monotonic() - saved_at >= config.checkpoint_every_s:
            _forget_unused(miner, tokens, docs)
            checkpoint.save(miner, tokens, docs, seen, n_tokens, fingerprint.hexdigest())
            saved_at = time.monotonic()
        bar.update(len(batch))
    bar.close()
    if record:
        cache.complete = True
    if seen == 0:
        raise InputError("the corpus gave no windows; give text with at least one window in it")
    result.tokens, result.windows = n_tokens, seen
    _forget_unused(miner, tokens, docs)
    return partial(_write_chunk, store, subject, miner, chunk, points, tokens, docs, config,
                   stored, source_id, run_id, result, checkpoint, on_write)  # fmt: skip


class StoredWindows:
    """Pass window number -> store row, shared by every chunk of a mine: a window is
    decoded and stored once per mine, not once per chunk that shows it."""

    def __init__(self, store: Store, subject: Subject, subject_id: int):
        self.store, self.subject, self.subject_id = store, subject, subject_id
        self.stored = np.zeros(0, dtype=np.int64)

    def rows(self, windows: np.ndarray, tokens: dict, docs: dict) -> np.ndarray:
        """The store rows of these pass windows, storing those not stored yet."""
        if len(windows) and windows.max() >= len(self.stored):
            grown = np.full(int(windows.max()) + 1, -1, dtype=np.int64)
            grown[: len(self.stored)] = self.stored
            self.stored = grown
        new = np.unique(windows[self.stored[windows] < 0]).tolist()
        if new:
            self.stored[new] = self.store.add_windows(self.subject_id, [
                WindowIn(docs[w][0], docs[w][1], tokens[w].tolist(),
                         self.subject.token_strings(tokens[w]))
                for w in new
            ])  # fmt: skip
        return self.stored[windows]


def _write_chunk(
    store, subject, miner, chunk, points, tokens, docs, config, stored, source_id, run_id,
    result, checkpoint, on_write,
) -> None:  # fmt: skip
    """Choose and write a mined chunk's features in groups of `write_every`, each group one
    transaction. A writer thread stores a group while the next group's examples are
    chosen; windows are decoded and stored once per mine (`stored`)."""
    lengths = np.zeros(1 + max(tokens, default=0), dtype=np.int64)
    lengths[list(tokens)] = [len(t) for t in tokens.values()]
    layer_means = miner.layers.means().T.tolist() if miner.layers is not None else None
    samples = Samples(miner)
    maxes, sums = miner.max.tolist(), miner.sum.tolist()
    positives = miner.hist.sum(dim=1).tolist()  # every positive activation is in a bin
    histograms = miner.histograms()
    n_tokens = max(miner.tokens, 1)
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="gloss-mine-writer") as writer:
        pending = None
        for start in range(0, len(chunk), config.write_every):
            rows = np.arange(start, min(start + config.write_every, len(chunk)))
            chosen = choose_examples(samples, rows, [chunk[f] for f in rows])
            if pending is not None:
                pending.result()  # one writer at a time: the windows below need the lock
            rows_of = stored.rows(chosen.windows, tokens, docs)
            sizes = lengths[chosen.windows]
            acts = chosen.acts[np.arange(chosen.acts.shape[1]) < sizes[:, None]]
            ends = np.searchsorted(chosen.rows, np.arange(len(rows)), side="right")
            act_ends = np.concatenate([[0], sizes.cumsum()])[ends]
            mined = []
            for i, f in enumerate(rows):
                at = slice(ends[i - 1] if i else 0, ends[i])
                examples = ExampleSet(
                    rows_of[at], chosen.splits[at], chosen.kinds[at],
                    chosen.ranks[at], chosen.max_acts[at], sizes[at].astype(np.uint32),
                    acts[(act_ends[i - 1] if i else 0) : act_ends[i]],
                )  # fmt: skip
                mined.append(MinedFeature(
                    index=chunk[f], max_act=maxes[f], mean_act=sums[f] / n_tokens,
                    density=positives[f] / n_tokens, n_tokens=miner.tokens,
                    histogram=histograms[f],
                    layers=(dict(zip(points, layer_means[f], strict=True))
                            if layer_means is not None else None),
                    examples=examples,
                ))  # fmt: skip
            pending = writer.submit(
                _write_group, store, source_id, run_id, mined, result, checkpoint, on_write
            )
        if pending is not None:
            pending.result()


def _write_group(store, source_id, run_id, mined, result, checkpoint, on_write) -> None:
    store.write_mined_features(source_id, mined, run_id)
    dead = [m.index for m in mined if m.max_act <= 0]
    result.features += len(mined)
    result.dead += len(dead)
    result.dead_indices += dead
    store.update_run(run_id, counts=_counts(result))
    checkpoint.remove()  # written features are skipped by a rerun: the pass is not needed
    if on_write is not None:
        on_write([m.index for m in mined])


def _forward(
    subject: Subject, windows: Iterable[Window], config: MiningConfig, points: list[str]
) -> Iterator[tuple[torch.Tensor, torch.Tensor, list[Window], dict[str, torch.Tensor]]]:
    """(ids, valid, windows, hook activations) of each batch, from the model."""
    for ids, valid, batch in iter_batches(subject, windows, config.batch_size):
        yield ids, valid, batch, subject.activations(ids, valid.long(), points)


def _forget_unused(miner: FeatureMiner, tokens: dict, docs: dict) -> None:
    """Drop the tokens of windows no reservoir holds any more (keeps memory flat)."""
    reservoirs = (miner.top, miner.pool, miner.random, miner.silent)
    held = torch.cat([r.windows.flatten() for r in reservoirs])
    keep = set(torch.unique(held).tolist())
    for w in [w for w in tokens if w not in keep]:
        del tokens[w]
        del docs[w]


class Checkpoint:
    """A pass's streaming state on disk, so an interrupted pass resumes mid-corpus.

    The file (under $GLOSS_CACHE/mining) is keyed by everything that determines the
    pass: database, subject, source, hook, features, corpus sample and mining settings.
    A rerun with the same key skips the windows already seen (checking they are the
    same windows) and continues with the same random state, so its result equals an
    uninterrupted pass. The file name starts with the key's place (database, source,
    hook, features): a pass over the same place with another corpus, model or
    settings could never resume the older file, so it deletes it.
    """

    def __init__(self, store, subject, source_id, hook, corpus, config, chunk):
        place = {
            "database": store.engine.url.render_as_string(hide_password=True),
            "source_id": source_id, "hook": hook,
            "features": hashlib.sha256(np.asarray(chunk, dtype=np.int64).tobytes()).hexdigest(),
        }  # fmt: skip
        settings = {k: v for k, v in config.to_dict().items() if k != "checkpoint_every_s"}
        identity = {
            **place, "subject": subject.identity(), "corpus": corpus.record(), "mining": settings
        }  # fmt: skip
        self.place, key = _digest(place)[:16], _digest(identity)[:32]
        self.path = cache_dir() / "mining" / f"{self.place}-{key}.pt"

    def discard_stale(self) -> None:
        """Delete the checkpoints no pass can resume: this place's under other settings,
        and those named by key alone (written before file names held places)."""
        for other in self.path.parent.glob("*.pt"):
            place = other.stem.split("-")[0] if "-" in other.stem else None
            if other != self.path and place in (self.place, None):
                log.info("deleting a mining checkpoint no pass can resume: %s", other)
                other.unlink(missing_ok=True)

    def load(self) -> dict[str, Any] | None:
        if not self.path.exists():
            return None
        try:
            return torch.load(self.path, map_location="cpu", weights_only=True)
        except Exception as error:  # a torn or foreign file: start the pass over
            log.warning("ignoring unreadable mining checkpoint %s: %s", self.path, error)
            return None

    def save(self, miner, tokens: dict, docs: dict, seen: int, n_tokens: int, fingerprint: str):
        self.path.parent.mkdir(parents=True, exist_ok=True)
        state = {
            "miner": miner.state(), "seen": seen, "n_tokens": n_tokens, "docs": docs,
            "tokens": {w: torch.from_numpy(t) for w, t in tokens.items()},
            "fingerprint": fingerprint,
        }  # fmt: skip
        partial = Path(f"{self.path}.partial")
        torch.save(state, partial)
        os.replace(partial, self.path)  # a crash while saving leaves the previous checkpoint

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)


def _digest(value: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()
