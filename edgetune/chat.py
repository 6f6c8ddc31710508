"""Talk to a bundle's model in-process with llama.cpp, with the persona the bundle ships.

``load_bundle_runtime`` reads what an app would read from ``edgetune.json`` (system prompt,
greeting, sampling, stop strings, default context) and picks a GGUF; ``ChatSession`` keeps a
conversation within the context; ``compare`` answers the same prompts greedily with two models.

Prompts are rendered with the chat template embedded in the GGUF, exactly as llama-cpp-python's
``create_chat_completion`` renders them (the path ``edgetune.accuracy`` scores), but here we
tokenize them ourselves: that lets us count tokens to keep history within the context and show
the exact prompt text (``ChatSession.prompt_text``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgetune import llamacpp, strict_json
from edgetune.errors import ConfigError, DataError, ModelError

DEFAULT_QUANT = "Q4_K_M"
GREEDY = {"temperature": 0.0, "top_k": 1}
# The sampling settings llama.cpp's completion call takes, with their types (manifest
# `runtime.sampling` is free-form: other keys are ignored, as SPEC.md asks of readers).
SAMPLING_KEYS: dict[str, type] = {"temperature": float, "top_p": float, "top_k": int,
                                  "min_p": float, "repeat_penalty": float, "typical_p": float,
                                  "presence_penalty": float, "frequency_penalty": float}


@dataclass(frozen=True)
class BundleRuntime:
    """What a chat app needs from a bundle: the persona, its runtime settings, one GGUF."""

    bundle: Path
    name: str
    version: str
    quant: str
    model_path: Path
    quants: tuple[str, ...]  # every quant the bundle holds
    system_prompt: str
    greeting: str
    sampling: dict
    stop_strings: tuple[str, ...]
    default_context: int
    chat_template_sha256: str  # of the template the model was trained with


def load_bundle_runtime(bundle: Path, quant: str | None = None) -> BundleRuntime:
    """Read ``bundle``'s manifest and choose ``quant`` (default Q4_K_M, else the smallest file).

    This does not check the signature: call ``edgetune.bundle.verify_bundle`` first for that.
    """
    from edgetune.bundle import MANIFEST_FILE, path_escapes, manifest_schema_error

    bundle = Path(bundle)
    if not bundle.is_dir():
        if bundle.is_file():
            raise ModelError(f"{bundle} is a file, not a bundle folder",
                             "Pass the bundle's folder (the one holding edgetune.json).")
        raise ModelError(f"bundle folder not found: {bundle}", "Pass the bundle's folder.")
    path = bundle / MANIFEST_FILE
    try:
        manifest = strict_json.loads(strict_json.read_bytes(path, strict_json.MANIFEST),
                                     strict_json.MANIFEST)
    except (OSError, ValueError) as e:
        why = "missing" if isinstance(e, FileNotFoundError) else f"unreadable ({e})"
        raise ModelError(f"{path}: manifest {why}",
                         "Pass a bundle folder written by `edgetune build`.") from None
    if err := manifest_schema_error(manifest):
        raise ModelError(f"{path}: {err}", "Re-download the bundle or ask the creator for a "
                                           "corrected release.")
    artifacts = manifest["artifacts"]
    by_quant = {a["quant"]: a for a in artifacts}
    if quant is None:
        chosen = by_quant.get(DEFAULT_QUANT) or min(artifacts, key=lambda a: a["size"])
    else:
        chosen = by_quant.get(quant) or next(
            (a for q, a in by_quant.items() if q.lower() == quant.lower()), None)
        if chosen is None:
            raise ConfigError(f"quant {quant} is not in {bundle}; it has "
                              f"{', '.join(by_quant)}", "Pick one of those with --quant.")
    root = bundle.resolve()
    if path_escapes(root, chosen["path"]) or not (root / chosen["path"]).is_file():
        raise ModelError(f"{chosen['path']}: listed in {path} but not in the bundle",
                         "Re-download the bundle; `edgetune verify` tells what is wrong.")
    runtime, persona = manifest["runtime"], manifest["persona"]
    return BundleRuntime(
        bundle=bundle, name=manifest["name"], version=manifest["version"], quant=chosen["quant"],
        model_path=root / chosen["path"], quants=tuple(by_quant),
        system_prompt=persona["system_prompt"], greeting=persona["greeting"],
        sampling=dict(runtime["sampling"]), stop_strings=tuple(runtime["stop_strings"]),
        default_context=runtime["default_context"],
        chat_template_sha256=runtime["chat_template_sha256"])


def sampling_options(sampling: Mapping[str, Any]) -> dict:
    """The manifest's sampling as llama.cpp completion arguments (unknown keys dropped)."""
    out = {}
    for key, kind in SAMPLING_KEYS.items():
        value = sampling.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            out[key] = kind(value)
    return out


@dataclass
class ReplyInfo:
    """How the last reply went: why it ended, and how many old turns were dropped to fit."""

    finish_reason: str | None = None  # "stop" or "length" (cut off at max_tokens)
    dropped_turns: int = 0
    prompt_tokens: int = 0


