"""Feature sources: turn activations at a hook point into the features being labeled.

- `neurons`     the hook point's own units.
- `sae`         a sparse autoencoder in the SAELens on-disk layout: a folder with
                `cfg.json` and `sae_weights.safetensors` (W_enc, b_enc, W_dec, b_dec,
                `threshold` for JumpReLU; b_gate, r_mag, b_mag for gated SAEs).
- `dictionary`  a dictionary in the `dictionary_learning` layout: `ae.pt` + `config.json`.
- Gemma Scope's `params.npz` (`gemmascope:FILE`, or any `.npz` / folder holding one)
  loads as an `sae` source with a JumpReLU encoder.
- an EleutherAI sparsify hook-point folder (`sparsify:FOLDER`: `cfg.json` +
  `sae.safetensors`, an SAE or a transcoder) loads as an `sae` source with a top-k encoder.
- a folder `gloss learn` wrote (`gloss_dictionary.json` + one SAELens folder per hook
  point) loads as one `sae` source with an encoder per point (`Source.encoders`).
- a source on the Hugging Face hub: `saelens:RELEASE/SAE_ID` (a SAELens pretrained release,
  looked up in sae-lens's own release directory) or `hf:REPO_ID/PATH[@REVISION]`, fetched
  through huggingface_hub into its cache and read from there afterwards (offline too),
  by the loader of whichever layout above its files have.

Every encoder is reduced to the same few tensors and one `encode` function, so the
formula a test checks is the formula mining uses. A source's identity is the hash of
its weights and config: mining the same files again reuses the same store rows.
"""

from __future__ import annotations

import difflib
import functools
import hashlib
import importlib.util
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import torch

from gloss.store.errors import ConfigError, InputError, ModelError

KINDS = ("neurons", "sae", "dictionary")
LEARNED = "gloss_dictionary.json"  # a dictionary `gloss learn` wrote: one SAELens folder per point
HUB_FORMS = ("saelens:", "hf:")
# The layouts a hub folder may have, tried in this order: the files each reads, the first
# of which tells it apart.
HUB_LAYOUTS: dict[str, tuple[str, ...]] = {
    "saelens": ("sae_weights.safetensors", "cfg.json"),
    "gemmascope": ("params.npz",),
    "sparsify": ("sae.safetensors", "cfg.json"),
    "dictionary": ("ae.pt", "config.json"),
}
# A SAELens release's conversion_func -> the layout of its files.
CONVERSIONS = {
    None: "saelens",
    "gemma_2": "gemmascope",
    "sparsify": "sparsify",
    "dictionary_learning_1": "dictionary",
}
# The release settings (config_overrides) that change what an SAELens encoder computes.
ENCODER_SETTINGS = (
    "architecture",
    "activation_fn",
    "activation_fn_str",
    "activation_fn_kwargs",
    "apply_b_dec_to_input",
    "normalize_activations",
    "k",
)


