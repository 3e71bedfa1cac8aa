"""Dictionary learning: a TopK sparse autoencoder trained on activations streamed from the corpus.

One dictionary may be shared by several hook points (Yun et al. 2021): every point's
activations are scaled to one common size (s_l = sqrt(d_in) / mean |x_l|, measured on
the first block) and every vector of every point is a training example of the same
latents. The architecture and training recipe follow Gao et al. 2024 ("Scaling and
evaluating sparse autoencoders") and EleutherAI's sparsify:

    z     = topk_k(relu((x - b_dec) @ W_enc + b_enc))
    x_hat = z @ W_dec + b_dec            decoder rows kept at unit norm
    loss  = |x - x_hat|^2 / |x - mean x|^2  +  1/32 * aux

where `aux` asks the aux_k most active *dead* latents to reconstruct the residual
error, which brings them back. Only the k chosen latents take part in the backward
pass (sparse products instead of [batch, width] matrices), so a step costs about one
dense encoder product.

The stream is cut into blocks of `buffer_tokens` activation vectors: a block is read
(forward passes stopped at the deepest point), shuffled with a seeded permutation and
trained on, batch by batch. Block boundaries are where checkpoints are taken: the
model, the optimizer, the random state and the stream position are all that a resumed
run needs, so it ends with the weights an uninterrupted run ends with.

Held-out windows (a seeded sample of `holdout_tokens`, never trained on) give the
quality figures: FVU, mean L0, the share of dead latents, and for causal subjects the
language-model loss with the reconstruction spliced in.

The result is saved as one SAELens folder per hook point with the point's scale folded
into the weights, plus `gloss_dictionary.json` (see `save_dictionary`).
"""

from __future__ import annotations

import hashlib
import heapq
import json
import logging
import math
import os
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from gloss.pipeline.corpus import Corpus, Window
from gloss.pipeline.liveness import heartbeat, sweep
from gloss.pipeline.mining import iter_batches
from gloss.pipeline.settings import LearnConfig
from gloss.pipeline.sources import Source, load_source
from gloss.pipeline.subjects import Subject, cache_dir, hook_spec
from gloss.store import Store
from gloss.store.errors import InputError

log = logging.getLogger(__name__)

FORMAT = 1
MANIFEST = "gloss_dictionary.json"
AUX_COEF = 1 / 32  # Gao et al. 2024
FORWARD_TOKENS = 8192  # corpus tokens per forward pass of the subject
LM_LOSS_TOKENS = 4096  # held-out tokens the spliced LM loss is measured on (a forward per point)
WARMUP = 0.05  # share of the training tokens over which the learning rate rises
DECAY = 0.2  # share at the end over which it falls linearly to 0


# ---------------------------------------------------------------- the model


class _Gather(torch.autograd.Function):
    """Values of relu(x @ W^T + b) at given latents, with sparse gradients.

    The dense pre-activations are computed once without autograd (to pick the latents);
    the backward pass touches only the chosen latents: grad W = G^T x with G holding
    k entries per row, as a sparse product.
    """

    @staticmethod
    def forward(ctx, x, weight, bias, pre, indices):  # type: ignore[override]
        values = pre.gather(1, indices)
        ctx.save_for_backward(x, weight, indices, values > 0)
        return values

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        x, weight, indices, positive = ctx.saved_tensors
        grad = (grad * positive).contiguous()
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_x = F.embedding_bag(indices, weight, mode="sum", per_sample_weights=grad)
        if ctx.needs_input_grad[1]:
            grad_w = grad_weight(indices, grad, x, weight.shape[0], dense=x.is_cuda)
        if ctx.needs_input_grad[2]:
            grad_b = torch.zeros(weight.shape[0], device=x.device, dtype=grad.dtype)
            grad_b.index_add_(0, indices.reshape(-1), grad.reshape(-1))
        return grad_x, grad_w, grad_b, None, None


