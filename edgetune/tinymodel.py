"""Build tiny, real Hugging Face models locally: no hub, no download.

Nothing can be fetched from a model hub on our machines or in CI, so the demo and the tests make
their own models: a SentencePiece tokenizer trained on the given text, plus a randomly
initialised (optionally briefly trained) model of a chosen architecture family. Widths are
multiples of 256 so llama.cpp's K-quants are real rather than silent fallbacks.

Written by hand because no library builds a coherent tokenizer + model pair offline; the pieces
(sentencepiece, transformers' config classes) do the real work.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from edgetune.errors import ModelError

# ChatML: understood by llama.cpp's template engine, PocketPal, Ollama and LM Studio.
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
# Llama 3's shape: BOS written by the template, every turn ends with <|eot_id|> (also the EOS).
LLAMA3_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' + message['content']"
    " + '<|eot_id|>' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}"
    "{% endif %}"
)
# Gemma's shape: BOS from the template, a "model" role, the system prompt folded into the first
# user turn, and a turn that ends with <end_of_turn> while the tokenizer's EOS is <eos>: the case
# where stopping at EOS alone runs on past the answer.
GEMMA_TEMPLATE = (
    "{{ bos_token }}{% set ns = namespace(system='') %}{% for message in messages %}"
    "{% if message['role'] == 'system' %}{% set ns.system = message['content'] + '\n\n' %}"
    "{% else %}{% set role = 'model' if message['role'] == 'assistant' else message['role'] %}"
    "{{ '<start_of_turn>' + role + '\n' + (ns.system if loop.index0 <= 1 and role == 'user'"
    " else '') + message['content'] + '<end_of_turn>\n' }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}"
)


@dataclass(frozen=True)
class ChatStyle:
    """A chat template with the special tokens it writes, as a real model family ships it."""
    name: str
    template: str
    turn_tokens: tuple[str, ...]  # special tokens the template writes; end_of_turn among them
    end_of_turn: str
    bos: str  # SentencePiece pieces at ids 1 and 2
    sp_eos: str
    eos_token: str  # the tokenizer's eos_token (Gemma: not the end of turn)
    add_bos: bool  # the tokenizer adds BOS to plain text


CHAT_STYLES = {
    "chatml": ChatStyle("chatml", CHATML_TEMPLATE, ("<|im_start|>", "<|im_end|>"), "<|im_end|>",
                        "<s>", "</s>", "<|im_end|>", False),
    "llama3": ChatStyle("llama3", LLAMA3_TEMPLATE,
                        ("<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"), "<|eot_id|>",
                        "<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>", True),
    "gemma": ChatStyle("gemma", GEMMA_TEMPLATE, ("<start_of_turn>", "<end_of_turn>"),
                       "<end_of_turn>", "<bos>", "<eos>", "<eos>", True),
}
# The template each family's instruct models ship (the tests' "native" tiny models).
NATIVE_CHAT = {"llama": "llama3", "qwen2": "chatml", "qwen3": "chatml", "gemma3": "gemma"}
CHAT_SPECIAL_TOKENS = CHAT_STYLES["chatml"].turn_tokens
# Format tags are single tokens so a tiny model can learn them quickly.
FORMAT_TOKENS = ("<reasoning>", "</reasoning>", "<answer>", "</answer>", "<think>", "</think>")

# Families whose tiny models convert to GGUF with exact tokenizer and logit parity. phi3 is left
# out: llama.cpp 0.3.36 fails to load a SentencePiece phi3 vocab ("unordered_map::at").
FAMILIES = ("llama", "qwen2", "qwen3", "gemma3")


@dataclass(frozen=True)
class TinySpec:
    family: str = "llama"
    vocab_size: int = 512
    hidden_size: int = 256
    intermediate_size: int = 512
    num_layers: int = 2
    num_heads: int = 4
    num_kv_heads: int = 2
    context_length: int = 1024
    seed: int = 0
    chat: str | ChatStyle = "chatml"  # a CHAT_STYLES key (NATIVE_CHAT[family]: the family's own)


# ~46 M parameters (F16 file ~91 MB): big enough that prefill/decode timings on a 2-core
# machine are tens of milliseconds rather than noise; every width a multiple of 256.
WIDE_SPEC = TinySpec(family="llama", hidden_size=1024, intermediate_size=2816, num_layers=4,
                     num_heads=16, num_kv_heads=4)


def train_tokenizer(texts: Iterable[str], vocab_size: int, out_dir: Path, *,
                    space_prefix: bool = False, chat: ChatStyle = CHAT_STYLES["chatml"]) -> Path:
    """Train a SentencePiece BPE model with byte fallback; ids 0/1/2 are unk/bos/eos.

    Single-threaded BPE training is deterministic, so the same texts give the same tokenizer.
    """
    import sentencepiece as spm

    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(list(texts)),
        model_writer=buf,
        vocab_size=vocab_size,
        model_type="bpe",
        character_coverage=1.0,
        byte_fallback=True,
        add_dummy_prefix=space_prefix,
        user_defined_symbols=[*chat.turn_tokens, *FORMAT_TOKENS],
        unk_id=0,
        bos_id=1,
        eos_id=2,
        bos_piece=chat.bos,
        eos_piece=chat.sp_eos,
        pad_id=-1,
        num_threads=1,
        minloglevel=2,
        hard_vocab_limit=False,
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "tokenizer.model"
    path.write_bytes(buf.getvalue())
    return path


def _config(spec: TinySpec, vocab_size: int, eos_token_id: int | list[int]):
    import transformers as tf

    common = dict(
        vocab_size=vocab_size,
        hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_layers,
        num_attention_heads=spec.num_heads,
        num_key_value_heads=spec.num_kv_heads,
        max_position_embeddings=spec.context_length,
        bos_token_id=1,
        eos_token_id=eos_token_id,
        pad_token_id=None,
        tie_word_embeddings=False,
    )
    if spec.family == "llama":
        return tf.LlamaConfig(**common), tf.LlamaForCausalLM
    if spec.family == "qwen2":
        return tf.Qwen2Config(**common, use_sliding_window=False), tf.Qwen2ForCausalLM
    if spec.family == "qwen3":
        head_dim = spec.hidden_size // spec.num_heads
        return tf.Qwen3Config(**common, head_dim=head_dim), tf.Qwen3ForCausalLM
    if spec.family == "gemma3":
        head_dim = spec.hidden_size // spec.num_heads
        cfg = tf.Gemma3TextConfig(
            **{**common, "tie_word_embeddings": True},
            head_dim=head_dim,
            query_pre_attn_scalar=head_dim,
            sliding_window=spec.context_length,
        )
        return cfg, tf.Gemma3ForCausalLM
    raise ModelError(
        f"unknown architecture family '{spec.family}'",
        hint=f"choose one of: {', '.join(FAMILIES)}",
    )


# SentencePiece puts user-defined symbols right after unk/bos/eos: <|im_start|>=3, <|im_end|>=4.
def chat_style(spec: TinySpec) -> ChatStyle:
    if isinstance(spec.chat, ChatStyle):
        return spec.chat
    if spec.chat not in CHAT_STYLES:
        raise ModelError(f"unknown chat style '{spec.chat}'",
                         hint=f"choose one of: {', '.join(CHAT_STYLES)}")
    return CHAT_STYLES[spec.chat]


def uses_space_prefix(family: str) -> bool:
    """Whether llama.cpp will prefix text with "▁" for this family's SentencePiece vocab.

    llama.cpp's converter turns the prefix off for llama and gemma but leaves llama.cpp's
    SentencePiece default (prefix at the start and after every special token) for qwen2/qwen3.
    HF's tokenizer must do the same, or token ids differ: "legacy" mode matches that default.
    """
    return family in ("qwen2", "qwen3")


def write_tokenizer_config(out_dir: Path, chat_template: str = CHATML_TEMPLATE, *,
                           space_prefix: bool = False,
                           chat: ChatStyle = CHAT_STYLES["chatml"]) -> None:
    """Tokenizer settings that both transformers and llama.cpp's converter read."""
    special = {"bos_token": chat.bos, "eos_token": chat.eos_token, "unk_token": "<unk>",
               "pad_token": chat.end_of_turn}
    config = {
        "tokenizer_class": "LlamaTokenizer",
        **special,
        "add_bos_token": chat.add_bos,
        "add_eos_token": False,
        "chat_template": chat_template,
        "model_max_length": 1024,
        "legacy": space_prefix,
        "add_prefix_space": space_prefix,
    }
    (out_dir / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    (out_dir / "special_tokens_map.json").write_text(json.dumps(special, indent=2))


def build_tiny_model(out_dir: Path, texts: Sequence[str], spec: TinySpec = TinySpec()):
    """Create ``out_dir`` with a tokenizer and a random model of ``spec.family``.

    Returns the (model, tokenizer) pair, already saved.
    """
    import torch
    from transformers import GenerationConfig

    from edgetune.hf import load_tokenizer

    out_dir = Path(out_dir)
    prefix = uses_space_prefix(spec.family)
    chat = chat_style(spec)
    train_tokenizer(texts, spec.vocab_size, out_dir, space_prefix=prefix, chat=chat)
    write_tokenizer_config(out_dir, chat.template, space_prefix=prefix, chat=chat)
    tokenizer = load_tokenizer(out_dir)
    end_of_turn = tokenizer.convert_tokens_to_ids(chat.end_of_turn)
    if end_of_turn != 2 + chat.turn_tokens.index(chat.end_of_turn) + 1:
        raise ModelError(f"tokenizer did not place {chat.end_of_turn} after unk/bos/eos",
                         hint="this is a bug in edgetune's tiny model recipe")
    # Generation stops at the end of a turn and at EOS, as the families' generation_config says.
    stops = end_of_turn if chat.eos_token == chat.end_of_turn else [2, end_of_turn]
    config, model_cls = _config(spec, len(tokenizer), stops)
    torch.manual_seed(spec.seed)
    model = model_cls(config)
    model.generation_config = GenerationConfig(
        bos_token_id=1, eos_token_id=stops, pad_token_id=end_of_turn
    )
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    # save_pretrained rewrites tokenizer_config.json: restore what llama.cpp's converter reads.
    write_tokenizer_config(out_dir, chat.template, space_prefix=prefix, chat=chat)
    _declare_added_tokens(out_dir, tokenizer, chat)
    # A model card as Hub models have one: the build reads the base model's licence from it.
    (Path(out_dir) / "README.md").write_text(
        "---\nlicense: apache-2.0\nlibrary_name: transformers\n---\n\n"
        f"# A tiny {spec.family} test model built by edgetune (random weights)\n")
    return model, tokenizer


def _declare_added_tokens(out_dir: Path, tokenizer, chat: ChatStyle) -> None:
    """Write ``added_tokens_decoder`` the way hub models ship it.

    llama.cpp's SentencePiece converter reads token types only from this field; transformers 5
    no longer writes it, and without it the chat and format tokens become plain text in the
    GGUF (the tokenizer parity check catches that).
    """
    path = out_dir / "tokenizer_config.json"
    config = json.loads(path.read_text())
    decoder = {}
    for token in ("<unk>", chat.bos, chat.sp_eos, *chat.turn_tokens, *FORMAT_TOKENS):
        decoder[str(tokenizer.convert_tokens_to_ids(token))] = {
            "content": token, "lstrip": False, "normalized": False, "rstrip": False,
            "single_word": False, "special": token not in FORMAT_TOKENS,
        }
    config["added_tokens_decoder"] = decoder
    path.write_text(json.dumps(config, indent=2))


def pretrain(model, tokenizer, texts: Sequence[str], *, steps: int, batch_size: int = 16,
             lr: float = 3e-3, seed: int = 0, max_length: int = 256,
             on_step=None) -> list[float]:
    """Briefly train a tiny model on ``texts`` (full fine-tune, causal LM loss).

    Deterministic for a given seed and thread count. Returns the loss per step.
    """
    import torch

    torch.manual_seed(seed)
    model.train()
    enc = [tokenizer(t, add_special_tokens=False)["input_ids"][:max_length] for t in texts]
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    gen = torch.Generator().manual_seed(seed)
    pad = tokenizer.pad_token_id
    losses = []
    for step in range(steps):
        idx = torch.randint(len(enc), (batch_size,), generator=gen).tolist()
        batch = [enc[i] for i in idx]
        width = max(len(b) for b in batch)
        ids = torch.full((batch_size, width), pad, dtype=torch.long)
        labels = torch.full((batch_size, width), -100, dtype=torch.long)
        mask = torch.zeros((batch_size, width), dtype=torch.long)
        for row, seq in enumerate(batch):
            ids[row, : len(seq)] = torch.tensor(seq)
            labels[row, : len(seq)] = torch.tensor(seq)
            mask[row, : len(seq)] = 1
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()))
        if on_step is not None:
            on_step(step + 1, steps, losses[-1])
    model.eval()
    return losses
