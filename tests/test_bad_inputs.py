"""Bad settings, flags and files are one-line errors that say what to fix, never tracebacks."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from gloss.pipeline import config as cfg
from gloss.pipeline.cli import main
from gloss.pipeline.corpus import CorpusConfig
from gloss.pipeline.interventions import directions
from gloss.pipeline.llm import EndpointConfig
from gloss.pipeline.sources import load_source
from gloss.pipeline.subjects import load_subject, parse_device, resolve_device
from gloss.store import open_store
from gloss.store.errors import ConfigError, InputError
from tests.test_sources import D_IN, D_SAE, _weights, write_sae


def _toml(tmp_path: Path, text: str) -> Path:
    """A settings file outside the working folder, so only --config finds it."""
    path = tmp_path / "conf" / "gloss.toml"
    path.parent.mkdir(exist_ok=True)
    path.write_text(text)
    return path


def _one_line_error(capsys, code: int, *needles: str) -> str:
    """The CLI failed with one `gloss: ...` line naming every needle, last on stderr
    (a model loader's progress bar may come before it), and no traceback."""
    err = capsys.readouterr().err
    assert code != 0, err
    lines = err.strip().splitlines()
    assert [line for line in lines if line.startswith("gloss: ")] == lines[-1:], err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in lines[-1], err
    return lines[-1]


# ---------------------------------------------------------------- [corpus]


@pytest.mark.parametrize(
    "key, value",
    [("ctx_len", 0), ("ctx_len", -3), ("ctx_len", 1), ("min_len", 0), ("max_tokens", 0),
     ("max_tokens", -5), ("max_line_chars", 0)],
)  # fmt: skip
def test_corpus_settings_out_of_range_name_the_key(tmp_path, key, value):
    with pytest.raises(ConfigError, match=f"{key} = {value}"):
        CorpusConfig(**{key: value})
    path = _toml(tmp_path, f"[corpus]\n{key} = {value}\n")
    with pytest.raises(
        ConfigError, match=f"gloss.toml: corpus: {key} = {value} is invalid"
    ) as caught:
        cfg.load(path)
    assert "\n" not in str(caught.value)


def test_corpus_paths_must_be_strings(tmp_path):
    with pytest.raises(ConfigError, match="corpus: corpus paths must be strings"):
        cfg.load(_toml(tmp_path, "[corpus]\npaths = [1, 2]\n"))


def test_cli_reports_a_bad_corpus_setting_in_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = _toml(tmp_path, "[corpus]\nctx_len = 0\n")
    db = f"sqlite:///{tmp_path / 'g.db'}"
    code = main(["--database", db, "run", "--config", str(path), "--dry-run"])
    _one_line_error(capsys, code, "ctx_len = 0", "at least 2")
    code = main(["--database", db, "mine", "--config", str(path)])
    _one_line_error(capsys, code, "ctx_len = 0")
    code = main(["--database", db, "mine", "--ctx-len", "-1"])
    _one_line_error(capsys, code, "ctx_len = -1")


# ---------------------------------------------------------------- [subject] device


@pytest.mark.parametrize("device", ["tpu:9", "gpu!", "", "CPU", "cuda:-1", "meta"])
def test_unknown_devices_are_config_errors(tmp_path, device):
    with pytest.raises(ConfigError, match=f"device {device!r} is not a torch device: use cpu"):
        parse_device(device)
    with pytest.raises(ConfigError, match="subject: device"):
        cfg.load(_toml(tmp_path, f'[subject]\ndevice = "{device}"\n'))
    with pytest.raises(ConfigError, match="not a torch device"):
        load_subject("minilm", device=device)


def test_devices_this_machine_lacks_are_config_errors():
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    missing = f"cuda:{count}"
    with pytest.raises(ConfigError, match=f"device '{missing}' is not available on this machine"):
        resolve_device(missing)
    with pytest.raises(ConfigError, match="not available on this machine"):
        load_subject("minilm", device=missing)  # refused before the model is read
    if count == 0:
        with pytest.raises(
            ConfigError, match=r"device 'cuda' is not available .*\(no CUDA\); use cpu"
        ):
            resolve_device("cuda")
    else:
        assert resolve_device("cuda").type == "cuda"
    if not torch.backends.mps.is_available():
        with pytest.raises(ConfigError, match="no MPS"):
            resolve_device("mps")
    assert resolve_device("cpu") == torch.device("cpu")


def test_cli_mine_on_a_missing_device_is_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    db = f"sqlite:///{tmp_path / 'g.db'}"
    code = main(["--database", db, "mine", "--device", "tpu:9"])
    _one_line_error(capsys, code, "device 'tpu:9' is not a torch device")
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    code = main(["--database", db, "mine", "--device", f"cuda:{count}"])
    _one_line_error(capsys, code, f"device 'cuda:{count}' is not available on this machine")


# ---------------------------------------------------------------- SAE and dictionary folders


def _one_line(error: pytest.ExceptionInfo) -> str:
    message = str(error.value)
    assert "\n" not in message, message
    return message


def test_truncated_safetensors_is_an_input_error(tmp_path):
    folder = write_sae(tmp_path / "t", {}, _weights())
    weights = folder / "sae_weights.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(InputError, match="sae_weights.safetensors.*truncated") as error:
        load_source(f"sae:{folder}", D_IN)
    _one_line(error)


@pytest.mark.parametrize("content", ["[1, 2]", '"sae"', "42", "null"])
def test_cfg_json_that_is_not_an_object(tmp_path, content):
    folder = write_sae(tmp_path / "c", {}, _weights())
    (folder / "cfg.json").write_text(content)
    with pytest.raises(InputError, match="cfg.json: the file must be a JSON object") as error:
        load_source(f"sae:{folder}", D_IN)
    _one_line(error)


def test_cfg_json_that_is_not_utf8(tmp_path):
    folder = write_sae(tmp_path / "u", {}, _weights())
    (folder / "cfg.json").write_bytes(b'{"d_in": "\xff"}')
    with pytest.raises(InputError, match="cfg.json is not valid JSON"):
        load_source(f"sae:{folder}", D_IN)


@pytest.mark.parametrize(
    "cfg_json, key",
    [({"d_in": "abc"}, "d_in"), ({"d_sae": [24]}, "d_sae"), ({"d_sae": 24.5}, "d_sae"),
     ({"architecture": "topk", "activation_fn_kwargs": {"k": "abc"}}, "k"),
     ({"architecture": "topk", "k": True}, "k")],
)  # fmt: skip
def test_non_integer_sizes_are_input_errors(tmp_path, cfg_json, key):
    folder = write_sae(tmp_path / "n", cfg_json, _weights())
    with pytest.raises(InputError, match=f"cfg.json: {key} must be a whole number") as error:
        load_source(f"sae:{folder}", D_IN)
    _one_line(error)


def test_integer_like_sizes_still_load(tmp_path):
    folder = write_sae(tmp_path / "i", {"d_in": float(D_IN), "d_sae": str(D_SAE)}, _weights())
    assert load_source(f"sae:{folder}", D_IN).width == D_SAE


def test_activation_kwargs_that_are_not_an_object(tmp_path):
    cfg_json = {"architecture": "topk", "activation_fn_kwargs": [3]}
    folder = write_sae(tmp_path / "k", cfg_json, _weights())
    with pytest.raises(InputError, match="activation_fn_kwargs must be a JSON object"):
        load_source(f"sae:{folder}", D_IN)


@pytest.mark.parametrize(
    "architecture, name, shape, problem",
    [("standard", "W_enc", (D_IN * D_SAE,), "2-D"),
     ("standard", "W_enc", (D_IN, D_SAE, 1), "2-D"),
     ("standard", "b_enc", (D_SAE + 1,), "b_enc"),
     ("standard", "b_enc", (1,), "b_enc"),  # would broadcast silently
     ("standard", "b_dec", (D_IN + 2,), "b_dec"),
     ("jumprelu", "threshold", (D_SAE, 1), "threshold"),
     ("gated", "b_gate", (D_SAE - 1,), "b_enc"),
     ("gated", "r_mag", (3,), "r_mag"),
     ("gated", "b_mag", (D_SAE, D_SAE), "b_mag")],
)  # fmt: skip
def test_tensors_of_the_wrong_shape_are_input_errors(tmp_path, architecture, name, shape, problem):
    w = _weights()
    w[name] = torch.zeros(shape)
    folder = write_sae(tmp_path / "s", {"architecture": architecture}, w)
    with pytest.raises(InputError, match=f"sae_weights.safetensors: .*{problem}") as error:
        load_source(f"sae:{folder}", D_IN)
    _one_line(error)


@pytest.mark.parametrize("k", [D_SAE + 1, -2])
def test_k_outside_the_width_is_an_input_error(tmp_path, k):
    cfg_json = {"architecture": "topk", "activation_fn_kwargs": {"k": k}}
    folder = write_sae(tmp_path / "k", cfg_json, _weights())
    with pytest.raises(InputError, match=f"k={k} but a top-k encoder needs k in 1..{D_SAE}"):
        load_source(f"sae:{folder}", D_IN)
    cfg_json["activation_fn_kwargs"]["k"] = D_SAE
    assert load_source(str(write_sae(tmp_path / "ok", cfg_json, _weights())), D_IN).width == D_SAE


@pytest.mark.parametrize(
    "architecture, name",
    [("standard", "W_enc"), ("standard", "b_enc"), ("standard", "b_dec"),
     ("jumprelu", "threshold"), ("gated", "b_gate"), ("gated", "r_mag"), ("gated", "b_mag")],
)  # fmt: skip
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_weights_are_input_errors(tmp_path, architecture, name, bad):
    w = _weights()
    w[name].view(-1)[3] = bad
    folder = write_sae(tmp_path / "f", {"architecture": architecture}, w)
    with pytest.raises(InputError, match="NaN or infinite values") as error:
        load_source(f"sae:{folder}", D_IN)
    _one_line(error)


def test_non_finite_weights_the_encoder_does_not_use_are_accepted(tmp_path):
    w = _weights()
    w["W_dec"][0, 0] = float("nan")
    w["threshold"][0] = float("inf")  # a standard SAE has no threshold
    source = load_source(f"sae:{write_sae(tmp_path / 'd', {}, w)}", D_IN)
    assert source.width == D_SAE  # mining reads no W_dec; an intervention on latent 0 does
    with pytest.raises(InputError, match="NaN or infinite"):
        directions(source, None, torch.tensor([0]))
    assert directions(source, None, torch.tensor([1])).shape == (1, D_IN)


def _dictionary(folder: Path, state: object, trainer: object) -> Path:
    folder.mkdir(parents=True)
    torch.save(state, folder / "ae.pt")
    (folder / "config.json").write_text(json.dumps({"trainer": trainer}))
    return folder


def _autoencoder(**override: torch.Tensor) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    state = {
        "encoder.weight": torch.randn(D_SAE, D_IN, generator=g),
        "encoder.bias": torch.randn(D_SAE, generator=g),
        "bias": torch.randn(D_IN, generator=g),
    }
    return state | override


@pytest.mark.parametrize(
    "state, trainer, problem",
    [(_autoencoder(**{"encoder.bias": torch.zeros(D_SAE + 3)}), {}, "b_enc"),
     (_autoencoder(**{"encoder.weight": torch.zeros(D_SAE)}), {}, "encoder.weight has shape"),
     (_autoencoder(bias=torch.zeros(1)), {}, "b_dec"),
     (_autoencoder(bias=torch.full((D_IN,), float("nan"))), {}, "NaN or infinite"),
     ([torch.zeros(3)], {}, "not a state dict"),
     (_autoencoder(), {"activation_dim": "sixteen"}, "activation_dim must be a whole number"),
     (_autoencoder(b_dec=torch.zeros(D_IN), k=torch.tensor(D_SAE + 1)),
      {"dict_class": "AutoEncoderTopK"}, "k in 1.."),
     (_autoencoder(b_dec=torch.zeros(D_IN), k=torch.tensor([1, 2])),
      {"dict_class": "AutoEncoderTopK"}, "k has shape"),
     (_autoencoder(b_dec=torch.zeros(D_IN), threshold=torch.zeros(5)),
      {"dict_class": "BatchTopKSAE", "k": 2}, "one global threshold")],
)  # fmt: skip
def test_broken_dictionaries_are_input_errors(tmp_path, state, trainer, problem):
    folder = _dictionary(tmp_path / "ae", state, {"dict_class": "AutoEncoder", **trainer})
    with pytest.raises(InputError, match=problem) as error:
        load_source(f"dictionary:{folder}", D_IN)
    assert "ae.pt" in _one_line(error) or "config.json" in str(error.value)


def test_trainer_that_is_not_an_object(tmp_path):
    folder = _dictionary(tmp_path / "ae", _autoencoder(), ["AutoEncoder"])
    with pytest.raises(InputError, match="config.json: trainer must be a JSON object"):
        load_source(f"dictionary:{folder}", D_IN)


@pytest.mark.slow
def test_cli_mine_with_a_broken_sae_is_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    w = _weights()
    w["b_enc"] = torch.zeros(1)
    folder = write_sae(tmp_path / "sae", {}, w)
    db = f"sqlite:///{tmp_path / 'g.db'}"
    code = main(["--database", db, "mine", "--source", f"sae:{folder}", "--features", "0:2"])
    _one_line_error(capsys, code, "sae_weights.safetensors", "b_enc", "[1]")


# ---------------------------------------------------------------- feature selectors


@pytest.mark.parametrize(
    "spec, problem",
    [("5:2", "the range is empty"), ("5:5", "the range is empty"), ("-3", "negative"),
     ("-5:2", "negative"), ("0:-1", "negative"), ("1,2,9:4", "'9:4': the range is empty")],
)  # fmt: skip
def test_empty_and_negative_selectors_are_refused(tmp_path, spec, problem):
    with pytest.raises(InputError, match=f"bad --features .*{problem}"):
        cfg.parse_features(spec)
    with pytest.raises(InputError, match=problem):
        cfg.SubjectConfig(features=spec)
    with pytest.raises(ConfigError, match=f"subject: bad --features .*{problem}"):
        cfg.load(_toml(tmp_path, f'[subject]\nfeatures = "{spec}"\n'))


def test_selectors_are_clipped_to_the_width_before_they_are_built(monkeypatch):
    monkeypatch.setattr("gloss.pipeline.settings.MAX_SELECTED", 1_000)
    assert cfg.parse_features("0:3000000000", width=24) == list(range(24))
    assert cfg.parse_features("20:3000000000,2", width=24) == [2, 20, 21, 22, 23]
    assert cfg.parse_features("30,99999999999999999999", width=24) == []
    assert cfg.parse_features("30") == [30]  # without a width the caller reports it
    assert cfg.parse_features("0:1000") == list(range(1000))
    with pytest.raises(InputError, match="names 1,001 features.*omit --features"):
        cfg.parse_features("0:1000,5000")
    with pytest.raises(InputError, match="omit --features"):
        cfg.SubjectConfig(features="0:3000000000").indices()
    assert cfg.SubjectConfig(features="0:3000000000").indices(width=8) == list(range(8))


def test_cli_selectors_use_the_sources_width(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("gloss.pipeline.settings.MAX_SELECTED", 1_000)
    db = f"sqlite:///{tmp_path / 'g.db'}"
    with open_store(db) as store:
        subject = store.get_or_create_subject("tiny", "tiny", "r1", "Tiny")
        store.get_or_create_source(subject, "layer.0.mlp", "neurons", 24, "h")
    assert main(["--database", db, "explain", "--baseline", "--features", "0:3000000000"]) == 0
    assert "no mined features match" in capsys.readouterr().out
    code = main(["--database", db, "explain", "--baseline", "--features", "5:2"])
    _one_line_error(capsys, code, "bad --features '5:2': the range is empty")
    path = _toml(tmp_path, "")
    code = main(["--database", db, "run", "--config", str(path), "--features", "9:3", "--dry-run"])
    _one_line_error(capsys, code, "bad --features '9:3': the range is empty")


# ---------------------------------------------------------------- [run] and --limit


@pytest.mark.parametrize(
    "key, value",
    [("limit", 0), ("limit", -1), ("lock_stale_s", 0), ("lock_stale_s", -5.0),
     ("max_llm_tokens", -1), ("max_cost", -0.5)],
)  # fmt: skip
def test_run_settings_out_of_range_name_the_key(tmp_path, key, value):
    with pytest.raises(ConfigError, match=f"^{key} = {value} is invalid"):
        cfg.RunConfig(**{key: value})
    with pytest.raises(ConfigError, match=f"gloss.toml: run: {key} = "):
        cfg.load(_toml(tmp_path, f"[run]\n{key} = {value}\n"))


def test_run_budgets_of_zero_and_no_limit_are_fine():
    run = cfg.RunConfig(limit=None, max_llm_tokens=0, max_cost=0.0)
    assert run.limit is None and run.max_llm_tokens == 0


@pytest.mark.parametrize("command", ["explain", "score", "run"])
@pytest.mark.parametrize("value", ["0", "-1", "many"])
def test_limit_flag_below_one_is_a_usage_error(tmp_path, capsys, monkeypatch, command, value):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_:
        main(["--database", f"sqlite:///{tmp_path / 'g.db'}", command, "--limit", value])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "argument --limit" in err and "Traceback" not in err


def test_budget_flags_are_checked_like_the_file(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = _toml(tmp_path, "")
    db = f"sqlite:///{tmp_path / 'g.db'}"
    code = main(["--database", db, "run", "--config", str(path), "--max-cost", "-1", "--dry-run"])
    _one_line_error(capsys, code, "max_cost = -1.0 is invalid: give a budget of 0 or more")


# ---------------------------------------------------------------- [llm.*]


@pytest.mark.parametrize(
    "key, value",
    [("timeout_s", 0.0), ("timeout_s", -1.0), ("timeout_s", float("nan")), ("backoff_s", -1.0),
     ("max_backoff_s", -0.5), ("price_in", -1.0), ("price_out", -2.0)],
)  # fmt: skip
def test_endpoint_settings_out_of_range_name_the_key(tmp_path, key, value):
    with pytest.raises(ConfigError, match=f"^{key} = {value} is invalid"):
        EndpointConfig(**{key: value})
    toml_value = "nan" if value != value else repr(value)
    with pytest.raises(ConfigError, match=f"llm: explainer: {key} = "):
        cfg.load(_toml(tmp_path, f"[llm.explainer]\n{key} = {toml_value}\n"))
