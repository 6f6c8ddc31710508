"""Re-publishing an unchanged 2 GB bundle: wall time and bytes of file content sent.

Builds a signed bundle with ~2 GB of GGUF-like files, publishes it once to the Hub test double
(tests/hub_server.py, on 127.0.0.1) and then runs `edgetune publish` again as a user would (a new
process each time, so Python start-up and imports count), with the stat cache of verified
digests warm (the usual case: the creator's own bundle) and cold (the first publish on this
machine after a build elsewhere: every byte hashed). The server counts the bytes of file
content it receives: LFS bodies, regular files in commits, and preupload samples.

    python benchmarks/publish_speed.py [--gb 2] [--runs 3]

Target (issue 6): under 5 s and zero bytes of file content. Results:
benchmarks/results/publish_speed.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

QUANTS = {"Q4_K_M": 0.30, "Q5_K_M": 0.33, "Q8_0": 0.37}  # share of the total size


def _gguf(path: Path, size: int) -> None:
    """``size`` bytes that start like a GGUF and do not compress (random blocks, repeated)."""
    block = b"GGUF" + os.urandom((64 << 20) - 4)
    with open(path, "wb") as fh:
        left = size
        while left > 0:
            fh.write(block[:left])
            left -= len(block)


def _bundle(work: Path, total: int) -> tuple[Path, Path]:
    from edgetune.bundle import BundleInfo, BundleModel, build_bundle
    from edgetune.keys import generate_keypair

    keys = generate_keypair(work / "keys", "creator")
    models = []
    for quant, share in QUANTS.items():
        _gguf(work / f"src-{quant}.gguf", int(total * share))
        models.append(BundleModel(quant, work / f"src-{quant}.gguf", "qwen2", 32768, 2 * 10**9))
    info = BundleInfo(
        name="bench", bundle_id="bench", version="1.0.0", creator_name="Bench",
        base_model="Qwen/Qwen2.5-3B-Instruct", base_model_license="apache-2.0",
        chat_template="{% for m in messages %}{{ m.content }}{% endfor %}",
        stop_strings=("<|im_end|>",), default_context=4096, system_prompt="Think.",
        greeting="Hi", training={"method": "grpo", "backend": "trl", "steps": 1, "dataset_rows": 1,
                  "rewards": ["correctness"]}, eval_results={})
    bundle = build_bundle(work / "bundle", info, models, private_key=keys.private_key).path
    for quant in QUANTS:
        (work / f"src-{quant}.gguf").unlink()
    return bundle, keys.private_key


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--gb", type=float, default=2.0)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "publish_speed.json")
    args = parser.parse_args()

    from tests.hub_server import HubServer

    work = Path(tempfile.mkdtemp(prefix="edgetune-publish-bench-"))
    try:
        t0 = time.perf_counter()
        bundle, key = _bundle(work, int(args.gb * 1e9))
        size = sum(p.stat().st_size for p in bundle.rglob("*") if p.is_file())
        build_s = time.perf_counter() - t0
        with HubServer() as hub:
            token = hub.add_user("bench")
            env = {**os.environ, "HF_ENDPOINT": hub.endpoint, "HF_TOKEN": token,
                   "HF_HOME": str(work / "hf"), "HF_HUB_DISABLE_XET": "1",
                   "HF_HUB_DISABLE_TELEMETRY": "1", "EDGETUNE_HOME": str(work / "home")}
            command = [sys.executable, "-m", "edgetune.cli", "publish", str(bundle), "--repo",
                       "bench/coach", "--key", str(key), "--json"]

            def publish() -> tuple[float, dict]:
                started = time.perf_counter()
                proc = subprocess.run(command, env=env, capture_output=True, text=True)
                wall = time.perf_counter() - started
                if proc.returncode != 0:
                    raise SystemExit(f"publish failed:\n{proc.stdout}\n{proc.stderr}")
                return wall, json.loads(proc.stdout)

            first_s, first = publish()
            runs = {}
            for label in ("warm", "cold"):
                walls, sent = [], []
                for _ in range(args.runs):
                    if label == "cold":
                        shutil.rmtree(work / "home" / "cache", ignore_errors=True)
                    hub.reset_stats()
                    wall, out = publish()
                    assert out["uploaded_bytes"] == 0 and not out["tagged"], out
                    s = hub.stats
                    walls.append(round(wall, 3))
                    sent.append(s.lfs_bytes_received + s.regular_bytes_received
                                + s.preupload_sample_bytes)
                runs[label] = {"wall_s": walls, "median_wall_s": statistics.median(walls),
                               "file_content_bytes_sent": sent,
                               "requests": [f"{r.method} {r.path}" for r in hub.stats.requests]}
        result = {
            "bundle_bytes": size, "gguf_files": len(QUANTS), "build_s": round(build_s, 1),
            "first_publish_s": round(first_s, 2),
            "first_publish_uploaded_bytes": first["uploaded_bytes"],
            "republish_unchanged_warm_cache": runs["warm"],
            "republish_unchanged_cold_cache": runs["cold"],
            "machine": f"{platform.machine()}, {os.cpu_count()} cores",
            "commit": subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                                     capture_output=True, text=True).stdout.strip(),
        }
        args.out.write_text(json.dumps(result, indent=1) + "\n")
        print(json.dumps({k: v for k, v in result.items()
                          if not k.startswith("republish")}, indent=1))
        for label in ("warm", "cold"):
            r = runs[label]
            print(f"re-publish unchanged ({label} digest cache): median {r['median_wall_s']:.2f} s, "
                  f"file content sent {r['file_content_bytes_sent']} bytes")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