def grad_weight(
    indices: torch.Tensor, grad: torch.Tensor, x: torch.Tensor, width: int, dense: bool
) -> torch.Tensor:
    """G^T x [width, d_in] for G [n, width] holding `grad` at `indices` (k per row): a
    sparse product on CPU, a dense one on GPUs, where it is faster."""
    n, k = indices.shape
    if dense:
        full = torch.zeros(n, width, device=x.device, dtype=grad.dtype)
        return full.scatter_(1, indices, grad).T @ x
    rows = torch.arange(n, device=x.device).repeat_interleave(k)
    sparse = torch.sparse_coo_tensor(
        torch.stack([indices.reshape(-1), rows]), grad.reshape(-1), (width, n),
        check_invariants=False,
    )  # fmt: skip
    return torch.sparse.mm(sparse, x)


class TopKSAE(nn.Module):
    """The trained module, in the units it trains on (each point's input times its scale)."""

    def __init__(self, d_in: int, width: int, k: int, seed: int = 0):
        super().__init__()
        self.d_in, self.width, self.k = d_in, width, k
        generator = torch.Generator().manual_seed(seed)
        directions = F.normalize(torch.randn(width, d_in, generator=generator), dim=1)
        self.W_enc = nn.Parameter(directions.clone())  # [width, d_in]: rows are W_enc's columns
        self.b_enc = nn.Parameter(torch.zeros(width))
        self.W_dec = nn.Parameter(directions.clone())  # [width, d_in], unit rows
        self.b_dec = nn.Parameter(torch.zeros(d_in))

    def pre_acts(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(F.linear(x - self.b_dec, self.W_enc, self.b_enc))

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(values, indices) [n, k] of the k strongest latents of each vector."""
        top = self.pre_acts(x).topk(self.k, dim=-1)
        return top.values, top.indices

    @torch.no_grad()
    def encode_dense(self, x: torch.Tensor) -> torch.Tensor:
        values, indices = self.encode(x)
        return torch.zeros(*x.shape[:-1], self.width, device=x.device).scatter_(-1, indices, values)

    def decode(self, values: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        return F.embedding_bag(indices, self.W_dec, mode="sum", per_sample_weights=values) + (
            self.b_dec
        )

    def loss(
        self, x: torch.Tensor, dead: torch.Tensor, n_dead: int, aux_k: int
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(loss, fvu, chosen latents [n, k]) of a batch; `dead` marks the n_dead latents
        the aux loss revives."""
        sae_in = x - self.b_dec
        with torch.no_grad():
            pre = torch.relu(F.linear(sae_in, self.W_enc, self.b_enc))
            indices = pre.topk(self.k, dim=-1, sorted=False).indices
        values = _Gather.apply(sae_in, self.W_enc, self.b_enc, pre, indices)
        x_hat = self.decode(values, indices)
        total = (x - x.mean(dim=0)).pow(2).sum().clamp_min(1e-12)
        fvu = (x_hat - x).pow(2).sum() / total
        loss = fvu
        if n_dead:
            taken = min(aux_k, n_dead)
            with torch.no_grad():
                aux_indices = pre.masked_fill(~dead, -1.0).topk(taken, dim=-1, sorted=False).indices
            aux_values = _Gather.apply(sae_in, self.W_enc, self.b_enc, pre, aux_indices)
            residual = (x - x_hat).detach()
            guess = F.embedding_bag(
                aux_indices, self.W_dec, mode="sum", per_sample_weights=aux_values
            )
            aux = (guess - residual).pow(2).sum() / total
            loss = loss + AUX_COEF * (taken / aux_k) * aux
        return loss, fvu.detach(), indices.detach()

    @torch.no_grad()
    def project_decoder_grad(self) -> None:
        """Drop the gradient part that would change a decoder row's norm (Gao et al.)."""
        if self.W_dec.grad is not None:
            along = (self.W_dec.grad * self.W_dec).sum(dim=1, keepdim=True)
            self.W_dec.grad -= along * self.W_dec

    @torch.no_grad()
    def normalize_decoder(self) -> None:
        self.W_dec /= self.W_dec.norm(dim=1, keepdim=True).clamp_min(1e-12)


# ---------------------------------------------------------------- the stream


def _window_key(seed: int, window: Window) -> float:
    key = f"{seed}\0holdout\0{window.doc_id}\0{window.offset}".encode()
    return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest()) / 2.0**64