@dataclass
class Encoder:
    """`f = act(W_enc^T (x / norm - pre_bias) + b_enc)` with act one of relu, jumprelu, topk, gated."""

    W_enc: torch.Tensor  # [d_in, d_sae]
    b_enc: torch.Tensor  # [d_sae]
    activation: str  # "relu" | "jumprelu" | "topk" | "gated"
    pre_bias: torch.Tensor | None = None  # subtracted from the input (b_dec)
    threshold: torch.Tensor | None = None  # jumprelu, and batch-top-k at inference
    k: int | None = None  # topk
    r_mag: torch.Tensor | None = None  # gated: magnitude path scale exp(r_mag)
    b_mag: torch.Tensor | None = None  # gated: magnitude path bias (b_enc is the gate bias)
    norm_scale: bool = False  # SAELens constant_norm_rescale: x * sqrt(d_in) / |x|
    W_dec: torch.Tensor | None = None  # [d_sae, d_out]: what each latent writes back
    transcoder: bool = False  # W_dec writes another point (the MLP's output), not x

    def encode(
        self, x: torch.Tensor, features: torch.Tensor | None = None, *, feature_major: bool = False
    ) -> torch.Tensor:
        """Latent activations [..., d_sae] (or [..., len(features)] for a subset); with
        `feature_major`, [d_sae, ...]: each latent's activations contiguous, as mining's
        reservoirs copy them, computed in that layout rather than transposed after."""
        x = x.to(self.W_enc.dtype)
        if self.norm_scale:
            x = x * (x.shape[-1] ** 0.5) / x.norm(dim=-1, keepdim=True).clamp_min(1e-8)
        if self.pre_bias is not None:
            x = x - self.pre_bias
        if self.activation == "topk":
            acts = torch.relu(x @ self.W_enc + self.b_enc)
            top = acts.topk(self.k, dim=-1)
            acts = torch.zeros_like(acts).scatter_(-1, top.indices, top.values)
            acts = acts if features is None else acts[..., features]
            return acts.movedim(-1, 0) if feature_major else acts
        lead, flat = x.shape[:-1], x.reshape(-1, x.shape[-1])

        def affine(W: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
            """x W + b in one fused multiply-add, no second [tokens, latents] buffer."""
            if feature_major:
                return torch.addmm(b[:, None], W.T, flat.T).view(W.shape[1], *lead)
            return torch.addmm(b, flat, W).view(*lead, W.shape[1])

        def per_latent(t: torch.Tensor) -> torch.Tensor:
            return t.view(-1, *[1] * len(lead)) if feature_major else t

        pick = slice(None) if features is None else features
        W, b = self.W_enc[:, pick], self.b_enc[pick]
        pre = affine(W, b)
        if self.activation == "relu":
            return pre.relu_()
        if self.activation == "jumprelu":
            return torch.relu(pre) * (pre > per_latent(self.threshold[pick]))
        if self.activation == "gated":
            mag = affine(W * torch.exp(self.r_mag[pick]), self.b_mag[pick])
            return (pre > 0) * torch.relu(mag)
        raise ModelError(f"unknown encoder activation {self.activation!r}")


@dataclass
class Source:
    """Where features come from, as the store knows it, with its encoder (None for neurons)."""

    kind: str
    width: int
    d_in: int
    params_hash: str
    path: str | None = None
    config: dict[str, Any] = field(default_factory=dict)
    encoder: Encoder | None = None
    # A dictionary shared by several hook points: one encoder per point (each with its
    # point's input scale folded in), the same latents everywhere. Empty otherwise.
    encoders: dict[str, Encoder] = field(default_factory=dict)

    @property
    def hooks(self) -> tuple[str, ...]:
        """The hook points a shared dictionary reads; () for a source of any one point."""
        return tuple(self.encoders)

    def encode(
        self,
        acts: torch.Tensor,
        features: torch.Tensor | None = None,
        hook: str | None = None,
        *,
        feature_major: bool = False,
    ) -> torch.Tensor:
        """Feature activations from hook activations [..., d_in] -> [..., n_features]
        (with `feature_major`, [n_features, ...])."""
        encoder = self.encoder
        if self.encoders:
            if hook not in self.encoders:
                raise InputError(f"this dictionary reads {', '.join(self.encoders)}, not {hook!r}")
            encoder = self.encoders[hook]
        if encoder is None:
            acts = acts if features is None else acts[..., features]
            return acts.movedim(-1, 0) if feature_major else acts
        return encoder.encode(acts, features, feature_major=feature_major)


def load_source(spec: str, hook_width: int) -> Source:
    """`neurons`, `sae:PATH`, `dictionary:PATH`, a hub source (`saelens:RELEASE/SAE_ID`,
    `hf:REPO_ID/PATH`), or a PATH whose files say which layout it is."""
    kind, _, path = spec.partition(":")
    if kind in ("sae", "dictionary") and path.startswith(HUB_FORMS):
        return _load_hub(path, hook_width)  # a hub source as the store keeps it: KIND:SPEC
    if kind in ("saelens", "hf"):
        return _load_hub(spec, hook_width)
    if spec == "neurons":
        return Source("neurons", hook_width, hook_width, _hash(b"neurons"))
    if kind in ("gemmascope", "sparsify"):
        kind = "sae"
    elif kind not in ("sae", "dictionary"):
        kind, path = _detect(Path(spec)), spec
    folder = Path(path)
    if kind == "sae" and _is_gemma_scope(folder):
        source = _load_gemma_scope(folder)
    elif kind == "sae" and (spec.startswith("sparsify:") or _holds_sparsify(folder)):
        source = _load_sparsify(folder)
    elif not folder.is_dir():
        raise InputError(
            f"feature source {spec!r}: {folder} is not a folder; give neurons, "
            "sae:FOLDER (cfg.json + sae_weights.safetensors), gemmascope:params.npz "
            "or dictionary:FOLDER (ae.pt + config.json)"
        )
    elif kind == "sae" and (folder / LEARNED).exists():
        source = _load_learned(folder)
    else:
        source = _load_sae(folder) if kind == "sae" else _load_dictionary(folder)
    return _fits(source, f"{kind} at {folder}", hook_width)


def _fits(source: Source, what: str, hook_width: int) -> Source:
    if source.d_in != hook_width:
        raise InputError(
            f"the {what} reads {source.d_in}-dimensional inputs but the hook point "
            f"has {hook_width} units; pick the hook point it was trained on"
        )
    return source


def _detect(folder: Path) -> str:
    if (folder / "cfg.json").exists() or (folder / LEARNED).exists() or _is_gemma_scope(folder):
        return "sae"
    if _holds_sparsify(folder):
        return "sae"
    if (folder / "ae.pt").exists():
        return "dictionary"
    raise InputError(
        f"unknown feature source {str(folder)!r}: give neurons, an SAELens folder "
        "(cfg.json + sae_weights.safetensors) or a dictionary_learning folder (ae.pt + config.json)"
    )


def _hash(*parts: bytes) -> str:
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part)
    return digest.hexdigest()


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as error:
        raise InputError(f"missing {path}") from error
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise InputError(f"{path} is not valid JSON: {error}") from error
    except OSError as error:
        raise InputError(f"cannot read {path}: {error.strerror or error}") from error
    return _table(data, "the file", path)


