"""How fast ``edgetune verify`` checks a ~2 GB bundle, against ``sha256sum`` on the same files.

Builds real bundles with edgetune's own ``build_bundle`` (one GGUF written by ``gguf.GGUFWriter``
holding one large I8 tensor, a ChatML template so the persona files are derived, a fresh key
pair) in three sizes: ``--gib`` (default 2), a quarter of it, and a 1 MiB one whose time is
almost all fixed cost (start-up, imports, signature). For each it times, as subprocesses:

* ``sha256sum``: ``sha256sum`` over every file of the bundle (the target's yardstick);
* ``openssl``: ``openssl dgst -sha256`` over the same files (the hash with SHA-NI, for reference);
* ``edgetune``: ``.venv/bin/edgetune verify BUNDLE --key PUB``;
* ``reference``: ``python mobile_bundle/reference/verify.py BUNDLE --key PUB``.

Each command runs once cold-ish (the bundle's pages evicted with ``posix_fadvise(DONTNEED)``
just before it), once to warm the page cache, then ``--runs`` times warm in rotating order; the
comparison is warm median vs warm median. Peak RSS and user + system CPU seconds come from
``/usr/bin/time -v`` (else from ``getrusage(RUSAGE_CHILDREN)`` in a wrapper process). CPU time is
kept beside wall time because a shared machine stretches wall time; the fixed cost / marginal
MB/s fit uses it. MB are 10^6 bytes.

    .venv/bin/python benchmarks/verify_speed.py                    # 2 GiB, 5 warm runs
    .venv/bin/python benchmarks/verify_speed.py --gib 0.25 --runs 1 --out /tmp/smoke.json

The bundles live under ``--work`` (default: a new folder in the system temp dir) and are deleted
at the end, source GGUFs as soon as each bundle is built; ``--keep`` keeps them.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

EDGETUNE = ROOT / ".venv" / "bin" / "edgetune"
REFERENCE = ROOT / "mobile_bundle" / "reference" / "verify.py"
TIME = Path("/usr/bin/time")
TOOLS = ("sha256sum", "openssl", "edgetune", "reference")
TARGET_RATIO = 0.8  # sha256sum time / verify time, from the issue
MIB = 1 << 20
# Fallback probe: run argv, exit with its code, report the child's ru_maxrss (KiB) and CPU time.
_RUSAGE_WRAPPER = ("import resource, subprocess, sys\n"
                   "rc = subprocess.run(sys.argv[2:]).returncode\n"
                   "u = resource.getrusage(resource.RUSAGE_CHILDREN)\n"
                   "open(sys.argv[1], 'w').write(f'{u.ru_maxrss} {u.ru_utime + u.ru_stime}')\n"
                   "sys.exit(rc)\n")


def write_gguf(path: Path, nbytes: int) -> None:
    """A valid GGUF with one I8 tensor of ``nbytes`` bytes, streamed (never held in memory)."""
    import numpy as np
    from gguf import GGUFWriter

    writer = GGUFWriter(path, arch="llama")
    writer.add_name("verify-speed")
    writer.add_context_length(4096)
    writer.add_tensor_info("blob", (nbytes,), np.dtype(np.int8), nbytes)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    fout = writer.fout[0]
    writer.write_padding(fout, fout.tell())  # tensor data starts aligned
    block = os.urandom(16 * MIB)  # sha256 costs the same for any content; this is not sparse
    left = nbytes
    while left:
        n = min(left, len(block))
        fout.write(block[:n])
        left -= n
    writer.write_padding(fout, nbytes)
    writer.close()


def build(work: Path, label: str, nbytes: int, private_key: Path) -> Path:
    from edgetune.bundle import BundleInfo, BundleModel, build_bundle
    from edgetune.tinymodel import CHATML_TEMPLATE

    source = work / f"source-{label}.gguf"
    write_gguf(source, nbytes)
    info = BundleInfo(
        name="verify-speed", bundle_id="verify-speed", version="1.0.0", creator_name="Bench",
        base_model="Qwen/Qwen2.5-0.5B-Instruct", base_model_license="apache-2.0",
        chat_template=CHATML_TEMPLATE, stop_strings=("<|im_end|>",), default_context=4096,
        system_prompt="You are a helpful assistant.", greeting="Hi!",
        training={"method": "grpo", "backend": "trl", "steps": 1, "dataset_rows": 1,
                  "rewards": ["format"]},
        eval_results={"quants": {"Q8_0": {"size_bytes": nbytes}}})
    model = BundleModel(quant="Q8_0", source=source, architecture="llama", context_length=4096,
                        ram_needed_bytes=nbytes)
    bundle = work / f"bundle-{label}"
    try:
        build_bundle(bundle, info, [model], private_key=private_key)
    finally:
        source.unlink()
    return bundle


def bundle_files(bundle: Path) -> list[Path]:
    return sorted(p for p in bundle.rglob("*") if p.is_file())


def evict(files: list[Path]) -> None:
    """Drop the files' clean pages from the page cache (no root needed; build_bundle fsynced)."""
    for path in files:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def resident(files: list[Path]) -> float | None:
    """Share of the files' bytes in the page cache (util-linux ``fincore``), or None without it.

    Recorded before every warm run: a machine under memory pressure (or proactive reclaim) may
    drop pages between runs, and a "warm" run that reads from disk is not one.
    """
    if not shutil.which("fincore"):
        return None
    out = subprocess.run(["fincore", "--bytes", "--noheadings", "--output", "RES,SIZE",
                          *map(str, files)], capture_output=True, text=True).stdout
    pairs = [tuple(map(int, line.split())) for line in out.splitlines() if line.strip()]
    total = sum(size for _res, size in pairs)
    # RES counts whole pages, so files smaller than a page can exceed their size
    return min(1.0, round(sum(res for res, _size in pairs) / total, 4)) if total else None


