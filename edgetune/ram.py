"""The RAM a phone app needs for a GGUF: PocketPal's estimate."""

from __future__ import annotations

from pathlib import Path

from edgetune.llamacpp import gguf_field


def ram_needed(path: Path, context_length: int) -> int:
    """PocketPal's estimate: (file + KV cache + compute buffer) x 1.1 (ANCHORS.md 3)."""
    import gguf

    reader = gguf.GGUFReader(str(path))
    arch = gguf_field(reader, "general.architecture")
    layers = int(gguf_field(reader, f"{arch}.block_count"))
    embd = int(gguf_field(reader, f"{arch}.embedding_length"))
    heads = int(gguf_field(reader, f"{arch}.attention.head_count"))
    kv_heads = int(gguf_field(reader, f"{arch}.attention.head_count_kv") or heads)
    head_dim = int(gguf_field(reader, f"{arch}.attention.key_length") or embd // heads)
    vocab = len(reader.fields["tokenizer.ggml.tokens"].data)
    kv = 2 * layers * context_length * head_dim * kv_heads * 2
    buffer = (vocab + embd) * 512 * 4
    return int((path.stat().st_size + kv + buffer) * RAM_MARGIN)


RAM_MARGIN = 1.1  # PocketPal's safety factor over file + KV cache + compute buffer