def _table(value: Any, what: str, where: Path) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise InputError(
            f"{where}: {what} must be a JSON object of settings, not {type(value).__name__} "
            f"{_short(value)}; give the file the training library wrote"
        )
    return value


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _whole(table: dict[str, Any], key: str, where: Path) -> int | None:
    """An integer setting (None when absent or null); 16.0 and "16" count, "abc" and 1.5 do not."""
    value = table.get(key)
    if value is None:
        return None
    number: int | None = None
    if isinstance(value, int) and not isinstance(value, bool):
        number = value
    elif isinstance(value, float) and value.is_integer():
        number = int(value)
    elif isinstance(value, str) and value.strip().lstrip("+-").isdigit():
        number = int(value)
    if number is None:
        raise InputError(f"{where}: {key} must be a whole number, not {_short(value)}")
    return number


def _check_encoder(encoder: Encoder, where: Path) -> Encoder:
    """Every tensor the encoder uses has its documented shape and only finite values.

    A wrong shape would otherwise broadcast silently or fail deep inside mining, and a
    NaN would turn every activation of a feature into NaN.
    """
    W = encoder.W_enc
    if W.dim() != 2 or 0 in W.shape:
        raise InputError(
            f"{where}: the encoder matrix has shape {list(W.shape)}; it must be 2-D "
            "[d_in, d_sae] with both sizes above 0"
        )
    d_in, d_sae = W.shape
    expected = {
        "encoder bias (b_enc)": (encoder.b_enc, d_sae),
        "input bias (b_dec)": (encoder.pre_bias, d_in),
        "threshold": (encoder.threshold, d_sae),
        "r_mag": (encoder.r_mag, d_sae),
        "b_mag": (encoder.b_mag, d_sae),
    }
    for name, (tensor, size) in expected.items():
        if tensor is not None and tuple(tensor.shape) != (size,):
            raise InputError(
                f"{where}: {name} has shape {list(tensor.shape)} but must be [{size}] "
                f"for an encoder of shape [{d_in}, {d_sae}]"
            )
    tensors = {"encoder matrix (W_enc)": W, **{n: t for n, (t, _) in expected.items()}}
    for name, tensor in tensors.items():
        if tensor is not None and not bool(torch.isfinite(tensor).all()):
            raise InputError(
                f"{where}: {name} holds NaN or infinite values; the weights are damaged, "
                "give a good copy"
            )
    W_dec = encoder.W_dec
    if W_dec is not None and (
        W_dec.dim() != 2
        or W_dec.shape[0] != d_sae
        or (W_dec.shape[1] != d_in and not encoder.transcoder)
    ):
        raise InputError(
            f"{where}: the decoder matrix (W_dec) has shape {list(W_dec.shape)} but must be "
            f"[{d_sae}, {d_in}] for an encoder of shape [{d_in}, {d_sae}]"
        )
    if encoder.activation == "topk" and not 1 <= (encoder.k or 0) <= d_sae:
        raise InputError(f"{where}: k={encoder.k} but a top-k encoder needs k in 1..{d_sae}")
    return encoder


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _need(weights: dict[str, torch.Tensor], names: Sequence[str], where: Path) -> None:
    missing = [n for n in names if n not in weights]
    if missing:
        raise InputError(
            f"{where} lacks {', '.join(missing)} (has {', '.join(sorted(weights)) or 'nothing'})"
        )


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    """Every tensor of a safetensors file as float32; a damaged file is a one-line error."""
    from safetensors.torch import load_file

    try:
        return {k: v.float() for k, v in load_file(str(path)).items()}
    except Exception as error:  # safetensors raises its own error type, torch others
        raise InputError(
            f"cannot read {path}: {_first_line(error)}; the file is truncated or "
            "not safetensors, download or save it again"
        ) from error


