"""The parts of benchmarks/grpo_gpu.py that need no GPU: the time budget for rounds, the
statistics over interleaved rounds, the results file, what the machine and commit were, and the
pipe a worker process talks through.

Ratios are only ever taken between runs of one invocation (one machine, interleaved rounds), and
a variant whose figures moved by 5% or more is flagged so that nobody quotes it.
"""

from __future__ import annotations

import json
import os
import platform
import select
import socket
import statistics
import subprocess
import tempfile
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

from eos_model import length_stats

SPREAD_LIMIT = 0.05  # (max - min) / median at or above this: not quotable
ROUND_MARGIN = 1.1  # the next round is assumed to take 10% longer than the last one
CAP, EOS = "cap", "eos"  # scenarios: every completion runs to the cap / stops at EOS


def parse_variant(spec: str) -> tuple[str, str]:
    """``trl-compiled@eos`` -> ("trl-compiled", "eos"); a plain name is the cap-length scenario."""
    name, _, scenario = spec.partition("@")
    if scenario not in ("", CAP, EOS):
        raise ValueError(f"unknown scenario {scenario!r} in {spec!r} (use @{EOS} or nothing)")
    return name, scenario or CAP


class RoundBudget:
    """Stops starting rounds that would end after the deadline. A round is assumed to take as
    long as the previous one (times ``ROUND_MARGIN``); before any round has run, nothing is
    refused, since nothing is known yet."""

    def __init__(self, seconds: float | None, started: float):
        self.deadline = None if seconds is None else started + seconds

    def remaining(self, now: float) -> float | None:
        return None if self.deadline is None else max(0.0, self.deadline - now)

    def fits(self, now: float, last_round_s: float | None) -> bool:
        if self.deadline is None:
            return True
        if last_round_s is None:
            return now < self.deadline
        return now + last_round_s * ROUND_MARGIN <= self.deadline


def spread(values: list[float]) -> float | None:
    """(max - min) / median; None for fewer than two values."""
    if len(values) < 2:
        return None
    return (max(values) - min(values)) / statistics.median(values)


def _r(value, digits=3):
    return None if value is None else round(value, digits)


def _breakdown(steps: list[dict]) -> dict:
    """Median seconds per optimizer step by part; "other" is the rest of the step: the log-prob
    and loss forwards, rewards, data and Python (CUDA-synchronised timers, benchmarks/grpo_worker.py).
    ms per decode step = generate() time / tokens generated, the prompt's prefill included."""
    if not steps or not any("generate_s" in s for s in steps):
        return {}
    parts = {k: [s.get(k, 0.0) for s in steps] for k in ("generate_s", "backward_s", "optimizer_s")}
    other = [s["step_s"] - sum(parts[k][i] for k in parts) for i, s in enumerate(steps)]
    decode = [s.get("decode_steps", 0) for s in steps]
    per_decode = [1000 * s["generate_s"] / s["decode_steps"] for s in steps if s.get("decode_steps")]
    out = {k: _r(statistics.median(v)) for k, v in parts.items()}
    out |= {"other_s": _r(statistics.median(other)),
            "generate_share": _r(statistics.median(
                s.get("generate_s", 0.0) / s["step_s"] for s in steps)),
            "generate_calls_per_step": statistics.median(s.get("generate_calls", 0) for s in steps),
            "decode_steps_per_step": statistics.median(decode),
            "ms_per_decode_step": _r(statistics.median(per_decode), 2) if per_decode else None}
    return out