def select_holdout(corpus: Corpus, tokens: int, seed: int) -> list[Window]:
    """A seeded sample of windows of about `tokens` tokens (at least one, at most half the
    windows) that training never reads."""
    if corpus.n_windows < 2:
        raise InputError(
            f"the corpus gave {corpus.n_windows} window; learning needs at least 2 "
            "(one is held out to measure quality): give more text"
        )
    most = corpus.n_windows // 2
    heap: list[tuple[float, int, Window]] = []  # (-key, order, window) of the kept windows
    kept = 0
    for order, window in enumerate(corpus):
        item = (-_window_key(seed, window), order, window)
        if len(heap) < most:
            heapq.heappush(heap, item)
            kept += len(window.token_ids)
        elif item > heap[0]:
            kept += len(window.token_ids) - len(heapq.heappushpop(heap, item)[2].token_ids)
        while len(heap) > 1 and kept - len(heap[0][2].token_ids) >= tokens:
            kept -= len(heapq.heappop(heap)[2].token_ids)
    return [w for _, _, w in sorted(heap, key=lambda item: item[1])]


class _Stream:
    """The training windows (the corpus less the held-out ones), pass after pass, with the
    position a checkpoint records and a fingerprint of the windows read in this pass."""

    def __init__(self, corpus: Corpus, held_out: set[tuple[str, int]]):
        self.corpus, self.held_out = corpus, held_out
        self.epoch, self.position = 0, 0
        self.fingerprint = hashlib.sha256()
        self._windows: Iterator[Window] = iter(())
        self._fresh = True

    def restore(self, epoch: int, position: int) -> str:
        """Skip to a checkpoint's position; returns the fingerprint of the windows skipped."""
        self.epoch, self.position = epoch, 0
        self._windows, self._fresh = self._training(), False
        for _ in range(position):
            self._next_in_epoch()
        return self.fingerprint.hexdigest()

    def _training(self) -> Iterator[Window]:
        return (w for w in self.corpus if (w.doc_id, w.offset) not in self.held_out)

    def _next_in_epoch(self) -> Window | None:
        window = next(self._windows, None)
        if window is not None:
            self.position += 1
            self.fingerprint.update(str(self.epoch).encode())
            self.fingerprint.update(repr(window.token_ids).encode())
        return window

    def next(self) -> Window:
        if self._fresh:
            self._windows, self._fresh = self._training(), False
        window = self._next_in_epoch()
        if window is None:
            if self.position == 0:
                raise InputError("no corpus windows are left for training after the held-out ones")
            self.epoch, self.position = self.epoch + 1, 0
            self.fingerprint = hashlib.sha256()
            log.info("the corpus is read again for training (pass %d)", self.epoch + 1)
            self._windows = self._training()
            window = self._next_in_epoch()
            assert window is not None
        return window