def _load_sae(folder: Path, overrides: dict[str, Any] | None = None) -> Source:
    """An SAELens folder; `overrides` are a release's settings over its cfg.json (what
    SAELens's `from_pretrained` applies), part of the source's identity."""
    cfg = {**_read_json(folder / "cfg.json"), **(overrides or {})}
    weights_path = folder / "sae_weights.safetensors"
    if not weights_path.exists():
        raise InputError(f"missing {weights_path}: an SAELens folder has cfg.json and this file")
    w = _read_safetensors(weights_path)
    _need(w, ["W_enc", "b_dec"], weights_path)
    arch = str(cfg.get("architecture", "standard")).lower()
    act_fn = str(cfg.get("activation_fn_str", cfg.get("activation_fn", "relu")) or "relu").lower()
    kwargs = _table(
        cfg.get("activation_fn_kwargs") or {}, "activation_fn_kwargs", folder / "cfg.json"
    )
    norm = str(cfg.get("normalize_activations", "none") or "none").lower()
    if norm == "expected_average_only_in" and "norm_scaling_factor" in cfg:
        scale = cfg["norm_scaling_factor"]
        if type(scale) not in (int, float) or not 0 < scale < math.inf:
            raise InputError(
                f"{folder}: norm_scaling_factor must be a positive number, not {_short(scale)}"
            )
        # The input is scaled by it; folded into the weights as SAELens folds it.
        w["W_enc"], w["b_dec"] = w["W_enc"] * scale, w["b_dec"] / scale
        if "W_dec" in w:
            w["W_dec"] = w["W_dec"] / scale
    elif norm not in ("none", "constant_norm_rescale"):
        raise ModelError(
            f"{folder}: normalize_activations={norm!r} needs a dataset-derived scale gloss "
            "does not have; fold the scale into W_enc/b_dec or use an SAE without it"
        )
    pre_bias = w["b_dec"] if cfg.get("apply_b_dec_to_input", True) else None
    if arch == "gated":
        _need(w, ["b_gate", "r_mag", "b_mag"], weights_path)
        encoder = Encoder(
            w["W_enc"], w["b_gate"], "gated", pre_bias, r_mag=w["r_mag"], b_mag=w["b_mag"]
        )
    elif arch == "jumprelu":
        _need(w, ["b_enc", "threshold"], weights_path)
        encoder = Encoder(w["W_enc"], w["b_enc"], "jumprelu", pre_bias, threshold=w["threshold"])
    elif arch == "topk" or act_fn == "topk":
        _need(w, ["b_enc"], weights_path)
        k = _whole(kwargs, "k", folder / "cfg.json") or _whole(cfg, "k", folder / "cfg.json")
        if not k:
            raise InputError(f"{folder}/cfg.json: a top-k SAE needs activation_fn_kwargs.k")
        encoder = Encoder(w["W_enc"], w["b_enc"], "topk", pre_bias, k=k)
    elif arch == "standard" and act_fn == "relu":
        _need(w, ["b_enc"], weights_path)
        encoder = Encoder(w["W_enc"], w["b_enc"], "relu", pre_bias)
    else:
        raise ModelError(
            f"{folder}/cfg.json: unsupported SAE architecture {arch!r} with activation "
            f"{act_fn!r}; gloss reads standard (relu), jumprelu, topk and gated SAEs"
        )
    encoder.norm_scale = norm == "constant_norm_rescale"
    encoder.W_dec = w.get("W_dec")
    _check_encoder(encoder, weights_path)
    d_in, d_sae = encoder.W_enc.shape
    for key, size in (("d_in", d_in), ("d_sae", d_sae)):
        stated = _whole(cfg, key, folder / "cfg.json")
        if stated is not None and stated != size:
            raise InputError(f"{folder}: cfg.json says {key}={cfg[key]} but W_enc has {size}")
    params = _hash(weights_path.read_bytes(), json.dumps(cfg, sort_keys=True).encode())
    return Source("sae", d_sae, d_in, params, str(folder.resolve()), cfg, encoder)


def _is_gemma_scope(path: Path) -> bool:
    """A Gemma Scope SAE: its params.npz, or a folder holding one (and no SAELens cfg.json)."""
    if path.suffix == ".npz":
        return True
    return (path / "params.npz").is_file() and not (path / "cfg.json").exists()


