"""The demo base model: a tiny llama-family model made locally, deterministically.

It is a *demo model*: 2 layers, 256 wide, a 512-token SentencePiece vocabulary trained on the
demo questions, then briefly trained on the training split in the answer format, so that GRPO
sees completions with different rewards (a random model scores 0 everywhere, and GRPO learns
nothing from equal rewards). It shows the pipeline working; it is not a useful assistant.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from edgetune import paths
from edgetune.artifacts import atomic_dir
from edgetune.conversations import conversation, formatted_answer
from edgetune.data import load_qa, split_qa
from edgetune.demo import DEMO_DATA, SYSTEM_PROMPT
from edgetune.tinymodel import TinySpec, build_tiny_model, pretrain

# Bump when the recipe changes, so a cached model from an older recipe is not reused.
RECIPE_VERSION = 1
SPEC = TinySpec(family="llama", vocab_size=512, hidden_size=256, intermediate_size=512,
                num_layers=2, num_heads=4, num_kv_heads=2, context_length=1024, seed=0)
PRETRAIN_STEPS = 200


def demo_base_model(*, cache: Path | None = None,
                    on_step: Callable[[int, int, float], None] | None = None) -> Path:
    """Build (once, then cached) the demo base model and return its directory."""
    target = (cache or paths.cache_dir()) / f"demo-base-v{RECIPE_VERSION}"
    if (target / "config.json").is_file():
        return target
    import torch

    rows = split_qa(load_qa(DEMO_DATA).rows).train  # never the eval split
    with atomic_dir(target, overwrite=True) as scratch:
        texts = [f"{SYSTEM_PROMPT}\n{r.question}\n{formatted_answer(r)}" for r in rows]
        model, tokenizer = build_tiny_model(scratch, texts, SPEC)
        chats = [tokenizer.apply_chat_template(conversation(SYSTEM_PROMPT, r), tokenize=False) for r in rows]
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # bit-for-bit reproducible on any machine
        try:
            pretrain(model, tokenizer, chats, steps=PRETRAIN_STEPS, on_step=on_step)
        finally:
            torch.set_num_threads(threads)
        model.save_pretrained(scratch)
    return target
