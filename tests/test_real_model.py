"""A real pretrained model end to end: SmolLM2-135M-Instruct (tests/real_model.py), on the CPU.

Everything else in the suite runs on tiny self-made models; these tests hold the pipeline to a
model with real weights, a real byte-level BPE vocabulary and a real chat template. The build
is kept to CI's budget: a short warm start (SFT on the answer format) and one GRPO step, one
quant (Q8_0, which every row width supports) and a small slice of the demo questions; the
training defaults for this model and the bundle are what a creator gets.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from edgetune.cli import cli
from tests import real_model as rm

pytestmark = pytest.mark.slow


def test_the_rebuilt_tokenizer_matches_the_original_vocabulary(real_model):
    gguf = rm.fetch_gguf(real_model.parent)
    assert rm.tokenizer_parity(real_model, gguf) == []


def test_the_base_model_is_read_as_a_creator_would_expect(real_model):
    from edgetune import basemodel

    base = basemodel.resolve(str(real_model))
    assert base.license == "apache-2.0"  # from its model card, not assumed
    assert 130e6 < base.parameters < 140e6  # SmolLM2-135M
    assert base.hub_id is None  # a plain folder names no hub id ...
    named = basemodel.resolve(str(real_model), hub_id=rm.HUB_ID)
    assert named.hub_id == rm.HUB_ID  # ... unless the creator says which it is


def test_settings_fit_the_real_model_not_the_demo(real_model):
    """The demo's settings (lr 5e-4, 64-token completions) made training on this model learn
    nothing; a real model gets settings for its size and the data's answer lengths."""
    from edgetune import preflight, stages
    from edgetune.project.load import resolve_project

    project = resolve_project(None, {"project.base_model": str(real_model)}).project
    inputs = stages.read_inputs(project)
    prepared = preflight.prepare(project, inputs, preflight.check_base(project))
    train = prepared.project.train
    assert train.learning_rate == 5e-5 and train.max_completion_length >= 96
    assert dict(prepared.fitted.sources)["learning_rate"] == "default for this model"
    # The format warm start is set up (the probe decides at build time whether it runs).
    assert prepared.inputs.warm_start == "auto" and len(prepared.inputs.sft_examples) == 324
    assert prepared.inputs.sft_examples[0].messages[-1]["content"].startswith("<reasoning>\n")
    given = resolve_project(None, {"project.base_model": str(real_model),
                                   "train.learning_rate": 1e-4}).project
    fitted = preflight.prepare(given, inputs, preflight.check_base(given))
    assert fitted.project.train.learning_rate == 1e-4  # a flag always wins
    assert dict(fitted.fitted.sources)["learning_rate"] == "flag"


def test_build_on_the_real_model_signs_converts_exactly_and_stops_at_the_end_of_turn(
        real_model, tmp_path):
    rows = [json.loads(line) for line in
            Path("edgetune/demo/data/questions.jsonl").read_text().splitlines()[:40]]
    data = tmp_path / "qa.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    # Half held out: enough held-out text for llama-perplexity's two 512-token chunks, while the
    # warm start stays at its 20-step minimum.
    config = tmp_path / "edgetune.yaml"
    config.write_text("project:\n  name: smol-coach\ndata:\n  path: qa.jsonl\n"
                      "  eval_fraction: 0.5\n")
    profile = yaml.safe_load(Path("quant_profiles/phone.yaml").read_text())
    profile.update(name="phone-q8", quants=["Q8_0"], min_decode_tps=None)
    (tmp_path / "phone-q8.yaml").write_text(yaml.safe_dump(profile))
    out = tmp_path / "out"
    result = CliRunner().invoke(cli, [
        "build", "--config", str(config), "--base-model", str(real_model),
        "--base-model-id", rm.HUB_ID, "--creator", "Ada Coach",
        "--target", str(tmp_path / "phone-q8.yaml"),
        "--steps", "1", "--max-completion-length", "32", "--warm-start", "always",
        "--accept-gate-failure", "--out", str(out)])
    assert result.exit_code == 0, result.output + repr(result.exception)

    assert "SFT warm start" in result.output  # both phases ran and are reported
    bundle = out / "bundle"
    manifest = json.loads((bundle / "edgetune.json").read_text())
    # The card and manifest tell the truth about the base model (not a local path or a guess).
    assert manifest["base_model"] == {"name": rm.HUB_ID, "license": "apache-2.0"}
    warm = manifest["training"]["warm_start"]
    assert warm["steps"] == 20 and warm["data"] == "the training rows in the answer format"
    front = yaml.safe_load((bundle / "README.md").read_text().split("---\n")[1])
    assert front["base_model"] == rm.HUB_ID and front["quantized_by"] == "Ada Coach"
    assert front["license"] == "apache-2.0"
    # Conversion is exact on real weights and a real BPE vocabulary.
    gguf = json.loads((out / "gguf" / "artifact.json").read_text())
    # (a mismatch would have stopped the build; the record says what was compared)
    assert gguf["tokenizer_parity"]["texts"] >= 4 and gguf["tokenizer_parity"]["eos_token_id"] == 2
    assert gguf["logit_parity"]["top1"] >= 0.99
    from edgetune import paths

    verified = CliRunner().invoke(cli, ["verify", str(bundle), "--public-key",
                                        str(paths.keys_dir() / "edgetune.pub")])
    assert verified.exit_code == 0, verified.output

    # A chat in llama.cpp ends at the template's end of turn, <|im_end|>, never running on.
    import llama_cpp

    q8 = next(bundle.glob("*Q8_0.gguf"))
    llm = llama_cpp.Llama(str(q8), n_ctx=512, verbose=False)
    reply = llm.create_chat_completion(
        [{"role": "user", "content": "What is the capital of France?"}], max_tokens=256,
        temperature=0.0)
    choice = reply["choices"][0]
    assert choice["finish_reason"] == "stop", choice
    assert "<|im_end|>" not in choice["message"]["content"] and choice["message"]["content"]