def _load_gemma_scope(path: Path) -> Source:
    """Gemma Scope's params.npz (W_enc, b_enc, threshold, W_dec, b_dec): a JumpReLU SAE whose
    encoder reads the input as it is, `relu(x W_enc + b_enc)` where that passes the
    threshold; b_dec belongs to the decoder only."""
    import numpy as np

    file = path if path.suffix == ".npz" else path / "params.npz"
    if not file.is_file():
        raise InputError(
            f"missing {file}: a Gemma Scope SAE is a params.npz with W_enc, b_enc and threshold"
        )
    try:
        with np.load(file) as data:
            w = {k: torch.from_numpy(np.asarray(data[k], dtype=np.float32)) for k in data.files}
    except Exception as error:  # numpy raises zipfile, OS and value errors for bad files
        raise InputError(
            f"cannot read {file}: {_first_line(error)}; the file is truncated or not an .npz, "
            "download it again"
        ) from None
    _need(w, ["W_enc", "b_enc", "threshold"], file)
    encoder = Encoder(w["W_enc"], w["b_enc"], "jumprelu", None, threshold=w["threshold"])
    encoder.W_dec = w.get("W_dec")
    _check_encoder(encoder, file)
    d_in, d_sae = encoder.W_enc.shape
    config = {"format": "gemma-scope", "architecture": "jumprelu", "d_in": d_in, "d_sae": d_sae}
    return Source(
        "sae", d_sae, d_in, _hash(file.read_bytes()), str(file.resolve()), config, encoder
    )


def _is_sparsify(folder: Path) -> bool:
    """One hook point of an EleutherAI sparsify checkpoint: cfg.json + sae.safetensors."""
    return (folder / "sae.safetensors").is_file() and (folder / "cfg.json").is_file()


def _holds_sparsify(folder: Path) -> bool:
    """A sparsify hook-point folder, or a checkpoint's root holding some (refused, naming them)."""
    return _is_sparsify(folder) or any(_is_sparsify(p) for p in _subfolders(folder))


def _subfolders(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir()) if folder.is_dir() else []


def _load_sparsify(folder: Path) -> Source:
    """A sparsify sparse coder (SAE or transcoder) for one hook point: top-k of
    `relu(encoder(x - b_dec))`; a transcoder (`transcode`) reads x as it is, since its
    b_dec is the output's bias. Its features are what it fires on, like any other's."""
    if not _is_sparsify(folder):
        points = [p.name for p in _subfolders(folder) if _is_sparsify(p)]
        if points:
            raise InputError(
                f"{folder} holds sparsify coders for {len(points)} hook points "
                f"({', '.join(points[:4])}{', ...' if len(points) > 4 else ''}): give one, "
                f"e.g. sparsify:{folder / points[0]}"
            )
        raise InputError(
            f"missing {folder / 'sae.safetensors'} or cfg.json: a sparsify folder has both"
        )
    cfg = _read_json(folder / "cfg.json")
    weights_path = folder / "sae.safetensors"
    w = _read_safetensors(weights_path)
    _need(w, ["encoder.weight", "encoder.bias", "b_dec"], weights_path)
    activation = str(cfg.get("activation", "topk")).lower()
    if activation != "topk":
        raise ModelError(
            f"{folder}/cfg.json: activation {activation!r}; gloss reads sparsify's top-k coders"
        )
    k = _whole(cfg, "k", folder / "cfg.json")
    if not k:
        raise InputError(f"{folder}/cfg.json: a sparsify coder needs k")
    transcoder = bool(cfg.get("transcode", False))
    W_enc = w["encoder.weight"].T.contiguous()
    encoder = Encoder(W_enc, w["encoder.bias"], "topk", None if transcoder else w["b_dec"], k=k)
    encoder.W_dec, encoder.transcoder = w.get("W_dec"), transcoder
    _check_encoder(encoder, weights_path)
    stated = _whole(cfg, "d_in", folder / "cfg.json")
    if stated is not None and stated != W_enc.shape[0]:
        raise InputError(
            f"{folder}: cfg.json says d_in={stated} but the encoder reads {W_enc.shape[0]}"
        )
    d_in, d_sae = W_enc.shape
    params = _hash(weights_path.read_bytes(), json.dumps(cfg, sort_keys=True).encode())
    config = {**cfg, "format": "sparsify", "transcoder": transcoder}
    return Source("sae", d_sae, d_in, params, str(folder.resolve()), config, encoder)


