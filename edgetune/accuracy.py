"""Task accuracy: the held-out questions answered by a GGUF, scored like training scores them.

Each question goes through the chat template embedded in the GGUF (what phone apps use), with
the persona's system prompt, greedy decoding and a length cap. The answer is judged by the same
correctness reward GRPO trained on, so "accuracy" means the same thing in training and in eval.

Two things keep generation cheap. The cap follows the data: when the rows carry worked
solutions, no answer gets more than twice the 95th percentile of the reference answers' length
in the answer format (``answer_budget``), never more than ``max_tokens``. And the questions are
answered several at a time: llama-cpp-python's ``create_chat_completion`` decodes one sequence
per call (its high-level API batches sequences only for embeddings), so ``_greedy_answers``
drives llama.cpp's batch API itself, as llama.cpp's ``examples/batched`` does: one
``llama_decode`` per step for every open sequence, each in its own KV-cache sequence. One at a
time (``parallel=1``) it gives create_chat_completion's answers exactly; eight at a time a near
tie can tip the other way, as batch shapes change float sums (ggml-org/llama.cpp#6583): one
answer in 36 on the demo model.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from edgetune import intervals, llamacpp
from edgetune.conversations import formatted_answer, prompt_messages
from edgetune.data import QARow
from edgetune.errors import ModelError
from edgetune.training.rewards import ANSWER_FORMATS, AnswerFormat, correctness_reward, extract_answer

PARALLEL = 8  # sequences decoded together: past ~8 a 2-8 core CPU gains little more


@dataclass(frozen=True)
class Accuracy:
    correct: int
    total: int
    truncated: int  # answers cut off by the length cap
    mean_tokens: float
    wrong: tuple[str, ...] = field(default=())  # sources of the rows answered wrongly
    answers: tuple[str | None, ...] = field(default=())  # the extracted answer per row
    right: tuple[bool, ...] = field(default=())  # per row: answered correctly
    max_tokens: int | None = None  # the length cap the answers had

    @property
    def accuracy(self) -> float:
        return self.correct / self.total if self.total else 0.0

    def as_dict(self) -> dict:
        return {"task_accuracy": self.accuracy, "task_correct": self.correct,
                "task_total": self.total, "task_ci95": list(intervals.wilson(self.correct, self.total)),
                "task_truncated": self.truncated, "task_mean_tokens": self.mean_tokens,
                "task_max_tokens": self.max_tokens}


def paired_drop(reference: Accuracy, candidate: Accuracy) -> dict:
    """The accuracy drop from ``reference`` (F16) to ``candidate`` on the same questions, with
    McNemar's discordant counts and the paired 95% interval (``intervals.paired_difference``)."""
    if len(reference.right) != len(candidate.right):
        raise ValueError("the two accuracies were measured on different questions")
    pairs = list(zip(reference.right, candidate.right))
    lost, gained = pairs.count((True, False)), pairs.count((False, True))
    return {"task_accuracy_drop": reference.accuracy - candidate.accuracy, "task_lost": lost,
            "task_gained": gained,
            "task_drop_ci95": list(intervals.paired_difference(lost, gained, len(pairs)))}


def task_accuracy(gguf: Path, rows: Sequence[QARow], *, system_prompt: str = "",
                  answer_format: str = "reasoning", max_tokens: int = 256, n_ctx: int = 2048,
                  parallel: int = PARALLEL,
                  on_progress: Callable[[int, int], None] | None = None) -> Accuracy:
    """Greedy answers from ``gguf`` to ``rows``, scored by the training correctness reward."""
    fmt = ANSWER_FORMATS[answer_format]
    correctness = correctness_reward(fmt)
    trained = trained_context(gguf)
    llm = llamacpp.open_gguf(gguf, n_ctx=64)  # tokenizer and template; decoding has its own context
    try:
        cap = answer_budget(llm, rows, fmt, max_tokens)
        replies = _greedy_answers(llm, _prompts(llm, gguf, rows, system_prompt), cap=cap,
                                  n_ctx=min(n_ctx, trained) if trained else n_ctx,
                                  parallel=parallel, on_progress=on_progress)
    finally:
        llm.close()
    right = tuple(correctness(completions=[text], answer=[row.answer])[0] > 0
                  for row, (text, _, _) in zip(rows, replies))
    return Accuracy(correct=sum(right), total=len(rows),
                    truncated=sum(cut for _, _, cut in replies),
                    mean_tokens=sum(n for _, n, _ in replies) / len(rows) if rows else 0.0,
                    wrong=tuple(row.source for row, ok in zip(rows, right) if not ok),
                    answers=tuple(extract_answer(text, fmt) for text, _, _ in replies),
                    right=right, max_tokens=cap)