def summarise(runs: list[dict], *, baseline: str, default_variant: str | None = None,
              new_tokens: int | None = None) -> list[dict]:
    """One row per (model, scenario, variant) over the rounds of one invocation.

    completions/s = completions per step / median step time over every measured step of every
    round; per round the same from that round's steps. The ratio to ``baseline`` (same model and
    scenario) is the ratio of those medians, with the ratio of each round where both ran."""
    groups: dict[tuple, list[dict]] = {}
    for run in runs:
        groups.setdefault((run["model"], run["scenario"], run["variant"]), []).append(run)
    rows = {}
    for key, group in groups.items():
        good = [r for r in group if not r.get("error") and r.get("step_times_s")]
        row = {"model": key[0], "scenario": key[1], "variant": key[2],
               "rounds": len(good), "failed_rounds": len(group) - len(good)}
        if not good:
            row["error"] = next((r["error"] for r in group if r.get("error")), "no measured step")
            rows[key] = row
            continue
        steps = [t for r in good for t in r["step_times_s"]]
        per_step = good[0]["completions_per_step"]
        by_round = {r["round"]: per_step / statistics.median(r["step_times_s"]) for r in good}
        spreads = {"rounds": spread(list(by_round.values())), "steps": spread(steps)}
        why = [f"spread over {k} {v:.1%}" for k, v in spreads.items()
               if v is not None and v >= SPREAD_LIMIT]
        if len(good) < 2:
            why.append("fewer than 2 rounds")
        details = [s for r in good for s in r.get("steps", [])]
        lengths = [n for s in details for n in s.get("completion_lengths", [])]
        row |= {"completions_per_step": per_step,
                "median_step_s": _r(statistics.median(steps)),
                "completions_per_s": _r(per_step / statistics.median(steps)),
                "completions_per_s_by_round": {k: _r(v) for k, v in sorted(by_round.items())},
                "measured_steps": len(steps),
                "spread_over_rounds": _r(spreads["rounds"]), "spread_over_steps": _r(spreads["steps"]),
                "spread_ok": not why, "spread_note": "; ".join(why) or None,
                "peak_allocated_gib": max((r["peak_allocated_gib"] for r in good
                                           if r.get("peak_allocated_gib") is not None), default=None),
                "step_breakdown": _breakdown(details),
                "completion_lengths": length_stats(lengths, new_tokens) if lengths else None,
                "is_baseline": key[2] == baseline, "is_default": key[2] == default_variant,
                "_by_round": by_round, "_cps": per_step / statistics.median(steps)}
        rows[key] = row
    for key, row in rows.items():
        base = rows.get((key[0], key[1], baseline))
        if "_by_round" not in row or not base or "_by_round" not in base:
            continue
        common = sorted(set(row["_by_round"]) & set(base["_by_round"]))
        per_round = [row["_by_round"][k] / base["_by_round"][k] for k in common]
        row["vs_baseline"] = {
            "baseline": baseline, "ratio_of_medians": _r(row["_cps"] / base["_cps"]),
            "ratio_by_round": [_r(x) for x in per_round], "ratio_spread": _r(spread(per_round)),
            "quotable": row["spread_ok"] and base["spread_ok"]}
    for row in rows.values():
        row.pop("_by_round", None)
        row.pop("_cps", None)
    return list(rows.values())