def _load_learned(folder: Path) -> Source:
    """A dictionary shared by several hook points: gloss_dictionary.json names the points,
    each a SAELens folder with its input scale folded in. One Source, one encoder per point;
    its identity covers the manifest and every point's weights."""
    where = folder / LEARNED
    manifest = _read_json(where)
    hooks = manifest.get("hooks")
    if not isinstance(hooks, list) or not hooks or not all(isinstance(h, str) for h in hooks):
        raise InputError(
            f'{where}: hooks must be a list of hook point names, e.g. ["layer.0.resid"]'
        )
    encoders: dict[str, Encoder] = {}
    digest = hashlib.sha256(json.dumps(manifest, sort_keys=True).encode())
    for hook in hooks:
        point = folder / hook
        if Path(hook).name != hook or not point.is_dir():
            raise InputError(
                f"{where} names hook point {hook!r} but {point} is not a folder; "
                "the dictionary is incomplete, write it again"
            )
        source = _load_sae(point)
        encoders[hook] = source.encoder  # type: ignore[assignment]
        digest.update(hook.encode())
        digest.update(source.params_hash.encode())
    shapes = {tuple(e.W_enc.shape) for e in encoders.values()}
    if len(shapes) > 1:
        raise InputError(
            f"{folder}: the points' encoders have different shapes {sorted(shapes)}; "
            "a shared dictionary has one width and one input size"
        )
    d_in, d_sae = shapes.pop()
    for key, size in (("d_in", d_in), ("width", d_sae)):
        stated = _whole(manifest, key, where)
        if stated is not None and stated != size:
            raise InputError(f"{where} says {key}={manifest[key]} but the weights have {size}")
    return Source(
        "sae", d_sae, d_in, digest.hexdigest(), str(folder.resolve()), manifest, encoders=encoders
    )


def _load_dictionary(folder: Path) -> Source:
    cfg = _read_json(folder / "config.json")
    trainer = _table(cfg.get("trainer", cfg), "trainer", folder / "config.json")
    ae_path = folder / "ae.pt"
    try:
        state = torch.load(ae_path, map_location="cpu", weights_only=True)
    except FileNotFoundError as error:
        raise InputError(f"missing {ae_path}") from error
    except Exception as error:  # torch raises several unrelated types for a bad file
        raise InputError(f"cannot read {ae_path}: {_first_line(error)}") from error
    if not isinstance(state, dict):
        raise InputError(
            f"{ae_path} holds a {type(state).__name__}, not a state dict of named tensors; "
            "save it with torch.save(ae.state_dict(), path)"
        )
    w = {k: v.float() for k, v in state.items() if isinstance(v, torch.Tensor)}
    for name in ("encoder.weight", "W_enc"):
        if name in w and w[name].dim() != 2:
            raise InputError(
                f"{ae_path}: {name} has shape {list(w[name].shape)}; it must be a 2-D matrix"
            )
    cls = str(trainer.get("dict_class", "AutoEncoder"))
    if cls == "AutoEncoder":
        _need(w, ["encoder.weight", "encoder.bias", "bias"], ae_path)
        encoder = Encoder(w["encoder.weight"].T, w["encoder.bias"], "relu", w["bias"])
    elif cls == "JumpReluAutoEncoder":
        _need(w, ["W_enc", "b_enc", "b_dec", "threshold"], ae_path)
        pre = w["b_dec"] if trainer.get("apply_b_dec_to_input", False) else None
        encoder = Encoder(w["W_enc"], w["b_enc"], "jumprelu", pre, threshold=w["threshold"])
    elif cls in ("AutoEncoderTopK", "BatchTopKSAE"):
        _need(w, ["encoder.weight", "encoder.bias", "b_dec"], ae_path)
        W, b = w["encoder.weight"].T, w["encoder.bias"]
        threshold = w.get("threshold")
        if threshold is not None and threshold.numel() != 1:
            raise InputError(
                f"{ae_path}: threshold has shape {list(threshold.shape)}; "
                f"{cls} keeps one global threshold"
            )
        if cls == "BatchTopKSAE" and threshold is not None and float(threshold.max()) >= 0:
            # At inference BatchTopK keeps latents above its learned global threshold.
            encoder = Encoder(
                W, b, "jumprelu", w["b_dec"], threshold=threshold.reshape(()).expand(b.shape)
            )
        else:
            if "k" in w:
                if w["k"].numel() != 1:
                    raise InputError(
                        f"{ae_path}: k has shape {list(w['k'].shape)}; it is one number"
                    )
                k = _whole({"k": float(w["k"].reshape(()))}, "k", ae_path)
            else:
                k = _whole(trainer, "k", folder / "config.json")
            if not k:
                raise InputError(f"{folder}/config.json: a top-k dictionary needs k")
            encoder = Encoder(W, b, "topk", w["b_dec"], k=k)
    elif cls == "GatedAutoEncoder":
        _need(w, ["encoder.weight", "gate_bias", "mag_bias", "r_mag", "decoder_bias"], ae_path)
        encoder = Encoder(
            w["encoder.weight"].T,
            w["gate_bias"],
            "gated",
            w["decoder_bias"],
            r_mag=w["r_mag"],
            b_mag=w["mag_bias"],
        )
    else:
        raise ModelError(
            f"{folder}: unsupported dict_class {cls!r}; gloss reads AutoEncoder, "
            "JumpReluAutoEncoder, AutoEncoderTopK, BatchTopKSAE and GatedAutoEncoder"
        )
    decoder = w.get("decoder.weight")
    encoder.W_dec = w.get("W_dec") if decoder is None or decoder.dim() != 2 else decoder.T
    _check_encoder(encoder, ae_path)
    d_in, d_sae = encoder.W_enc.shape
    for key, size in (("activation_dim", d_in), ("dict_size", d_sae)):
        stated = _whole(trainer, key, folder / "config.json")
        if stated is not None and stated != size:
            raise InputError(
                f"{folder}: config.json says {key}={trainer[key]} but ae.pt has {size}"
            )
    params = _hash(ae_path.read_bytes(), json.dumps(cfg, sort_keys=True).encode())
    return Source("dictionary", d_sae, d_in, params, str(folder.resolve()), cfg, encoder)