def answer_budget(llm, rows: Sequence[QARow], fmt: AnswerFormat, max_tokens: int) -> int:
    """The length cap: twice the 95th percentile of the reference answers in tokens, as the
    strict format reward wants them, plus 16 for the tags; at most ``max_tokens``.

    Only when most rows carry their worked solution: a bare final answer says nothing of how
    long the reasoning before it runs, so those rows keep ``max_tokens``.
    """
    if not rows or sum(bool(r.reasoning) for r in rows) * 2 < len(rows):
        return max_tokens
    lengths = sorted(len(llm.tokenize(formatted_answer(r, fmt).encode("utf-8"), add_bos=False))
                     for r in rows)
    p95 = lengths[math.ceil(0.95 * len(lengths)) - 1]
    return min(max_tokens, 2 * p95 + 16)


def _prompts(llm, gguf: Path, rows: Sequence[QARow], system_prompt: str) -> list[list[int]]:
    """Each row's prompt tokens: the GGUF's chat template rendered the way llama-cpp-python's
    default chat handler renders it (Jinja2ChatFormatter, tokenized with special tokens and no
    added BOS: the template writes its own)."""
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    template = llm.metadata.get("tokenizer.chat_template")
    if not template:
        raise ModelError(f"{gguf.name} has no chat template in its metadata",
                         "Use a GGUF converted from a chat (instruct) model.")

    def text(token: int) -> str:
        return llm.detokenize([token], special=True).decode("utf-8", "replace") if token != -1 else ""

    render = Jinja2ChatFormatter(template=template, eos_token=text(llm.token_eos()),
                                 bos_token=text(llm.token_bos()))
    return [llm.tokenize(render(messages=prompt_messages(system_prompt, row)).prompt.encode("utf-8"),
                         add_bos=False, special=True) for row in rows]


