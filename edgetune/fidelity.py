"""fidelity: how far a quantised GGUF drifts from its F16 GGUF, measured as llama-perplexity does.

For each quant: perplexity of the quant and of the F16 model on the same tokens, the KL divergence
of the quant's next-token distribution from the F16 one (mean, standard error, median, 99th
percentile), how often both pick the same top token ("Same top p") and the mean change in the
probability of the actual next token ("Mean Δp").

Hand-written because nothing off the shelf does it in-process: llama-cpp-python exposes logits
but no KL divergence, and ``llama-perplexity --kl-divergence`` runs out of process and first
writes every scored distribution of the base model to disk (``n_vocab`` x 2 bytes per scored
token: tens of GB for a 150k-vocabulary model on wikitext-2's test set). Here the F16 model and
the quants run in lockstep instead, one chunk at a time: evaluate the base on a chunk, evaluate
every quant on the same chunk, fold that chunk's statistics into running sums, drop them all.
The F16 pass is paid once for any number of quants (``compare_many``), and memory stays at one
chunk of logits per model whatever the length of the text.

The method follows ``tools/perplexity/perplexity.cpp`` (``perplexity`` and ``kl_divergence``) of
the llama.cpp that llama-cpp-python vendors, so the figures are comparable with published ones:

* tokens: the text tokenised with the model's special tokens added (BOS when the vocabulary says
  so) and special tokens in the text *not* parsed; ``-f`` drops one trailing newline of its file;
* chunks: ``len(tokens) // n_ctx`` non-overlapping chunks of ``n_ctx`` tokens; the tail is unused.
  At least two chunks are required, as llama-perplexity requires;
* BOS: when the model adds BOS, the first token of *every* chunk is replaced (not preceded) by BOS;
* scored tokens: the logits at positions ``n_ctx//2 .. n_ctx-2`` of each chunk predict tokens
  ``n_ctx//2 + 1 .. n_ctx-1``, so ``n_ctx - 1 - n_ctx//2`` tokens per chunk, each with at least
  ``n_ctx//2`` tokens of context;
* KLD per token: ``sum_i p_base_i * (log p_base_i - log p_quant_i)`` over the vocabulary entries
  with ``log p_base_i > -16`` only (the rest are what llama-perplexity's base file cannot hold);
* standard errors: ``sqrt((mean(x^2) - mean(x)^2) / (count - 1))``, 0 for 10 tokens or fewer;
* percentiles: linear interpolation between the sorted per-token values at
  ``fraction * (count - 1)``; the median of an even count is the mean of the middle two;
* top token: first index of the maximum, quant logits against base log-probs;
* Δp: ``p_quant(next token) - p_base(next token)``; llama-perplexity prints it in percent, here it
  is a fraction.

One deliberate difference: llama-perplexity stores the base log-probs as 16-bit integers on a grid
spanning ``[max - 16, max]`` of the logits (steps of at most 2.4e-4 nats; lower logits clamped to
the bottom) and computes every base-side figure from those rounded values. Here the base log-probs
are exact. The rounding moves the figures by far less than their standard errors (measured on a
tiny model: KLD identical to 6 digits, "Same top p" off by one token in 6375), but it can create
ties between near-equal top logits, so a model compared with itself could score below 100% "Same
top p" and a KLD slightly off 0; exact log-probs give exactly 0 KLD, top1 1.0 and ratio 1.0.

log-softmax and the sums are computed in float64 with numpy (llama-perplexity mixes float32 and
double). Each chunk is one decode with flash attention, which gives the same logits as
``llama-perplexity -b <n_ctx>``; by default it decodes 2048/n_ctx chunks at once, which below
n_ctx 512 moves its logits in the last bits (quant PPL ~1e-4 relative at n_ctx 128).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from edgetune import llamacpp
from edgetune.errors import ConfigError, DataError, ModelError

# Rows of logits converted to float64 at a time: ~20 MB per array for a 150k vocabulary.
_ROWS_PER_BLOCK = 16
# perplexity.cpp leaves base log-probs at or below -16 out of the KLD sum.
_MIN_BASE_LOG_PROB = -16.0


@dataclass(frozen=True)
class Fidelity:
    """A quant against its F16 model on the same tokens (llama-perplexity's figures)."""

    tokens: int          # scored tokens
    chunks: int
    ppl: float           # quant perplexity
    ppl_base: float      # F16 perplexity on the same tokens
    ppl_ratio: float     # ppl / ppl_base
    kld_mean: float
    kld_se: float        # standard error of kld_mean
    kld_p99: float       # 99th percentile of the per-token KLD
    kld_median: float
    top1: float          # fraction of scored tokens where both models' top token agrees
    delta_p_mean: float  # mean p_quant(next) - p_base(next), a fraction (llama-perplexity: percent)
    delta_p_se: float    # standard error of delta_p_mean, a fraction

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


def eval_tokens(gguf: Path, text: str) -> list[int]:
    """Tokenise ``text`` the way llama-perplexity does (with BOS when the model adds one).

    Special tokens in the text are not parsed (llama-perplexity's ``common_tokenize`` default),
    and one trailing newline is dropped, as ``llama-perplexity -f`` does when it reads a file.
    """
    _require_file(gguf)
    if text.endswith("\n"):
        text = text[:-1]
    llm = llamacpp.open_gguf(gguf, vocab_only=True)
    try:
        # add_bos=True is llama.cpp's add_special: BOS only where the vocabulary asks for it.
        return llm.tokenize(text.encode(), add_bos=True, special=False)
    finally:
        llm.close()


def chat_tokens(gguf: Path, conversations: Sequence[str]) -> list[int]:
    """Tokenise rendered conversations as the model reads them at chat time: the template's
    special tokens (``<|im_start|>``, ``<end_of_turn>``, a BOS it writes) parsed as the single
    tokens they are, not spelled out as text the way llama-perplexity reads a file. No BOS is
    added (a template that wants one writes it); chunks still start with BOS when the model adds
    one (see :func:`compare_many`)."""
    _require_file(gguf)
    llm = llamacpp.open_gguf(gguf, vocab_only=True)
    try:
        return llm.tokenize("".join(conversations).encode(), add_bos=False, special=True)
    finally:
        llm.close()


def compare(base_gguf: Path, quant_gguf: Path, tokens: list[int], *, n_ctx: int = 512,
            threads: int | None = None,
            on_chunk: Callable[[int, int], None] | None = None) -> Fidelity:
    """Compare ``quant_gguf`` with ``base_gguf`` on ``tokens`` (from :func:`eval_tokens`).

    One quant: :func:`compare_many` with a single entry; the same errors.
    """
    return compare_many(base_gguf, {"quant": quant_gguf}, tokens, n_ctx=n_ctx, threads=threads,
                        on_chunk=on_chunk)["quant"]


def compare_many(base_gguf: Path, quants: Mapping[str, Path], tokens: list[int], *,
                 n_ctx: int = 512, threads: int | None = None,
                 on_chunk: Callable[[int, int], None] | None = None) -> dict[str, Fidelity]:
    """Compare every GGUF in ``quants`` (name -> path) with ``base_gguf`` on ``tokens``.

    The base model evaluates each chunk once, then every quant evaluates the same chunk and its
    statistics are folded in against the base's log-probs: the F16 pass, usually the most
    expensive one, is paid once whatever the number of quants. All the models are loaded at once
    (memory-mapped) and each holds at most one chunk of logits. Runs on ``threads`` threads
    (default :func:`edgetune.llamacpp.threads`); ``on_chunk(done, total)`` is called after each
    chunk. Returns one :class:`Fidelity` per name, in the order given.

    Raises ``DataError`` when ``tokens`` holds fewer than ``2 * n_ctx`` tokens (llama-perplexity
    refuses the same: "you need at least 2*n_ctx tokens"), ``ConfigError`` for an ``n_ctx`` below
    4 or no quants, and ``ModelError`` when a file is missing or a quant does not share the base
    model's vocabulary.
    """
    import numpy as np

    if n_ctx < 4:
        raise ConfigError(f"evaluation context of {n_ctx} tokens is too small",
                          hint="use n_ctx of at least 4 (llama-perplexity's default is 512)")
    if not quants:
        raise ConfigError("no quant to compare with the F16 model",
                          hint="pass at least one quantised GGUF")
    if len(tokens) < 2 * n_ctx:
        raise DataError(
            f"evaluation text has {len(tokens)} tokens; llama-perplexity's method needs at least "
            f"{2 * n_ctx} (two chunks of {n_ctx})",
            hint="add more held-out text or lower the evaluation context (n_ctx)",
        )
    _require_file(base_gguf)
    for path in quants.values():
        _require_file(path)
    n_threads = threads or llamacpp.threads()
    n_chunks = len(tokens) // n_ctx
    first = n_ctx // 2
    stats = {name: _Stats() for name in quants}

    with contextlib.ExitStack() as stack:
        base = _open(base_gguf, n_ctx, n_threads)
        stack.callback(base.close)
        models = {}
        for name, path in quants.items():
            models[name] = _open(path, n_ctx, n_threads)
            stack.callback(models[name].close)
        bos = None
        for name, llm in models.items():
            bos = _check_same_vocab(base, llm, base_gguf, quants[name], tokens)
        for c in range(n_chunks):
            chunk = list(tokens[c * n_ctx:(c + 1) * n_ctx])
            if bos is not None:
                chunk[0] = bos
            targets = np.asarray(tokens[c * n_ctx + first + 1:(c + 1) * n_ctx])
            # Each Llama keeps its own logits buffer: every model's chunk stays in place until
            # all are scored, and is overwritten by the next chunk.
            for llm in (base, *models.values()):
                llm.reset()
                llm.eval(chunk)
            for lo in range(first, n_ctx - 1, _ROWS_PER_BLOCK):
                hi = min(lo + _ROWS_PER_BLOCK, n_ctx - 1)
                block = _BaseBlock(np.asarray(base.scores[lo:hi], dtype=np.float64),
                                   targets[lo - first:hi - first])
                for name, llm in models.items():
                    stats[name].add(block, np.asarray(llm.scores[lo:hi], dtype=np.float64))
            if on_chunk:
                on_chunk(c + 1, n_chunks)
    return {name: s.result(n_chunks) for name, s in stats.items()}


class _BaseBlock:
    """The base model's side of a block of scored rows, computed once for every quant."""

    def __init__(self, logits, targets) -> None:
        import numpy as np

        self.targets = targets
        self.rows = np.arange(len(targets))
        self.logp = _log_softmax(logits)
        # Only entries with base log-prob above -16 count in the KLD, as in perplexity.cpp.
        self.weights = np.where(self.logp > _MIN_BASE_LOG_PROB, np.exp(self.logp), 0.0)
        self.nll = -self.logp[self.rows, targets]
        self.top = self.logp.argmax(axis=1)


class _Stats:
    """Running sums over scored tokens, as perplexity.cpp's ``kl_divergence_result``."""

    def __init__(self) -> None:
        self.count = 0
        self.same_top = 0
        self.sums = dict.fromkeys(("nll", "nll2", "nll_base", "nll_base2", "kld", "kld2",
                                   "dp", "dp2"), 0.0)
        self.kld_values: list = []

    def add(self, base: _BaseBlock, quant_logits) -> None:
        import numpy as np

        quant_logp = _log_softmax(quant_logits)
        nll = -quant_logp[base.rows, base.targets]
        kld = (base.weights * (base.logp - quant_logp)).sum(axis=1)
        dp = np.exp(-nll) - np.exp(-base.nll)
        s = self.sums
        for name, x in (("nll", nll), ("nll_base", base.nll), ("kld", kld), ("dp", dp)):
            s[name] += float(x.sum())
            s[name + "2"] += float((x * x).sum())
        self.same_top += int((quant_logits.argmax(axis=1) == base.top).sum())
        self.count += len(base.targets)
        self.kld_values.append(kld.astype(np.float32))

    def result(self, n_chunks: int) -> Fidelity:
        import numpy as np

        s, n = self.sums, self.count
        log_ppl, _ = _mean_and_se(s["nll"], s["nll2"], n)
        log_ppl_base, _ = _mean_and_se(s["nll_base"], s["nll_base2"], n)
        kld_mean, kld_se = _mean_and_se(s["kld"], s["kld2"], n)
        dp_mean, dp_se = _mean_and_se(s["dp"], s["dp2"], n)
        values = np.sort(np.concatenate(self.kld_values))
        return Fidelity(
            tokens=n,
            chunks=n_chunks,
            ppl=math.exp(log_ppl),
            ppl_base=math.exp(log_ppl_base),
            ppl_ratio=math.exp(log_ppl - log_ppl_base),
            kld_mean=kld_mean,
            kld_se=kld_se,
            kld_p99=_percentile(values, 0.99),
            kld_median=_median(values),
            top1=self.same_top / n,
            delta_p_mean=dp_mean,
            delta_p_se=dp_se,
        )


def _log_softmax(logits):
    import numpy as np

    shifted = logits - logits.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


def _mean_and_se(total: float, total2: float, count: int) -> tuple[float, float]:
    """perplexity.cpp's ``mean_and_uncertainty``: the mean and its standard error."""
    if count < 1:
        return 0.0, 0.0
    mean = total / count
    var = total2 / count - mean * mean
    se = math.sqrt(var / (count - 1)) if var > 0 and count > 10 else 0.0
    return mean, se


def _percentile(values, fraction: float) -> float:
    """perplexity.cpp's ``percentile`` over sorted values (its float32 position included)."""
    import numpy as np

    pos = np.float32(fraction) * np.float32(len(values) - 1)
    i = int(pos)
    frac = float(pos - np.float32(i))
    j = min(i + 1, len(values) - 1)
    return float((1 - frac) * float(values[i]) + frac * float(values[j]))


def _median(values) -> float:
    n = len(values)
    if n % 2 == 0:
        return 0.5 * (float(values[n // 2]) + float(values[n // 2 - 1]))
    return float(values[n // 2])


def _open(path: Path, n_ctx: int, n_threads: int):
    import llama_cpp

    # One decode per chunk (n_batch = n_ctx), logits for every position, and flash attention,
    # which llama-perplexity's default (-fa auto) turns on wherever the backend has it: with it
    # off the logits differ in the last bits and a near-tied top token can flip.
    return llama_cpp.Llama(str(path), n_ctx=n_ctx, n_batch=n_ctx, logits_all=True, flash_attn=True,
                           n_threads=n_threads, n_threads_batch=n_threads, verbose=False)


def _check_same_vocab(base, quant, base_gguf: Path, quant_gguf: Path,
                      tokens: list[int]) -> int | None:
    """The BOS to put at the start of each chunk (None when the model adds none)."""
    import llama_cpp

    def settings(llm) -> tuple[int, bool, bool, int]:
        vocab = llama_cpp.llama_model_get_vocab(llm.model)
        return (llm.n_vocab(), bool(llama_cpp.llama_vocab_get_add_bos(vocab)),
                bool(llama_cpp.llama_vocab_get_add_eos(vocab)), llama_cpp.llama_vocab_bos(vocab))

    n_vocab, add_bos, add_eos, bos = settings(base)
    if settings(quant) != (n_vocab, add_bos, add_eos, bos):
        raise ModelError(f"{quant_gguf.name} does not share {base_gguf.name}'s vocabulary",
                         hint="compare a quant with the F16 GGUF it was quantised from")
    if add_eos:
        raise ModelError(f"{base_gguf.name} appends EOS to every text, which llama-perplexity "
                         "refuses", hint="set tokenizer.ggml.add_eos_token to false in the GGUF")
    if min(tokens) < 0 or max(tokens) >= n_vocab:
        raise DataError(f"token ids outside {base_gguf.name}'s vocabulary of {n_vocab}",
                        hint="tokenise the text with eval_tokens() on the same GGUF")
    return bos if add_bos else None


def _require_file(path: Path) -> None:
    if not Path(path).is_file():
        raise ModelError(f"GGUF file {path} does not exist",
                         hint="convert and quantise the model first (edgetune convert / quantise)")