def _load_hub(spec: str, hook_width: int) -> Source:
    """A source on the Hugging Face hub, read from huggingface_hub's cache (downloaded into
    it first when need be). Its path is the spec pinned to the commit its files came from,
    so a later `gloss fires` reads these very files again, offline too."""
    base, _, revision = spec.partition("@")
    form, _, rest = base.partition(":")
    overrides: dict[str, Any] = {}
    about: dict[str, Any] = {}
    if form == "saelens":
        release, _, sae_id = rest.partition("/")
        repo_id, path, layouts, overrides, about = _release(release, sae_id)
        base = f"saelens:{release}/{sae_id}"
    else:
        parts = [p for p in rest.split("/") if p]
        if len(parts) < 2:
            raise InputError(
                f"bad feature source {spec!r}: give hf:ORG/REPO/PATH, e.g. "
                "hf:google/gemma-scope-2b-pt-res/layer_20/width_16k/average_l0_71"
            )
        repo_id, path, layouts = "/".join(parts[:2]), "/".join(parts[2:]), tuple(HUB_LAYOUTS)
        base = f"hf:{repo_id}/{path}".rstrip("/")
    folder, candidates = path, [(layout, HUB_LAYOUTS[layout]) for layout in layouts]
    if path.endswith(".npz"):
        folder, _, name = path.rpartition("/")
        candidates = [("gemmascope", (name,))]
    layout, file, commit = _fetch(base, repo_id, folder, revision or None, candidates)
    if layout == "saelens":
        source = _load_sae(file.parent, overrides)
    elif layout == "gemmascope":
        source = _load_gemma_scope(file)
    elif layout == "sparsify":
        source = _load_sparsify(file.parent)
    else:
        source = _load_dictionary(file.parent)
    source.path = f"{base}@{commit}"
    hub = {"repo_id": repo_id, "path": path, "revision": commit, **about}
    source.config = {**source.config, "hub": hub}
    return _fits(source, f"{source.kind} at {source.path}", hook_width)


def _release(release: str, sae_id: str) -> tuple[str, str, tuple[str, ...], dict, dict]:
    """A SAELens release's SAE as sae-lens's directory lists it: its repository, its path
    there, its layout, the release's settings that change its encoder, and what to keep."""
    directory = _saelens_directory()
    entry = directory.get(release)
    if not isinstance(entry, dict):
        raise InputError(
            f"unknown SAELens release {release!r}{_like(release, directory)}; "
            "give saelens:RELEASE/SAE_ID with a release sae-lens lists"
        )
    saes = {str(s.get("id")): s for s in entry.get("saes") or [] if isinstance(s, dict)}
    sae = saes.get(sae_id)
    if sae is None:
        raise InputError(
            f"SAELens release {release} has no SAE {sae_id!r}{_like(sae_id, saes)}; "
            f"give saelens:{release}/SAE_ID"
        )
    conversion = entry.get("conversion_func")
    if conversion not in CONVERSIONS:
        raise ModelError(
            f"SAELens release {release} keeps its SAEs in the {conversion!r} format, which "
            "gloss does not read; it reads SAELens, Gemma Scope, sparsify and "
            "dictionary_learning files"
        )
    settings = entry.get("config_overrides") or {}
    overrides = {k: v for k, v in settings.items() if k in ENCODER_SETTINGS}
    if sae.get("norm_scaling_factor") is not None:
        overrides["norm_scaling_factor"] = sae["norm_scaling_factor"]
    about = {"release": release, "sae_id": sae_id, "model": entry.get("model"),
             "neuronpedia": sae.get("neuronpedia")}  # fmt: skip
    return str(entry["repo_id"]), str(sae["path"]), (CONVERSIONS[conversion],), overrides, about