class ChatSession:
    """A conversation with one GGUF through its own chat template.

    ``reply(text)`` streams the answer; the exchange joins the history only once the reply is
    complete, so an interrupted reply leaves the history as it was. When the prompt plus
    ``max_tokens`` would not fit in the context, the oldest exchanges are dropped first.
    """

    def __init__(self, model_path: Path, system_prompt: str = "", *,
                 sampling: Mapping[str, Any] | None = None, stop: Sequence[str] = (),
                 n_ctx: int = 2048, max_tokens: int = 512, seed: int | None = None):
        from edgetune.accuracy import trained_context

        self.model_path = Path(model_path)
        _check_gguf(self.model_path)
        self.system_prompt = system_prompt
        self.sampling = sampling_options(sampling or {})
        self.stop = [s for s in stop if s]
        self.max_tokens = max_tokens
        self.seed = seed
        trained = trained_context(self.model_path)
        self.n_ctx = min(n_ctx, trained) if trained else n_ctx
        self.history: list[dict] = []
        self.last = ReplyInfo()
        self._llm = llamacpp.open_gguf(self.model_path, n_ctx=self.n_ctx)
        self._format = chat_formatter(self._llm, self.model_path)
        self.chat_template = self._llm.metadata["tokenizer.chat_template"]

    @property
    def chat_template_sha256(self) -> str:
        import hashlib

        return hashlib.sha256(self.chat_template.encode("utf-8")).hexdigest()

    def messages(self, user_text: str | None = None,
                 history: Sequence[dict] | None = None) -> list[dict]:
        system = [{"role": "system", "content": self.system_prompt}] if self.system_prompt else []
        user = [{"role": "user", "content": user_text}] if user_text is not None else []
        return system + list(self.history if history is None else history) + user

    def prompt_text(self, user_text: str | None = None,
                    history: Sequence[dict] | None = None) -> str:
        """The exact text the model sees for ``user_text`` after the history (default: the
        current one), chat template applied."""
        try:
            return self._format(messages=self.messages(user_text, history)).prompt
        except Exception as e:  # jinja2 errors, and raise_exception() in the template
            raise ModelError(f"{self.model_path.name}: its chat template cannot render this "
                             f"conversation ({e})", "Some templates refuse a system prompt: "
                             "try an empty one (--system '').") from None

    def reset(self) -> None:
        self.history.clear()
        self._llm.reset()

    def reply(self, text: str, on_prompt: Callable[[str], None] | None = None) -> Iterator[str]:
        """Stream the model's answer to ``text`` piece by piece. ``on_prompt`` receives the
        exact prompt text sent (after dropping old turns), before generation starts."""
        prompt, tokens, dropped = self._fit(text)
        if on_prompt:
            on_prompt(prompt)
        self.last = ReplyInfo(dropped_turns=dropped, prompt_tokens=len(tokens))
        options = {**self.sampling, "seed": self.seed} if self.seed is not None else self.sampling
        pieces: list[str] = []
        for chunk in self._llm.create_completion(tokens, max_tokens=self.max_tokens,
                                                 stop=self.stop or None, stream=True, **options):
            choice = chunk["choices"][0]
            if choice["text"]:
                pieces.append(choice["text"])
                yield choice["text"]
            if choice.get("finish_reason"):
                self.last.finish_reason = choice["finish_reason"]
        self.history[:] = self.history[2 * dropped:] + [
            {"role": "user", "content": text}, {"role": "assistant", "content": "".join(pieces)}]

    def _fit(self, text: str) -> tuple[str, list[int], int]:
        """The prompt for ``text``, its tokens, and how many of the oldest exchanges must go
        so that it fits in the context with ``max_tokens`` (at most half of it) to spare; a
        longer reply is cut at the end of the context."""
        reserve = min(self.max_tokens, self.n_ctx // 2)  # a huge max_tokens keeps some history
        keep, dropped = list(self.history), 0
        while True:
            prompt = self.prompt_text(text, keep)
            tokens = self._llm.tokenize(prompt.encode("utf-8"), add_bos=False, special=True)
            if len(tokens) + reserve <= self.n_ctx or len(keep) < 2:
                break
            keep, dropped = keep[2:], dropped + 1
        if len(tokens) >= self.n_ctx:
            raise ConfigError(f"the message needs {len(tokens)} tokens with the system prompt; "
                              f"the context holds {self.n_ctx}", "Send a shorter message.")
        return prompt, tokens, dropped

    def close(self) -> None:
        self._llm.close()

    def __enter__(self) -> ChatSession:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def answers(model_path: Path, prompts: Sequence[str], system_prompt: str = "", *,
            max_tokens: int = 256, stop: Sequence[str] = (), n_ctx: int = 2048,
            on_answer: Callable[[int, int], None] | None = None) -> list[str]:
    """Greedy answers (temperature 0, fresh context each) to ``prompts``, loading the model once."""
    out: list[str] = []
    with ChatSession(model_path, system_prompt, sampling=GREEDY, stop=stop, n_ctx=n_ctx,
                     max_tokens=max_tokens, seed=0) as session:
        for prompt in prompts:
            session.reset()
            out.append("".join(session.reply(prompt)))
            if on_answer:
                on_answer(len(out), len(prompts))
    return out


def answer(model_path: Path, prompt: str, system_prompt: str = "", max_tokens: int = 256) -> str:
    """One greedy answer from ``model_path``'s GGUF, through its own chat template."""
    return answers(model_path, [prompt], system_prompt, max_tokens=max_tokens)[0]


# --------------------------------------------------------------------------- compare

@dataclass(frozen=True)
class ModelSource:
    """A model to answer with: a GGUF file, or one quant of a bundle (with its persona)."""

    model_path: Path
    label: str  # for tables: the file name, or "<bundle name> <quant>"
    runtime: BundleRuntime | None = None  # set when it came from a bundle

    @property
    def stop_strings(self) -> tuple[str, ...]:
        return self.runtime.stop_strings if self.runtime else ()


def model_source(path: Path, quant: str | None = None) -> ModelSource:
    """A bundle folder (``quant`` picks the file) or a GGUF file."""
    path = Path(path)
    if path.is_dir():
        rt = load_bundle_runtime(path, quant)
        return ModelSource(rt.model_path, f"{rt.name} {rt.quant}", rt)
    _check_gguf(path)
    return ModelSource(path, path.name)


@dataclass(frozen=True)
class ComparedAnswer:
    prompt: str
    base: str
    tuned: str


@dataclass(frozen=True)
class Comparison:
    base: ModelSource
    tuned: ModelSource
    system_prompt: str
    rows: tuple[ComparedAnswer, ...] = field(default=())

    def as_list(self) -> list[dict]:
        return [{"prompt": r.prompt, "base": r.base, "tuned": r.tuned} for r in self.rows]


def compare(base: Path | ModelSource, tuned: Path | ModelSource, prompts: Sequence[str], *,
            quant: str | None = None, system_prompt: str | None = None, max_tokens: int = 256,
            on_progress: Callable[[str, int, int], None] | None = None) -> Comparison:
    """Greedy answers from ``base`` and ``tuned`` (GGUF files or bundle folders, ``quant``
    choosing in bundles) to the same prompts, one model in memory at a time. Both get the same
    system prompt: ``system_prompt``, else the tuned bundle's persona prompt, else none."""
    base_src, tuned_src = (m if isinstance(m, ModelSource) else model_source(m, quant)
                           for m in (base, tuned))
    if system_prompt is None:
        system_prompt = tuned_src.runtime.system_prompt if tuned_src.runtime else ""
    replies = {}
    for role, src in (("base", base_src), ("tuned", tuned_src)):
        progress = (lambda done, total, role=role: on_progress(role, done, total)) \
            if on_progress else None
        n_ctx = src.runtime.default_context if src.runtime else 2048
        replies[role] = answers(src.model_path, prompts, system_prompt, max_tokens=max_tokens,
                                stop=src.stop_strings, n_ctx=n_ctx, on_answer=progress)
    rows = tuple(ComparedAnswer(p, b, t) for p, b, t in zip(prompts, replies["base"],
                                                            replies["tuned"]))
    return Comparison(base_src, tuned_src, system_prompt, rows)


def read_prompts(path: Path) -> list[str]:
    """One prompt per line; blank lines and lines starting with ``#`` are skipped."""
    hint = "Write one prompt per line; blank lines and lines starting with # are ignored."
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise DataError(f"prompts file not found: {path}", hint) from None
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"cannot read prompts file {path} ({e})", hint) from None
    prompts = [s for line in text.splitlines() if (s := line.strip()) and not s.startswith("#")]
    if not prompts:
        raise DataError(f"no prompts in {path}", hint)
    return prompts


# --------------------------------------------------------------------------- helpers

def _check_gguf(path: Path) -> None:
    from edgetune.llamacpp import NOT_GGUF, gguf_problem

    why = gguf_problem(path)
    if why == NOT_GGUF:
        raise ModelError(f"{path} is not a GGUF file", "Pass a .gguf file or a bundle folder.")
    if why:
        raise ModelError(f"model file {why.removeprefix('file ')}: {path}",
                         "Pass a .gguf file or a bundle folder.")


def chat_formatter(llm, path: Path):
    """The GGUF's chat template as llama-cpp-python's default chat handler builds it (what
    phone-side apps render; the conversion check compares it with HF's)."""
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    template = llm.metadata.get("tokenizer.chat_template")
    if not template:
        llm.close()
        raise ModelError(f"{path} has no chat template in its metadata",
                         "Use a GGUF converted from a chat (instruct) model.")

    def text(token: int) -> str:
        return llm.detokenize([token], special=True).decode("utf-8", "replace") \
            if token != -1 else ""

    return Jinja2ChatFormatter(template=template, eos_token=text(llm.token_eos()),
                               bos_token=text(llm.token_bos()))