def commands(bundle: Path, public_key: Path) -> dict[str, list[str]]:
    files = [str(p) for p in bundle_files(bundle)]
    return {"sha256sum": ["sha256sum", *files],
            "openssl": ["openssl", "dgst", "-sha256", *files],
            "edgetune": [str(EDGETUNE), "verify", str(bundle), "--key", str(public_key)],
            "reference": [sys.executable, str(REFERENCE), str(bundle), "--key", str(public_key)]}


def run_once(argv: list[str]) -> tuple[float, int, float]:
    """(wall seconds, peak RSS in KiB, user + system CPU seconds) of one run, which must exit 0.

    CPU time is reported beside wall time because the machine may be shared: other work
    stretches wall time but barely changes the CPU seconds a single-threaded hash needs.
    """
    with tempfile.NamedTemporaryFile("r", suffix=".rss") as report:
        if TIME.exists():
            wrapped = [str(TIME), "-v", "-o", report.name, *argv]
        else:
            wrapped = [sys.executable, "-c", _RUSAGE_WRAPPER, report.name, *argv]
        start = time.perf_counter()
        done = subprocess.run(wrapped, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        wall = time.perf_counter() - start
        if done.returncode != 0:
            raise SystemExit(f"{shlex.join(argv[:3])} ... exited {done.returncode}: {done.stderr}")
        text = report.read()
    if not TIME.exists():
        rss, cpu = text.split()
        return wall, int(rss), float(cpu)
    fields = dict(line.strip().rsplit(": ", 1) for line in text.splitlines() if ": " in line)
    return (wall, int(fields["Maximum resident set size (kbytes)"]),
            float(fields["User time (seconds)"]) + float(fields["System time (seconds)"]))


def ratio(numerator: list[float], denominator: list[float]) -> float | None:
    """Ratio of the medians; None below /usr/bin/time's 10 ms CPU resolution."""
    top, bottom = statistics.median(numerator), statistics.median(denominator)
    return round(top / bottom, 3) if min(top, bottom) >= 0.05 else None


def measure(bundle: Path, public_key: Path, runs: int) -> dict:
    cmds = commands(bundle, public_key)
    files = bundle_files(bundle)
    nbytes = sum(p.stat().st_size for p in files)
    cold, samples, rss, cpu = {}, {t: [] for t in TOOLS}, {t: [] for t in TOOLS}, {}
    for tool in TOOLS:  # cold-ish: every tool starts from an evicted bundle
        evict(files)
        cold[tool], peak, _ = run_once(cmds[tool])
        rss[tool].append(peak)
    for tool in TOOLS:  # warm-up
        run_once(cmds[tool])
    load, cached = [], []  # other work on the machine shows up here (runs are interleaved)
    for rep in range(runs):
        for tool in TOOLS[rep % len(TOOLS):] + TOOLS[:rep % len(TOOLS)]:
            load.append(os.getloadavg()[0])
            cached.append(resident(files))
            wall, peak, seconds = run_once(cmds[tool])
            samples[tool].append(round(wall, 3))
            cpu.setdefault(tool, []).append(round(seconds, 2))
            rss[tool].append(peak)
    median = {t: statistics.median(s) for t, s in samples.items()}
    result = {
        "bundle_bytes": nbytes, "files": len(files),
        "warm_median_s": {t: round(m, 3) for t, m in median.items()},
        "warm_runs_s": samples,
        "cold_first_run_s": {t: round(s, 3) for t, s in cold.items()},
        "warm_MBps": {t: round(nbytes / m / 1e6, 1) for t, m in median.items()},
        "ratio_sha256sum_over": {t: round(median["sha256sum"] / median[t], 3)
                                 for t in ("edgetune", "reference", "openssl")},
        "ratio_openssl_over": {t: round(median["openssl"] / median[t], 3)
                               for t in ("edgetune", "reference", "sha256sum")},
        "warm_cpu_median_s": {t: round(statistics.median(v), 2) for t, v in cpu.items()},
        "warm_cpu_runs_s": cpu,
        "ratio_sha256sum_over_cpu": {t: ratio(cpu["sha256sum"], cpu[t])
                                     for t in ("edgetune", "reference", "openssl")},
        "peak_rss_mib": {t: round(max(v) / 1024, 1) for t, v in rss.items()},
        "max_load_average_1min": max(load),
        "min_cached_share_before_warm_runs": None if None in cached else min(cached),
    }
    print(f"{nbytes / 1e6:9.1f} MB  " + "  ".join(
        f"{t} {median[t]:.3f} s ({result['peak_rss_mib'][t]} MiB)" for t in TOOLS), flush=True)
    return result


def fixed_cost_fit(sizes: dict) -> dict:
    """Per tool, the line through the two big sizes' CPU seconds: fixed cost + MB/s of hashing.

    CPU time, not wall time: on a shared machine the wall-time difference between two sizes
    measured minutes apart is mostly the change in other load.
    """
    big, small = sizes["full"], sizes["quarter"]
    db = big["bundle_bytes"] - small["bundle_bytes"]
    fit = {}
    for tool in TOOLS:
        top, bottom = big["warm_cpu_median_s"][tool], small["warm_cpu_median_s"][tool]
        per_byte = (top - bottom) / db
        fit[tool] = {"fixed_cpu_s": round(top - per_byte * big["bundle_bytes"], 3),
                     "marginal_MBps": round(1 / per_byte / 1e6, 1) if per_byte > 0 else None}
    return fit


def version(argv: list[str]) -> str:
    try:
        return subprocess.run(argv, capture_output=True, text=True).stdout.splitlines()[0].strip()
    except (OSError, IndexError):
        return "unknown"


def machine() -> dict:
    cpuinfo = Path("/proc/cpuinfo").read_text()
    cpu = next((line.split(":", 1)[1].strip() for line in cpuinfo.splitlines()
                if line.startswith("model name")), platform.processor())
    flags = next((line.split(":", 1)[1].split() for line in cpuinfo.splitlines()
                  if line.startswith("flags")), [])
    from importlib.metadata import version as pkg_version

    return {"cpu": cpu, "cores": os.cpu_count(), "sha_ni": "sha_ni" in flags,
            "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30,
                                1),
            "kernel": platform.release(), "python": platform.python_version(),
            "model_signing": pkg_version("model-signing"),
            "sha256sum": version(["sha256sum", "--version"]),
            "openssl": version(["openssl", "version"])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--gib", type=float, default=2.0, help="size of the big bundle's GGUF")
    parser.add_argument("--runs", type=int, default=5, help="warm runs per command (median)")
    parser.add_argument("--work", type=Path, default=None, help="where to build the bundles")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/verify_speed.json")
    parser.add_argument("--keep", action="store_true", help="keep the bundles")
    args = parser.parse_args()

    from edgetune.keys import generate_keypair

    big = int(args.gib * 2**30) // MIB * MIB
    work = Path(tempfile.mkdtemp(prefix="edgetune-verify-speed-", dir=args.work))
    results = {"command": shlex.join([".venv/bin/python", "benchmarks/verify_speed.py",
                                      *sys.argv[1:]]),
               "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
               "commit": os.environ.get("EDGETUNE_COMMIT", "unknown"),
               "machine": machine(), "warm_runs": args.runs,
               "commands": {"sha256sum": "sha256sum FILE...",
                            "openssl": "openssl dgst -sha256 FILE...",
                            "edgetune": ".venv/bin/edgetune verify BUNDLE --key PUB",
                            "reference": ".venv/bin/python mobile_bundle/reference/verify.py "
                                         "BUNDLE --key PUB"},
               "target_ratio": TARGET_RATIO, "sizes": {}}
    try:
        keys = generate_keypair(work / "keys", "bench")
        for label, nbytes in (("full", big), ("quarter", big // 4 // MIB * MIB), ("tiny", MIB)):
            start = time.perf_counter()
            bundle = build(work, label, nbytes, keys.private_key)
            print(f"built {label} bundle ({nbytes / 1e6:.1f} MB GGUF) in "
                  f"{time.perf_counter() - start:.1f} s", flush=True)
            results["sizes"][label] = measure(bundle, keys.public_key, args.runs)
            if not args.keep:
                shutil.rmtree(bundle)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    sizes = results["sizes"]
    results["fit_cpu"] = fixed_cost_fit(sizes)
    full = sizes["full"]
    results["target_met"] = {t: full["ratio_sha256sum_over"][t] >= TARGET_RATIO
                             for t in ("edgetune", "reference")}
    results["rss_growth_mib_quarter_to_full"] = {
        t: round(full["peak_rss_mib"][t] - sizes["quarter"]["peak_rss_mib"][t], 1) for t in TOOLS}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"sha256sum / edgetune verify = {full['ratio_sha256sum_over']['edgetune']} "
          f"(target >= {TARGET_RATIO}); openssl / edgetune verify = "
          f"{full['ratio_openssl_over']['edgetune']}; fit (CPU s): {results['fit_cpu']}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