def _like(name: str, names: Any) -> str:
    """A few of `names` close to `name`, for an error message."""
    close = difflib.get_close_matches(name, [str(n) for n in names], n=3, cutoff=0.6)
    return f" (close: {', '.join(close)})" if close else ""


def _saelens_directory() -> dict[str, Any]:
    """sae-lens's release directory: the pretrained_saes.yaml it ships and its own
    `get_pretrained_saes_directory` reads, read here without importing sae_lens, whose
    import loads transformer_lens (about 10 s)."""
    found = importlib.util.find_spec("sae_lens")
    if found is None or not found.submodule_search_locations:
        raise ConfigError(
            "saelens:RELEASE/SAE_ID needs sae-lens's release directory: pip install "
            "'gloss[saelens]', or give the SAE's place on the hub as hf:REPO_ID/PATH"
        )
    return _read_directory(Path(next(iter(found.submodule_search_locations))))


@functools.cache
def _read_directory(package: Path) -> dict[str, Any]:
    import yaml

    file = package / "pretrained_saes.yaml"
    try:
        with file.open(encoding="utf-8") as f:
            data = yaml.load(f, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    except (OSError, yaml.YAMLError) as error:
        raise ConfigError(
            f"cannot read sae-lens's release directory {file}: {_first_line(error)}; "
            "reinstall sae-lens"
        ) from None
    return _table(data, "the release directory", file)


def _fetch(
    spec: str,
    repo_id: str,
    folder: str,
    revision: str | None,
    candidates: list[tuple[str, tuple[str, ...]]],
) -> tuple[str, Path, str]:
    """The first candidate layout whose files the repository has at `folder`, from the
    cache: (layout, the local path of its first file, the commit the files are from)."""
    from huggingface_hub.errors import LocalEntryNotFoundError

    unreachable = False
    for layout, names in candidates:
        filename = "/".join(p for p in (folder, names[0]) if p)
        try:
            first = _hub_file(spec, repo_id, filename, revision)
        except LocalEntryNotFoundError:
            unreachable = True
            continue
        if first is None:
            continue
        commit = first.parents[len(PurePosixPath(filename).parts) - 1].name
        for name in names[1:]:
            other = "/".join(p for p in (folder, name) if p)
            try:
                found = _hub_file(spec, repo_id, other, commit)
            except LocalEntryNotFoundError:
                raise _not_found(spec, other, repo_id, unreachable=True) from None
            if found is None:
                raise _not_found(spec, f"{other}, which {names[0]} goes with,", repo_id)
        return layout, first, commit
    files = " or ".join(" + ".join(names) for _, names in candidates)
    raise _not_found(spec, f"{files} under {folder or 'its root'}", repo_id, unreachable)


def _not_found(spec: str, what: str, repo_id: str, unreachable: bool = False) -> InputError:
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return InputError(
            f"{spec} is not in the Hugging Face cache and HF_HUB_OFFLINE is set: download "
            f"it once online (the cache has no {what} of {repo_id})"
        )
    if unreachable:
        return InputError(
            f"{spec} is not in the Hugging Face cache and the hub cannot be reached: "
            f"connect once to download it (the cache has no {what} of {repo_id})"
        )
    return InputError(f"{spec}: {repo_id} has no {what}; give the place of one SAE in it")


def _hub_file(spec: str, repo_id: str, filename: str, revision: str | None) -> Path | None:
    """One file of a hub repository in the local cache, downloaded first if need be; None
    when the hub says there is no such file. LocalEntryNotFoundError: it is not cached
    and the hub cannot be asked (offline, or out of reach)."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import (
        EntryNotFoundError,
        GatedRepoError,
        HfHubHTTPError,
        HFValidationError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    try:
        return Path(hf_hub_download(repo_id, filename, revision=revision))
    except LocalEntryNotFoundError:
        raise
    except EntryNotFoundError:
        return None
    except GatedRepoError:
        raise InputError(
            f"{spec}: {repo_id} is gated on the Hugging Face hub: accept its terms on its "
            "page and log in (hf auth login)"
        ) from None
    except RepositoryNotFoundError:
        raise InputError(
            f"{spec}: the Hugging Face hub has no repository {repo_id} (or it is private: "
            "log in with hf auth login)"
        ) from None
    except RevisionNotFoundError:
        raise InputError(f"{spec}: {repo_id} has no revision {revision!r}") from None
    except (HfHubHTTPError, HFValidationError) as error:
        raise InputError(f"{spec}: cannot fetch {filename}: {_first_line(error)}") from None