def _greedy_answers(llm, prompts: Sequence[list[int]], *, cap: int, n_ctx: int, parallel: int,
                    on_progress: Callable[[int, int], None] | None) -> list[tuple[str, int, bool]]:
    """(text, completion tokens, cut off by the cap) per prompt: greedy, ``parallel`` at a time.

    A sequence ends at an end-of-generation token (the template's end of turn) or after ``cap``
    tokens, or where its context (``n_ctx`` per sequence) is full; its KV cells are freed and the
    next prompt takes its place in the following step, so the batch stays full.
    """
    import llama_cpp
    import numpy as np

    if not prompts:
        return []
    longest = max(len(p) for p in prompts)
    if longest >= n_ctx:
        raise ModelError(f"a task question needs {longest} tokens with the system prompt; the "
                         f"model's context holds {n_ctx}", "Use shorter held-out questions.")
    per_seq = min(n_ctx, longest + cap + 1)
    parallel = max(1, min(parallel, len(prompts)))
    # The Llama's own settings (threads, attention, KV types), with room for the sequences: a
    # KV buffer of its own per sequence, which llama.cpp advises when they share no long prefix.
    params = llama_cpp.llama_context_params.from_buffer_copy(llm.context_params)
    params.n_ctx = per_seq * parallel
    params.n_batch = params.n_ctx  # a step may hold several whole prompts
    params.n_ubatch = min(512, params.n_ctx)
    params.n_seq_max = parallel
    params.kv_unified = False
    params.n_threads = params.n_threads_batch = _threads()
    ctx = llama_cpp.llama_init_from_model(llm.model, params)
    if not ctx:
        raise ModelError("llama.cpp could not create a context for the task questions",
                         "Check that the GGUF loads with llama.cpp and that memory is free.")
    batch = llama_cpp.llama_batch_init(params.n_batch, 0, parallel)
    vocab = llama_cpp.llama_model_get_vocab(llm.model)
    n_vocab = llama_cpp.llama_vocab_n_tokens(vocab)
    memory = llama_cpp.llama_get_memory(ctx)
    results: list[tuple[str, int, bool] | None] = [None] * len(prompts)
    waiting = iter(range(len(prompts)))
    # seq id -> [prompt index, tokens to feed, position of the first of them, generated tokens]
    open_seqs: dict[int, list] = {}
    done = 0
    try:
        while True:
            for seq in range(parallel):
                if seq not in open_seqs and (i := next(waiting, None)) is not None:
                    open_seqs[seq] = [i, list(prompts[i]), 0, []]
            if not open_seqs:
                break
            batch.n_tokens = 0
            last: dict[int, int] = {}  # seq id -> batch index of its last token (logits)
            for seq, (_, feed, pos, _) in open_seqs.items():
                for j, token in enumerate(feed):
                    k = batch.n_tokens
                    batch.token[k], batch.pos[k] = token, pos + j
                    batch.n_seq_id[k], batch.seq_id[k][0] = 1, seq
                    batch.logits[k] = j == len(feed) - 1
                    batch.n_tokens += 1
                last[seq] = batch.n_tokens - 1
            if (rc := llama_cpp.llama_decode(ctx, batch)) != 0:
                raise ModelError(f"llama.cpp failed to decode the task questions ({rc})",
                                 "Check that the GGUF loads with llama.cpp.")
            for seq, k in last.items():
                state = open_seqs[seq]
                i, feed, pos, out = state
                logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(ctx, k),
                                               shape=(n_vocab,))
                token = int(np.argmax(logits))
                state[2] = pos + len(feed)
                ended = llama_cpp.llama_vocab_is_eog(vocab, token)
                if not ended:
                    out.append(token)
                    state[1] = [token]
                full = len(out) >= cap or len(prompts[i]) + len(out) >= per_seq
                if ended or full:
                    text = llm.detokenize(out, prev_tokens=prompts[i]).decode("utf-8", "ignore")
                    results[i] = (text, len(out), not ended)
                    llama_cpp.llama_memory_seq_rm(memory, seq, -1, -1)
                    del open_seqs[seq]
                    done += 1
                    if on_progress:
                        on_progress(done, len(prompts))
    finally:
        llama_cpp.llama_batch_free(batch)
        llama_cpp.llama_free(ctx)
    return results  # type: ignore[return-value]


def _threads() -> int:
    """``llamacpp.threads()``, but no more than the cores other jobs leave idle.

    llama.cpp's threads meet at a barrier after every operation of the graph: one thread the OS
    has put aside stalls the rest for a whole time slice. On a busy 2-core machine that made
    each step of a 3 MB model take 0.5 s with 2 threads and 1 ms with one (measured).
    """
    try:
        idle = (os.cpu_count() or 1) - os.getloadavg()[0]
    except OSError:  # no load average on this platform
        return llamacpp.threads()
    return max(1, min(llamacpp.threads(), math.floor(idle)))


def trained_context(gguf: Path) -> int | None:
    """``<arch>.context_length`` from the GGUF header: never answer past what the model saw."""
    import gguf as gguf_py

    from edgetune.llamacpp import gguf_field

    reader = gguf_py.GGUFReader(str(gguf))
    arch = gguf_field(reader, "general.architecture")
    value = gguf_field(reader, f"{arch}.context_length")
    return int(value) if value else None