def _vectors(
    subject: Subject, hooks: Sequence[str], windows: list[Window], ctx_len: int
) -> dict[str, torch.Tensor]:
    """Each point's activations [n_tokens, d_in] of the windows' tokens (padding dropped)."""
    per_forward = max(1, FORWARD_TOKENS // ctx_len)
    parts: dict[str, list[torch.Tensor]] = {h: [] for h in hooks}
    for ids, valid, _ in iter_batches(subject, windows, per_forward):
        acts = subject.activations(ids, valid.long(), hooks)
        mask = valid.to(subject.device)
        for h in hooks:
            parts[h].append(acts[h][mask])
    return {h: torch.cat(p) for h, p in parts.items()}


# ---------------------------------------------------------------- training


@dataclass
class Trained:
    """A trained dictionary with what it was trained on."""

    model: TopKSAE
    hooks: list[str]
    scales: dict[str, float]
    tokens: int
    steps: int
    epochs: int
    seconds: float
    holdout: list[Window]
    resumed_from: int | None = None  # tokens done when a checkpoint was resumed
    history: list[float] = field(default_factory=list)  # training FVU per step


def dictionary_key(subject: Subject, hooks: Sequence[str], corpus: Corpus, config: LearnConfig):
    """What determines a trained dictionary: a second identical request reuses it."""
    settings = {k: v for k, v in config.to_dict().items() if k != "checkpoint_every_s"}
    settings["lr"] = config.learning_rate
    record = {
        "format": FORMAT,
        "subject": {"name": subject.name, "revision": subject.revision},
        "hooks": list(hooks),
        "corpus": corpus.record(),
        "learn": settings,
    }
    return hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()[:24]


def _lr_factor(done: float) -> float:
    """Linear warmup over the first WARMUP of training, linear decay over the last DECAY."""
    if done < WARMUP:
        return max(done / WARMUP, 0.01)
    if done > 1 - DECAY:
        return max((1 - done) / DECAY, 0.0)
    return 1.0


def train(
    subject: Subject,
    hook: str,
    corpus: Corpus,
    config: LearnConfig,
    *,
    checkpoint: Path | None = None,
    progress: bool = True,
    on_block: Callable[[int], None] | None = None,
) -> Trained:
    """Train a dictionary at the points `hook` names over the corpus (resuming from
    `checkpoint`); several points share one dictionary.

    `on_block(tokens_done)` is called after every block (and its checkpoint, if one is
    due): tests interrupt training there.
    """
    from tqdm.auto import tqdm

    started = time.perf_counter()
    hooks = subject.parse_hooks(hook)
    d_in = subject.hook_width(hook)
    if corpus.n_windows == 0:
        corpus.scan()
    holdout = select_holdout(corpus, config.holdout_tokens, config.seed)
    stream = _Stream(corpus, {(w.doc_id, w.offset) for w in holdout})
    device = subject.device
    model = TopKSAE(d_in, config.width, config.k, config.seed).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.learning_rate, betas=(0.9, 0.999))
    shuffle = torch.Generator().manual_seed(config.seed)
    since_fired = torch.zeros(config.width, dtype=torch.long, device=device)
    scales: dict[str, float] = {}
    tokens = steps = 0
    fvu_avg: float | None = None
    resumed_from = None
    history: list[float] = []
    state = _load_checkpoint(checkpoint)
    if state is not None:
        if stream.restore(state["epoch"], state["position"]) == state["fingerprint"]:
            model.load_state_dict({k: v.to(device) for k, v in state["model"].items()})
            optimizer.load_state_dict(state["optimizer"])
            shuffle.set_state(state["shuffle"])
            since_fired = state["since_fired"].to(device)
            scales, tokens, steps = state["scales"], state["tokens"], state["steps"]
            fvu_avg, history = state["fvu_avg"], state["history"]
            resumed_from = tokens
            log.info("resuming dictionary training after %d tokens (%d steps)", tokens, steps)
        else:
            log.warning("the corpus changed since the training checkpoint: starting over")
            stream = _Stream(corpus, stream.held_out)
    per_block = max(1, config.buffer_tokens // len(hooks))  # corpus tokens per block
    saved_at = time.monotonic()
    bar = tqdm(
        total=config.train_tokens, initial=min(tokens, config.train_tokens), unit="tok",
        disable=not progress, desc=f"learning {config.width} latents",
    )  # fmt: skip
    while tokens < config.train_tokens:
        want = min(per_block, config.train_tokens - tokens)
        windows: list[Window] = []
        got = 0
        while got < want:
            windows.append(stream.next())
            got += len(windows[-1].token_ids)
        raw = _vectors(subject, hooks, windows, corpus.config.ctx_len)
        if not scales:  # the first block fixes the common scale and the decoder bias
            for h in hooks:
                mean_norm = float(raw[h].norm(dim=1).mean())
                scales[h] = math.sqrt(d_in) / mean_norm if mean_norm > 0 else 1.0
        block = torch.cat([raw[h] * scales[h] for h in hooks])
        del raw
        if steps == 0:
            with torch.no_grad():
                model.b_dec.copy_(block.mean(dim=0))
        order = torch.randperm(len(block), generator=shuffle).to(device)
        chunks = torch.tensor_split(order, max(1, len(block) // config.batch_size))
        dead = since_fired >= config.dead_after_tokens  # checked once a block: no sync per step
        n_dead = int(dead.sum())
        fvus, losses = [], []
        for i, chunk in enumerate(chunks):
            x = block[chunk]
            done = (tokens + got * i / len(chunks)) / config.train_tokens
            for group in optimizer.param_groups:
                group["lr"] = config.learning_rate * _lr_factor(done)
            loss, fvu, indices = model.loss(x, dead, n_dead, config.aux_k)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            model.project_decoder_grad()
            optimizer.step()
            model.normalize_decoder()
            since_fired += len(x)
            since_fired.index_fill_(0, indices.reshape(-1), 0)
            steps += 1
            fvus.append(fvu)
            losses.append(loss.detach())
            bar.update(min(int(tokens + got * (i + 1) / len(chunks)), config.train_tokens) - bar.n)
        tokens += got
        for value in torch.stack(fvus).tolist():
            history.append(value)
            fvu_avg = value if fvu_avg is None else 0.95 * fvu_avg + 0.05 * value
        bar.set_postfix(loss=f"{float(losses[-1]):.4f}", fvu=f"{fvu_avg:.3f}", dead=n_dead)
        del block
        if checkpoint is not None and time.monotonic() - saved_at >= config.checkpoint_every_s:
            _save_checkpoint(
                checkpoint,
                {
                    "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                    "shuffle": shuffle.get_state(), "since_fired": since_fired.cpu(),
                    "scales": scales, "tokens": tokens, "steps": steps, "epoch": stream.epoch,
                    "position": stream.position, "fingerprint": stream.fingerprint.hexdigest(),
                    "fvu_avg": fvu_avg, "history": history,
                },
            )  # fmt: skip
            saved_at = time.monotonic()
        if on_block is not None:
            on_block(tokens)
    bar.close()
    return Trained(
        model, hooks, scales, tokens, steps, stream.epoch + 1, time.perf_counter() - started,
        holdout, resumed_from, history,
    )  # fmt: skip


def _load_checkpoint(path: Path | None) -> dict[str, Any] | None:
    if path is None or not path.exists():
        return None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # a torn or foreign file: train from the start
        log.warning("ignoring unreadable training checkpoint %s: %s", path, error)
        return None


def _save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = Path(f"{path}.partial")
    torch.save(state, partial)
    os.replace(partial, path)  # a crash while saving leaves the previous checkpoint


# ---------------------------------------------------------------- quality on held-out tokens


@torch.no_grad()
def evaluate(
    subject: Subject, trained: Trained, ctx_len: int, windows: list[Window] | None = None
) -> dict[str, Any]:
    """FVU (pooled and per point), mean L0 and the dead share on the held-out windows,
    and for causal subjects the LM loss with the reconstruction spliced in."""
    windows = trained.holdout if windows is None else windows
    model, hooks = trained.model, trained.hooks
    fired = torch.zeros(model.width, dtype=torch.bool, device=subject.device)
    sums: dict[str, dict[str, Any]] = {
        h: {"sse": 0.0, "sq": 0.0, "sum": torch.zeros(model.d_in, dtype=torch.float64), "n": 0,
            "l0": 0}
        for h in hooks
    }  # fmt: skip
    n_tokens = 0
    for ids, valid, _ in iter_batches(subject, windows, max(1, FORWARD_TOKENS // ctx_len)):
        acts = subject.activations(ids, valid.long(), hooks)
        mask = valid.to(subject.device)
        n_tokens += int(valid.sum())
        for h in hooks:
            x = acts[h][mask] * trained.scales[h]
            values, indices = model.encode(x)
            x_hat = model.decode(values, indices)
            s = sums[h]
            s["sse"] += float((x - x_hat).double().pow(2).sum())
            s["sq"] += float(x.double().pow(2).sum())
            s["sum"] += x.double().sum(dim=0).cpu()
            s["n"] += len(x)
            s["l0"] += int((values > 0).sum())
            fired[indices[values > 0]] = True

    def fvu(sse: float, sq: float, total: torch.Tensor, n: int) -> float:
        variance = sq - float(total.pow(2).sum()) / max(n, 1)
        return sse / variance if variance > 0 else float("nan")

    per_hook = {h: {"fvu": fvu(s["sse"], s["sq"], s["sum"], s["n"])} for h, s in sums.items()}
    pooled = [sum(s[key] for s in sums.values()) for key in ("sse", "sq", "sum", "n")]
    vectors = max(pooled[3], 1)
    quality: dict[str, Any] = {
        "fvu": fvu(*pooled),
        "l0": sum(s["l0"] for s in sums.values()) / vectors,
        "dead_share": 1.0 - float(fired.float().mean()),
        "holdout_tokens": n_tokens,
        "per_hook": per_hook,
        "lm_loss": None,
    }
    lm = lm_losses(subject, trained, windows)
    if lm is not None:
        quality["lm_loss"] = {
            "clean": lm["clean"],
            "spliced": lm["spliced"],
            "tokens": lm["tokens"],
        }
        for h in hooks:
            per_hook[h]["lm_loss"] = lm["per_hook"][h]
    return quality


@torch.no_grad()
def lm_losses(
    subject: Subject, trained: Trained, windows: list[Window], max_tokens: int = LM_LOSS_TOKENS
) -> dict[str, Any] | None:
    """Next-token loss on held-out windows, clean and with each point's activations replaced
    by the dictionary's reconstruction; None where the subject has no usable LM head."""
    if not subject.causal:
        return None
    chosen, total = [], 0
    for window in windows:
        if total >= max_tokens:
            break
        chosen.append(window)
        total += len(window.token_ids)
    start = len(subject.prefix_ids)

    def loss_of(splice: str | None) -> float:
        summed, count = 0.0, 0
        for ids, valid, _ in iter_batches(subject, chosen, 8):
            full, mask = subject._with_specials(ids.to(subject.device), valid.long())
            seq = slice(start, start + ids.shape[1])
            here = valid.to(subject.device)
            handle = None
            if splice is not None:
                handle = subject.splice(splice, _replacer(trained, splice, seq, here))
            try:
                hidden = subject.model(input_ids=full, attention_mask=mask, use_cache=False)[0]
            finally:
                if handle is not None:
                    handle.remove()
            logits = subject.logits(hidden[:, seq][:, :-1])
            targets = ids.to(subject.device)[:, 1:]
            pairs = here[:, 1:] & here[:, :-1]
            losses = F.cross_entropy(logits[pairs], targets[pairs], reduction="sum")
            summed += float(losses)
            count += int(pairs.sum())
        return summed / max(count, 1)

    per_hook = {h: loss_of(h) for h in trained.hooks}
    return {
        "clean": loss_of(None),
        "spliced": sum(per_hook.values()) / len(per_hook),
        "per_hook": per_hook,
        "tokens": total,
    }


def _replacer(
    trained: Trained, hook: str, seq: slice, here: torch.Tensor
) -> Callable[[torch.Tensor], torch.Tensor]:
    """Hidden states [batch, seq, d] -> the same with the window tokens reconstructed."""
    model, scale = trained.model, trained.scales[hook]

    def replace(value: torch.Tensor) -> torch.Tensor:
        value = value.clone()
        inner = value[:, seq]
        x = inner[here].float() * scale
        inner[here] = (model.decode(*model.encode(x)) / scale).to(value.dtype)
        value[:, seq] = inner
        return value

    return replace


# ---------------------------------------------------------------- the folder


def save_dictionary(folder: Path, trained: Trained, manifest: dict[str, Any]) -> None:
    """One SAELens 6.x folder per point, each point's scale folded into its weights, then
    gloss_dictionary.json (written last: a folder without it is unfinished).

    With s the point's scale the module computed topk(relu((s x - b_dec) W_enc + b_enc));
    W_enc * s and b_dec / s give the same on the raw x, and W_dec / s, b_dec / s decode
    to raw units.
    """
    from safetensors.torch import save_file

    model = trained.model
    folder.mkdir(parents=True, exist_ok=True)
    for h in trained.hooks:
        s = trained.scales[h]
        point = folder / h
        point.mkdir(exist_ok=True)
        weights = {
            "W_enc": (model.W_enc.detach().T * s).float().cpu().contiguous(),
            "b_enc": model.b_enc.detach().float().cpu().contiguous(),
            "W_dec": (model.W_dec.detach() / s).float().cpu().contiguous(),
            "b_dec": (model.b_dec.detach() / s).float().cpu().contiguous(),
        }
        save_file(weights, str(point / "sae_weights.safetensors"))
        cfg = {
            "architecture": "topk",
            "d_in": model.d_in,
            "d_sae": model.width,
            "k": model.k,
            "activation_fn": "topk",
            "activation_fn_kwargs": {"k": model.k},
            "rescale_acts_by_decoder_norm": False,
            "apply_b_dec_to_input": True,
            "normalize_activations": "none",
            "reshape_activations": "none",
            "dtype": "float32",
            "device": "cpu",
            "hook_name": h,  # gloss's point name: SAELens has no hook names for every model
            "model_name": manifest["subject"]["name"],
            "input_scale_folded": s,
            "metadata": {
                "sae_lens_version": "6.0.0",
                "sae_lens_training_version": None,
                "hook_name": h,
                "model_name": manifest["subject"]["name"],
                "trained_by": "gloss learn",
            },
        }
        (point / "cfg.json").write_text(json.dumps(cfg, indent=2), encoding="utf-8")
    partial = folder / f"{MANIFEST}.partial"
    partial.write_text(json.dumps(manifest, indent=2), encoding="utf-8")
    os.replace(partial, folder / MANIFEST)


def manifest_of(
    subject: Subject, corpus: Corpus, config: LearnConfig, trained: Trained,
    quality: dict[str, Any], key: str,
) -> dict[str, Any]:  # fmt: skip
    return {
        "format": FORMAT,
        "architecture": "topk",
        "hooks": trained.hooks,
        "d_in": trained.model.d_in,
        "width": trained.model.width,
        "k": trained.model.k,
        "scales": trained.scales,
        "subject": {"name": subject.name, "revision": subject.revision, "path": subject.path},
        "training": {
            "corpus": corpus.record(),
            "tokens": trained.tokens,
            "vectors": trained.tokens * len(trained.hooks),
            "steps": trained.steps,
            "passes": trained.epochs,
            "seed": config.seed,
            "lr": config.learning_rate,
            "settings": config.to_dict(),
            "seconds": round(trained.seconds, 1),
            "resumed_from": trained.resumed_from,
        },
        "quality": quality,
        "key": key,
    }


def finished(folder: Path, key: str | None = None) -> dict[str, Any] | None:
    """The manifest of a finished dictionary in `folder` (with this key, if given), else None."""
    try:
        manifest = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(manifest, dict) or (key is not None and manifest.get("key") != key):
        return None
    if not all(
        (folder / h / "sae_weights.safetensors").exists() for h in manifest.get("hooks", [])
    ):
        return None
    return manifest


def cached(subject: Subject, hook: str, corpus: Corpus, config: LearnConfig) -> Path | None:
    """The cache folder of the dictionary `learn` would make, if it was made already."""
    if corpus.n_windows == 0:
        corpus.scan()
    hooks = subject.parse_hooks(hook)
    folder = cache_dir() / "dictionaries" / dictionary_key(subject, hooks, corpus, config)
    return folder if finished(folder) is not None else None


# ---------------------------------------------------------------- the learn stage


@dataclass
class LearnResult:
    source_id: int
    run_id: int
    folder: Path
    source: Source
    manifest: dict[str, Any]
    reused: bool
    seconds: float

    @property
    def quality(self) -> dict[str, Any]:
        return self.manifest.get("quality", {})


def learn(
    store: Store,
    subject: Subject,
    hook: str,
    corpus: Corpus,
    config: LearnConfig,
    *,
    out: str | Path | None = None,
    progress: bool = True,
    parent_run_id: int | None = None,
    on_block: Callable[[int], None] | None = None,
) -> LearnResult:
    """Train (or find in the cache) a dictionary and register it as a feature source.

    Without `out` the folder is $GLOSS_CACHE/dictionaries/<key>, the key hashing the
    subject, hooks, corpus and settings: the same request twice trains once. The work
    is a `learn` run (inside `parent_run_id`'s run, if given) that ends done, failed or
    interrupted, or is found abandoned if the process dies.
    """
    started = time.perf_counter()
    hooks = subject.parse_hooks(hook)
    d_in = subject.hook_width(hook)
    spec = hook_spec(hooks)
    if corpus.n_windows == 0:
        corpus.scan()
    key = dictionary_key(subject, hooks, corpus, config)
    folder = Path(out) if out is not None else cache_dir() / "dictionaries" / key
    manifest = finished(folder, key)
    if manifest is None and folder.exists() and any(folder.iterdir()):
        if finished(folder) is not None or out is not None:
            raise InputError(
                f"{folder} already holds something other than this dictionary; "
                "give another --out or remove the folder"
            )
        shutil.rmtree(folder)  # an unfinished cache folder of this key: written again
    run_config = {
        "model": subject.name,
        "revision": subject.revision,
        "hook": spec,
        "hooks": hooks,
        "corpus": corpus.record(),
        "learn": config.to_dict(),
        "key": key,
        "path": str(folder),
    }
    subject_id = store.get_or_create_subject(**subject.identity())
    with heartbeat(store) as holder:
        sweep(store)
        run_id = store.start_run("learn", run_config, parent_id=parent_run_id, holder=holder)
        try:
            reused = manifest is not None
            if manifest is None:
                checkpoint = cache_dir() / "learn" / f"{key}.pt"
                trained = train(
                    subject, spec, corpus, config, checkpoint=checkpoint, progress=progress,
                    on_block=on_block,
                )  # fmt: skip
                quality = evaluate(subject, trained, corpus.config.ctx_len)
                manifest = manifest_of(subject, corpus, config, trained, quality, key)
                save_dictionary(folder, trained, manifest)
                checkpoint.unlink(missing_ok=True)
            source = load_source(f"sae:{folder}", d_in)
            source_id = store.get_or_create_source(
                subject_id, spec, "sae", source.width, source.params_hash,
                path=source.path, config=source.config,
            )  # fmt: skip
        except BaseException as error:
            status = "interrupted" if isinstance(error, KeyboardInterrupt) else "failed"
            store.finish_run(run_id, status, str(error)[:2000] or type(error).__name__)
            raise
        training = manifest.get("training", {})
        quality = manifest.get("quality") or {}
        counts = {
            "reused": int(reused),
            "tokens": training.get("tokens", 0),
            "steps": training.get("steps", 0),
            "source_id": source_id,
            **{key: quality.get(key) for key in ("fvu", "l0", "dead_share")},
        }
        store.finish_run(run_id, "done", "reused the cached dictionary" if reused else None,
                         counts=counts)  # fmt: skip
    return LearnResult(
        source_id, run_id, folder, source, manifest, reused, time.perf_counter() - started
    )