def write_atomic(path: Path, payload) -> None:
    """Write JSON so that a reader (or a run killed mid-write) sees the old file or the new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(json.dumps(payload, indent=1) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def record_invocation(path: Path, invocation: dict) -> None:
    """Put ``invocation`` into the results file, replacing an earlier write of the same one (its
    ``id``) and keeping the others. A file in the old format (a flat list of runs from separate
    invocations) is kept as ``legacy_runs``: those runs were not interleaved."""
    data = {"invocations": []}
    if path.exists():
        old = json.loads(path.read_text())
        data = {"legacy_runs": old, "invocations": []} if isinstance(old, list) else old
    data["invocations"] = [i for i in data.get("invocations", []) if i.get("id") != invocation["id"]]
    data["invocations"].append(invocation)
    write_atomic(path, data)


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def commit_info(root: Path, given: str | None) -> dict:
    """The commit measured. The GPU machine may get a copy of the tree without ``.git``: then only
    ``given`` (``--commit`` or EDGETUNE_COMMIT) says it. Uncommitted changes are listed, since a
    copied working tree runs them too."""
    info: dict = {"commit": given, "commit_source": "argument" if given else None}
    if (root / ".git").exists():
        def git(*cmd):
            res = subprocess.run(["git", *cmd], cwd=root, capture_output=True, text=True)
            return res.stdout.strip() if res.returncode == 0 else None

        head = git("rev-parse", "HEAD")
        changed = git("status", "--porcelain", "--untracked-files=no")
        info |= {"git_head": head, "git_dirty": bool(changed) if changed is not None else None,
                 "git_changed": changed.splitlines()[:30] if changed else []}
        if not given and head:
            info |= {"commit": head, "commit_source": "git"}
    return info


def machine_info() -> dict:
    """GPU, driver, CUDA and library versions, host. Imports torch (the caller already has)."""
    import torch

    cuda = torch.cuda.is_available()
    driver = None
    try:
        res = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=30)
        driver = res.stdout.strip().splitlines()[0] if res.returncode == 0 and res.stdout.strip() else None
    except (OSError, subprocess.SubprocessError):
        pass

    def version(name):
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return None

    return {"hostname": socket.gethostname(), "gpu": torch.cuda.get_device_name(0) if cuda else "cpu",
            "gpu_count": torch.cuda.device_count() if cuda else 0, "driver": driver,
            "cuda": torch.version.cuda, "python": platform.python_version(),
            "versions": {n: version(n) for n in ("torch", "transformers", "trl", "peft",
                                                 "accelerate", "unsloth", "triton")}}


class Invocation:
    """Everything one run of benchmarks/grpo_gpu.py measured: machine, commit, settings, the EOS
    model's calibration, the workers, every round of every variant and their summary. Written
    to ``out`` (``record_invocation``) after every change, so a killed run leaves what it had."""

    def __init__(self, out: Path, root: Path, *, commit: str | None, settings: dict,
                 default_variant: str | None = None):
        self.out, self.default_variant = out, default_variant
        machine = machine_info()
        started = now_iso()
        self.data = {
            "id": f"{started}@{machine['hostname']}", "benchmark": "grpo_gpu",
            "started_at": started, "ended_at": None, "complete": False, "stopped_early": None,
            "same_machine": None, "machine": machine, "commit": commit_info(root, commit),
            "settings": settings, "eos_models": {}, "workers": [], "runs": [], "summary": []}

    def add(self, key: str, item: dict) -> None:
        self.data[key].append(item)
        self.save()

    def save(self, final: bool = False) -> None:
        d, settings = self.data, self.data["settings"]
        host, gpu = d["machine"]["hostname"], d["machine"]["gpu"]
        workers = [w for w in d["workers"] if "error" not in w]
        # Every measuring process ran on this host and this GPU model.
        d["same_machine"] = bool(workers) and all(
            w.get("hostname") == host and w.get("device") == gpu for w in workers)
        d["summary"] = summarise(d["runs"], baseline=settings["baseline"],
                                 default_variant=self.default_variant,
                                 new_tokens=settings.get("new_tokens"))
        d["ended_at"] = now_iso()
        d["complete"] = final and not d["stopped_early"]
        record_invocation(self.out, d)


class Channel:
    """JSON lines over a pair of pipe descriptors, with a timeout on reading. The parent and each
    worker hold one end each; a closed pipe reads as None (the other side is gone)."""

    def __init__(self, read_fd: int, write_fd: int):
        self.read_fd, self.write_fd, self._buffer = read_fd, write_fd, b""

    def send(self, message: dict) -> None:
        os.write(self.write_fd, (json.dumps(message) + "\n").encode())

    def recv(self, timeout: float | None = None) -> dict | None:
        """The next message; None at end of file; TimeoutError when none came in ``timeout``."""
        while b"\n" not in self._buffer:
            ready, _, _ = select.select([self.read_fd], [], [], timeout)
            if not ready:
                raise TimeoutError(f"no message in {timeout:.0f} s")
            chunk = os.read(self.read_fd, 1 << 16)
            if not chunk:
                return None
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        return json.loads(line)

    def close(self) -> None:
        for fd in (self.read_fd, self.write_fd):
            try:
                os.close(fd)
            except OSError:
                pass
