"""Q4_K_X (edgetune.mix) against plain Q4_K_M with the imatrix, on the real model and the demo.

For each model: the F16 GGUF, the domain imatrix from the calibration rows (as ``build`` makes
them from the demo data), plain Q4_K_M with that imatrix, then the Q4_K_X search under Q4_K_M's
size, then ``evaluate`` as the build runs it (both fidelity texts: held-out conversations and
general English; speed, best of n; task accuracy on 12 held-out questions; the gates and the
mix's verdict) on Q4_K_M, Q4_K_X and Q5_K_M. Reported per model: size, mean KLD and top-1 on each
text, decode tok/s, the verdict, and the search's time against the cost of quantising and
evaluating two extra quants (the evaluation of Q4_K_M alone subtracted from that of all three,
plus the two quantisations), all measured in this one run on this machine.

    .venv/bin/python benchmarks/quant_mix.py --models real,demo --out benchmarks/results/quant_mix.json
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
TASK_QUESTIONS = 12


def model_folder(model: str, work: Path) -> Path:
    if model == "real":
        from tests import real_model as rm

        cache = Path(os.environ.get("EDGETUNE_TEST_CACHE") or "~/.cache/edgetune-tests").expanduser()
        return rm.build(cache / "SmolLM2-135M-Instruct", cache)
    from edgetune.demo.model import demo_base_model

    return demo_base_model(cache=work / "demo-cache")


def run_model(model: str, work: Path) -> dict:
    from edgetune import hf
    from edgetune.artifacts import MergedModel
    from edgetune.conversations import conversation_text
    from edgetune.convert import convert
    from edgetune.data import load_qa, split_qa
    from edgetune.demo import DEMO_DATA, SYSTEM_PROMPT
    from edgetune.evaluate import evaluate
    from edgetune.imatrix import compute_imatrix, quantise_with_imatrix
    from edgetune.mix import MIX
    from edgetune.profiles import load_profile
    from edgetune.quantise import build_mix, tensor_mix

    folder = model_folder(model, work)
    out = work / model
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = hf.load_tokenizer(folder)
    splits = split_qa(load_qa(DEMO_DATA).rows)
    chats = [conversation_text(tokenizer, SYSTEM_PROMPT, r) for r in splits.eval]
    calibration = [conversation_text(tokenizer, SYSTEM_PROMPT, r) for r in splits.calibration]
    f16 = convert(MergedModel(path=folder), out / "gguf", name=model, parity_texts=chats,
                  overwrite=True)
    quants = out / "quants"
    quants.mkdir(exist_ok=True)
    imatrix = compute_imatrix(f16.gguf, calibration, quants / "imatrix.gguf")
    profile = dataclasses.replace(load_profile("phone"), quants=("Q4_K_M", MIX, "Q5_K_M"))
    timings = {}
    files = {}
    for quant in ("Q4_K_M", "Q5_K_M"):
        started = time.monotonic()
        quantise_with_imatrix(f16.gguf, quants / f"{model}-{quant}.gguf", quant, imatrix)
        timings[f"quantise_{quant}"] = time.monotonic() - started
        files[quant] = f"{model}-{quant}.gguf"
    started = time.monotonic()
    recipe = build_mix(f16.gguf, imatrix, calibration, profile, quants, f"{model}-{MIX}.gguf",
                       reference=quants / files["Q4_K_M"])
    timings["search_and_build"] = time.monotonic() - started
    files[MIX] = f"{model}-{MIX}.gguf"
    from edgetune.artifacts import QuantizedModels

    def models(names):
        picked = {q: files[q] for q in names}
        return QuantizedModels(path=quants, source_gguf=str(f16.gguf), files=picked,
                               mix={q: tensor_mix(quants / f, q) for q, f in picked.items()},
                               imatrix=imatrix.name, recipes={MIX: recipe} if MIX in picked else {})

    def timed_eval(names, where):
        started = time.monotonic()
        evaluate(f16, models(names), profile, chats, out / where, qa_rows=splits.eval[:TASK_QUESTIONS],
                 system_prompt=SYSTEM_PROMPT, accept_gate_failure=True, overwrite=True)
        return time.monotonic() - started, json.loads((out / where / "eval.json").read_text())

    timings["evaluate_Q4_K_M"], _ = timed_eval(["Q4_K_M"], "eval-one")
    timings["evaluate_three"], report = timed_eval(["Q4_K_M", MIX, "Q5_K_M"], "eval-three")
    two_extra = timings["evaluate_three"] - timings["evaluate_Q4_K_M"] \
        + timings["quantise_Q4_K_M"] + timings["quantise_Q5_K_M"]
    q = report["quants"]
    rows = {}
    for quant in ("Q4_K_M", MIX, "Q5_K_M"):
        m = q[quant]
        rows[quant] = {"size_bytes": m["size_bytes"], "bits_per_weight": m["bits_per_weight"],
                       "kld_mean": m["kld_mean"], "top1": m["top1"],
                       "texts": {t: {"kld_mean": v["kld_mean"], "top1": v["top1"]}
                                 for t, v in m["texts"].items()},
                       "decode_tps": m.get("decode_tps"), "machine_busy": m.get("machine_busy"),
                       "gate_passed": m.get("gate_passed")}
    ref, mixed = q["Q4_K_M"], q[MIX]
    return {
        "model": model, "quants": rows, "verdict": {k: v for k, v in mixed["mix"].items()
                                                    if k not in ("search",)},
        "search": recipe["search"],
        "kld_reduction": {t: 1 - mixed["texts"][t]["kld_mean"] / ref["texts"][t]["kld_mean"]
                          for t in ref["texts"]},
        "size_ratio": mixed["size_bytes"] / ref["size_bytes"],
        "timings_s": timings, "two_extra_quants_s": two_extra,
        "search_over_two_extra_quants": timings["search_and_build"] / two_extra,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="real,demo")
    parser.add_argument("--work", type=Path, default=Path("/tmp/edgetune-quant-mix"))
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/quant_mix.json")
    args = parser.parse_args()
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                            text=True).stdout.strip()
    results = {"command": "benchmarks/quant_mix.py " + " ".join(sys.argv[1:]), "commit": commit,
               "machine": {"cores": os.cpu_count(), "platform": platform.platform(),
                           "load_avg_start": os.getloadavg()[0]},
               "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
               "models": {}}
    for model in args.models.split(","):
        results["models"][model] = run_model(model, args.work)
        print(json.dumps({model: {k: results["models"][model][k] for k in
                                  ("kld_reduction", "size_ratio", "search_over_two_extra_quants")}}),
              flush=True)
    results["machine"]["load_avg_end"] = os.getloadavg()[0]
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
