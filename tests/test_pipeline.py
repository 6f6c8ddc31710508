"""End to end on the built-in demo: train -> merge -> convert -> quantise -> evaluate -> bundle."""

from __future__ import annotations

import json
import shutil

import pytest
from click.testing import CliRunner

from edgetune.bundle import verify_bundle
from edgetune.cli import cli
from edgetune.data import load_qa, split_qa
from edgetune.errors import ModelError, VerificationError


@pytest.fixture(scope="session")
def demo_base(tmp_path_factory):
    from edgetune.demo.model import demo_base_model

    return demo_base_model(cache=tmp_path_factory.mktemp("demo-cache"))


@pytest.fixture(scope="session")
def demo_build(demo_base, tmp_path_factory):
    """One CLI build of the demo (few GRPO steps), shared by the checks below."""
    root = tmp_path_factory.mktemp("build")
    home = root / "home"
    out = root / "out"
    env = {"EDGETUNE_HOME": str(home)}
    result = CliRunner(env=env).invoke(
        cli, ["build", "--target", "phone", "--base-model", str(demo_base), "--steps", "6",
              "--out", str(out)])
    assert result.exit_code == 0, result.output + (result.stderr or "") + repr(result.exception)
    return out, home / "keys" / "edgetune.pub", result


@pytest.mark.slow
def test_demo_build_produces_a_verified_bundle(demo_build):
    out, public_key, result = demo_build
    bundle = out / "bundle"
    names = sorted(p.name for p in bundle.iterdir())
    assert names == ["README.md", "edgetune-demo-Q4_K_M.gguf", "edgetune-demo-Q5_K_M.gguf",
                     "edgetune-demo-Q8_0.gguf", "edgetune.json", "eval.json", "model.sig"]
    manifest = json.loads((bundle / "edgetune.json").read_text())
    assert {a["quant"] for a in manifest["artifacts"]} == {"Q4_K_M", "Q5_K_M", "Q8_0"}
    assert manifest["training"]["method"] == "grpo" and manifest["training"]["steps"] == 6
    assert "<reasoning>" in manifest["persona"]["system_prompt"]
    report = json.loads((bundle / "eval.json").read_text())
    assert set(report["quants"]) == {"F16", "Q4_K_M", "Q5_K_M", "Q8_0"}
    for metrics in report["quants"].values():
        assert metrics["ppl"] > 1 and metrics["decode_tps"] > 0 and metrics["prefill_tps"] > 0
    assert report["quants"]["Q8_0"]["ppl_ratio"] == pytest.approx(1.0, abs=0.01)
    assert verify_bundle(bundle, public_key).files == 6
    assert "Bundle:" in result.stderr and "edgetune verify" in result.stderr
    # The private key never lands in an artifact.
    assert not list(out.rglob("*.key"))


@pytest.mark.slow
def test_training_log_and_artifacts(demo_build):
    out, _, _ = demo_build
    log = [json.loads(line) for line in (out / "adapter" / "training_log.jsonl").read_text().splitlines()]
    assert log[0]["event"] == "config" and log[0]["step"] == 0
    assert [entry["step"] for entry in log[1:]] == list(range(1, 7))
    assert all("reward" in entry and "rewards/correctness/mean" in entry for entry in log[1:])
    merged = json.loads((out / "merged" / "artifact.json").read_text())
    assert merged["max_weight_delta"] > 0
    gguf = json.loads((out / "gguf" / "artifact.json").read_text())
    assert gguf["logit_parity"]["mean_kld"] <= 1e-3 and gguf["logit_parity"]["top1"] >= 0.99


@pytest.mark.slow
@pytest.mark.parametrize("victim", ["edgetune-demo-Q4_K_M.gguf", "edgetune-demo-Q8_0.gguf",
                                    "edgetune.json", "README.md", "eval.json", "model.sig"])
def test_one_flipped_byte_fails_and_names_the_file(demo_build, tmp_path, victim):
    out, public_key, _ = demo_build
    bundle = tmp_path / "bundle"
    shutil.copytree(out / "bundle", bundle)
    path = bundle / victim
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))

    result = CliRunner().invoke(cli, ["verify", str(bundle), "--key", str(public_key)])
    assert result.exit_code != 0
    assert victim in result.stderr
    with pytest.raises(VerificationError) as err:
        verify_bundle(bundle, public_key)
    assert err.value.path == victim


@pytest.mark.slow
def test_rebuild_into_existing_output_is_refused(demo_build, demo_base):
    out, _, _ = demo_build
    result = CliRunner().invoke(cli, ["build", "--base-model", str(demo_base), "--out", str(out)])
    assert result.exit_code == 1
    assert f"Error: {out} already exists" in result.stderr.splitlines()
    assert "Traceback" not in result.stderr


@pytest.mark.slow
def test_merge_refuses_an_adapter_that_changed_nothing(demo_base, tmp_path):
    from edgetune.demo import DEMO_DATA, SYSTEM_PROMPT
    from edgetune.merge import merge
    from edgetune.train import TrainConfig, train

    rows = split_qa(load_qa(DEMO_DATA).rows).train[:8]
    adapter = train(str(demo_base), rows,
                    TrainConfig(steps=1, learning_rate=0.0, system_prompt=SYSTEM_PROMPT),
                    tmp_path / "adapter")
    with pytest.raises(ModelError, match="identical to the base"):
        merge(adapter, tmp_path / "merged")
    assert not (tmp_path / "merged").exists()
