"""Incremental builds and crash safety (edgetune.stages, pipeline.build)."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from edgetune import stages
from edgetune.errors import ConfigError


def _plan(tmp_path: Path, name: str, **inputs) -> stages.StagePlan:
    return stages.StagePlan(name, tmp_path / name, stages.digest({"stage": name, **inputs}),
                            {k: stages.digest(v) for k, v in inputs.items()})


def test_digest_is_stable_and_sensitive():
    a = {"x": [1, 2], "y": {"b": 1, "a": Path("/p")}}
    assert stages.digest(a) == stages.digest({"y": {"a": "/p", "b": 1}, "x": (1, 2)})
    assert stages.digest(a) != stages.digest({**a, "x": [2, 1]})


def test_stamps_say_what_changed(tmp_path: Path):
    stamps = stages.Stamps(tmp_path)
    plan = _plan(tmp_path, "merge", upstream="k1", tools={"peft": "1"})
    assert stamps.state(plan).status == "missing"
    plan.folder.mkdir()
    assert stamps.state(plan).status == "stale" and not stamps.fresh(plan)
    stamps.write(plan)
    assert stamps.fresh(plan) and stamps.state(plan).status == "up to date"
    changed = _plan(tmp_path, "merge", upstream="k1", tools={"peft": "2"})
    state = stamps.state(changed)
    assert (state.status, state.why) == ("stale", "changed: tools")
    stamps.clear(plan)
    assert not stamps.fresh(plan)


def test_a_stale_stage_makes_every_later_one_stale(tmp_path: Path):
    plans = [_plan(tmp_path, n, v=1) for n in ("train", "merge", "convert")]
    for plan in plans:
        plan.folder.mkdir()
        stages.Stamps(tmp_path).write(plan)
    assert [s.status for s in stages.states(tmp_path, plans)] == ["up to date"] * 3
    plans[1] = _plan(tmp_path, "merge", v=2)
    result = stages.states(tmp_path, plans)
    assert [s.status for s in result] == ["up to date", "stale", "stale"]
    assert result[2].why == "merge will be rebuilt"


def test_one_build_per_output_folder(tmp_path: Path):
    with stages.build_lock(tmp_path):
        with pytest.raises(ConfigError, match=f"another edgetune build is using .* \\(pid {os.getpid()}\\)"):
            with stages.build_lock(tmp_path):
                pass
    with stages.build_lock(tmp_path):  # released on exit
        pass


def test_leftovers_of_a_killed_build_are_removed(tmp_path: Path):
    (tmp_path / ".quants.abc.partial").mkdir()
    (tmp_path / ".bundle.old").mkdir()
    (tmp_path / "quants").mkdir()
    assert sorted(stages.remove_leftovers(tmp_path)) == [".bundle.old", ".quants.abc.partial"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["quants"]


# ----------------------------------------------------------------------- end to end, on the demo

def _build_cmd(out: Path, base: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "edgetune.cli", "build", "--target", "phone", "--steps", "2",
            "--base-model", str(base), "--out", str(out), *extra]


def _env(home: Path) -> dict:
    return {**os.environ, "EDGETUNE_HOME": str(home), "COLUMNS": "200"}


# What each stage creates first, seen from outside: its scratch folder (atomic_dir) or, for
# training, its checkpoint folder.
_STARTS = {"train": "adapter.checkpoints", "merge": ".merged.", "convert": ".gguf.",
           "quantise": ".quants.", "evaluate": ".eval.", "bundle": ".bundle."}


def _started(out: Path, stage: str, since: float) -> bool:
    if stage == "evaluate":  # writes its folder only at the very end: it starts once quantise
        stamp = out / ".edgetune" / "stages" / "quantise.json"  # has stamped its output
        return stamp.is_file() and stamp.stat().st_mtime >= since
    mark = _STARTS[stage]
    return out.is_dir() and any(p.name.startswith(mark) for p in out.iterdir())


@pytest.mark.slow
def test_sigkill_in_every_stage_then_rerun_gives_a_verified_bundle(demo_base, tmp_path: Path):
    """Kill the build (SIGKILL) at a random point of each stage in turn; every rerun continues
    from what was complete and the last one produces a bundle that verifies."""
    from edgetune.bundle import verify_bundle

    out, home = tmp_path / "out", tmp_path / "home"
    rng = random.Random(int(os.environ.get("EDGETUNE_KILL_SEED", "7")))
    killed = []
    for stage in _STARTS:
        # --from: the stage runs even if an earlier round left it complete. The kill lands at a
        # random point; a stage that finishes first is retried with a shorter window.
        window = 0.4
        for _attempt in range(5):
            since = time.time() - 1
            first = "quantise" if stage == "evaluate" else stage
            proc = subprocess.Popen(_build_cmd(out, demo_base, "--from", first), env=_env(home),
                                    stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            while proc.poll() is None and not _started(out, stage, since):
                time.sleep(0.005)
            time.sleep(rng.uniform(0, window))
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                killed.append(stage)
                break
            assert proc.returncode == 0, proc.stderr.read()[-2000:]
            window /= 4
    assert killed == list(_STARTS)
    final = subprocess.run(_build_cmd(out, demo_base, "--json"), env=_env(home),
                           capture_output=True, text=True)
    assert final.returncode == 0, final.stderr[-3000:]
    payload = json.loads(final.stdout)
    assert verify_bundle(out / "bundle", payload["public_key"]).bundle_id == payload["bundle_id"]
    assert not [p.name for p in out.iterdir() if p.name.endswith((".partial", ".old"))]

    # Nothing changed: every stage is reused and no model library is even imported.
    probe = ("import runpy, sys; sys.argv = ['edgetune'] + sys.argv[1:]\n"
             "try:\n    runpy.run_module('edgetune.cli', run_name='__main__')\n"
             "except SystemExit:\n    pass\n"
             "heavy = [m for m in ('torch', 'transformers', 'llama_cpp') if m in sys.modules]\n"
             "print('HEAVY', heavy, file=sys.stderr)")
    again = subprocess.run([sys.executable, "-c", probe, *_build_cmd(out, demo_base)[3:]],
                           env=_env(home), capture_output=True, text=True)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "HEAVY []" in again.stderr
    assert again.stderr.count("up to date") == 6  # train .. bundle

    # Only the target's quality settings changed: only evaluate and bundle rerun.
    profile = tmp_path / "strict-phone.yaml"
    text = (Path(__file__).parents[1] / "quant_profiles" / "phone-6gb.yaml").read_text()
    profile.write_text(text.replace("name: phone-6gb", "name: strict-phone")
                       .replace("min_decode_tps:", "min_decode_tps: 1 #"))
    retarget = subprocess.run(_build_cmd(out, demo_base)[:5] + [str(profile)] +
                              _build_cmd(out, demo_base)[6:], env=_env(home),
                              capture_output=True, text=True)
    assert retarget.returncode == 0, retarget.stderr[-2000:]
    assert retarget.stderr.count("up to date") == 4  # train, merge, convert, quantise

    # --from redoes a stage even though it is up to date; --to stops after one.
    partial = subprocess.run(_build_cmd(out, demo_base, "--from", "quantise", "--to", "quantise",
                                        "--json"), env=_env(home), capture_output=True, text=True)
    assert partial.returncode == 0, partial.stderr[-2000:]
    assert json.loads(partial.stdout)["stopped_after"] == "quantise"
    assert partial.stderr.count("up to date") == 3  # train, merge, convert


@pytest.mark.slow
def test_two_targets_share_training_and_get_a_bundle_each(demo_base, tmp_path: Path):
    from edgetune.bundle import verify_bundle

    out, home = tmp_path / "out", tmp_path / "home"
    cmd = [sys.executable, "-m", "edgetune.cli", "build", "--target", "phone", "--target",
           "phone-8gb", "--steps", "2", "--base-model", str(demo_base), "--out", str(out), "--json"]
    run = subprocess.run(cmd, env=_env(home), capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-3000:]
    targets = json.loads(run.stdout)["targets"]
    assert sorted(targets) == ["phone", "phone-8gb"]
    for name, result in targets.items():
        assert Path(result["bundle"]) == out / "targets" / name / "bundle"
        assert verify_bundle(Path(result["bundle"]), result["public_key"]).files > 0
    # The second target reused what the first trained and converted.
    assert run.stderr.count("up to date") >= 3
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == \
        ["adapter", "gguf", "merged", "targets"]


def test_status_of_a_folder_never_built(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    from click.testing import CliRunner

    from edgetune.cli import cli

    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(cli, ["status", "--out", str(tmp_path / "out"), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert list(report) == ["phone"]
    assert [s["stage"] for s in report["phone"]] == ["train", "merge", "convert", "quantise",
                                                     "evaluate", "bundle"]
    assert {s["status"] for s in report["phone"]} == {"missing"}
    human = CliRunner().invoke(cli, ["status", "--out", str(tmp_path / "out"),
                                     "--target", "phone", "--target", "desktop"])
    assert human.exit_code == 0
    assert "target desktop" in human.output and "targets/desktop/bundle" in human.output
