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
    """Never touch the user's ~/.edgetune (keys, caches) from a test."""
    if "EDGETUNE_HOME" not in os.environ or not os.environ["EDGETUNE_HOME"].startswith("/tmp"):
        monkeypatch.setenv("EDGETUNE_HOME", str(tmp_path_factory.mktemp("home")))


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
