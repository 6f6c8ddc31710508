"""merge: the LoRA adapter folded into the 16-bit base weights.

Always from the base's own 16-bit (or 32-bit) weights, never a 4-bit copy: merging into a
quantised base is how merged models end up worse than their adapter (unsloth#1519). Tokenizer
files are copied byte for byte from the base, because re-saving them through transformers 5
drops fields llama.cpp's converter reads.
"""

from __future__ import annotations

import dataclasses
import shutil
from collections.abc import Callable
from pathlib import Path

from edgetune import hf
from edgetune.artifacts import Adapter, MergedModel, atomic_dir
from edgetune.errors import ModelError


def merge(adapter: Adapter, out: Path, *, overwrite: bool = False,
          on_progress: Callable[[str], None] | None = None) -> MergedModel:
    from peft import PeftModel

    report = on_progress or (lambda _msg: None)
    # Always the 16-bit weights the adapter was trained on top of: a 4-bit training run
    # quantised them on load, so merging needs the original files (local dir or HF cache).
    base_dir = hf.resolve_model(adapter.base_model)
    arch = hf.architecture(base_dir)
    hf.refuse_prequantized(base_dir)
    report("loading the 16-bit base")
    base = hf.load_causal_lm(base_dir, _stored_dtype(base_dir))
    before = {k: v.detach().clone() for k, v in base.state_dict().items()}
    report("merging the adapter")
    merged = PeftModel.from_pretrained(base, str(adapter.path)).merge_and_unload()
    after = merged.state_dict()
    delta = max(float((after[k].float() - before[k].float()).abs().max()) for k in before)
    if delta == 0.0:
        raise ModelError(
            "the merged model is identical to the base: training changed nothing",
            hint="train for more steps or check the training log: frac_reward_zero_std near 1 "
                 "means every completion got the same reward, so GRPO had nothing to learn from",
        )
    with atomic_dir(out, overwrite=overwrite) as scratch:
        report("saving")
        merged.save_pretrained(scratch, safe_serialization=True)
        for name in hf.TOKENIZER_FILES:
            if (base_dir / name).is_file():
                shutil.copyfile(base_dir / name, scratch / name)
        artifact = MergedModel(path=scratch, architecture=arch, base_model=adapter.base_model,
                               max_weight_delta=delta)
        artifact.save()
    return dataclasses.replace(artifact, path=out)


def _stored_dtype(model_dir: Path) -> str:
    import json

    config = json.loads((model_dir / "config.json").read_text())
    dtype = config.get("dtype") or config.get("torch_dtype") or "float32"
    return dtype if dtype in ("float32", "float16", "bfloat16") else "float32"
