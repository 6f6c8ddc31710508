"""Where llama.cpp's pieces live: the runtime (llama-cpp-python), its tools and its converter.

One pinned source for all of them: llama-cpp-python 0.3.36's sdist vendors llama.cpp. Setup
(``make setup``) builds the runtime with its tools from that sdist and copies the vendored
``convert_hf_to_gguf.py`` (and its ``conversion`` package) into ``<venv>/share/edgetune/llama.cpp``
with a VERSION file; its gguf-py is installed as the ``gguf`` package. Nothing is fetched at run
time, and the converter always matches the runtime that loads its output.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

from edgetune.errors import ToolchainError
from edgetune.safe_text import printable

LLAMA_CPP_PYTHON_VERSION = "0.3.36"
_SETUP_HINT = "run `make setup` (it builds llama-cpp-python with its tools and installs the converter)"


NOT_GGUF = "not a GGUF file"
# The quants edgetune builds: quant name -> llama_cpp ftype constant name.
QUANT_TYPES = {
    "Q4_0": "LLAMA_FTYPE_MOSTLY_Q4_0",
    "Q4_K_M": "LLAMA_FTYPE_MOSTLY_Q4_K_M",
    "Q5_K_M": "LLAMA_FTYPE_MOSTLY_Q5_K_M",
    "Q6_K": "LLAMA_FTYPE_MOSTLY_Q6_K",
    "Q8_0": "LLAMA_FTYPE_MOSTLY_Q8_0",
    # Q4_K_M's ftype with a type chosen per tensor by measurement (edgetune.mix): built only
    # through quantise's mix path, never from this ftype alone.
    "Q4_K_X": "LLAMA_FTYPE_MOSTLY_Q4_K_M",
}


def gguf_problem(path: Path) -> str | None:
    """Why ``path`` cannot be a GGUF (from its first 4 bytes), or None when it starts like one:
    "file not found", "is a folder, not a GGUF file", "unreadable (<reason>)" or NOT_GGUF."""
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            magic = fh.read(4)
    except OSError as exc:
        if isinstance(exc, FileNotFoundError):
            return "file not found"
        return "is a folder, not a GGUF file" if path.is_dir() else f"unreadable ({exc.strerror})"
    return None if magic == b"GGUF" else NOT_GGUF


def converter_dir() -> Path:
    """The directory holding ``convert_hf_to_gguf.py``, checked against the runtime version."""
    root = Path(os.environ.get("EDGETUNE_LLAMA_CPP_DIR")
                or Path(sys.prefix) / "share" / "edgetune" / "llama.cpp")
    script = root / "convert_hf_to_gguf.py"
    if not script.is_file():
        raise ToolchainError(f"llama.cpp's converter is not installed (looked in {root})", hint=_SETUP_HINT)
    version_file = root / "VERSION"
    found = version_file.read_text().strip() if version_file.is_file() else "unknown"
    runtime = runtime_version()
    if found != runtime:
        raise ToolchainError(
            f"converter from llama-cpp-python {found} does not match the runtime {runtime}",
            hint=_SETUP_HINT,
        )
    return root


def runtime_version() -> str:
    try:
        from importlib.metadata import version

        return version("llama-cpp-python")
    except Exception as exc:
        raise ToolchainError("llama-cpp-python is not installed", hint=_SETUP_HINT) from exc


def _package_dir() -> Path:
    import importlib.util

    spec = importlib.util.find_spec("llama_cpp")
    if spec is None or not spec.origin:
        raise ToolchainError("llama-cpp-python is not installed", hint=_SETUP_HINT)
    return Path(spec.origin).parent


def tool(name: str) -> tuple[Path, dict[str, str]]:
    """Path to a llama.cpp tool binary (e.g. ``llama-perplexity``) and the env to run it with.

    The tools land in ``site-packages/bin`` without an RPATH, so they need
    ``LD_LIBRARY_PATH=<site-packages>/lib`` (FACTS.md).
    """
    site = _package_dir().parent
    binary = site / "bin" / name
    if not binary.is_file():
        raise ToolchainError(f"llama.cpp tool {name} is not installed (looked in {binary.parent})",
                             hint=_SETUP_HINT)
    env = dict(os.environ)
    libdirs = [str(site / "lib"), str(_package_dir() / "lib")]
    env["LD_LIBRARY_PATH"] = os.pathsep.join(libdirs + [env.get("LD_LIBRARY_PATH", "")])
    return binary, env


# Where llama.cpp's log lines go inside ``log_lines`` blocks: (write, C callback), innermost last.
_sinks: list = []


@contextlib.contextmanager
def log_lines(path: Path | None) -> Iterator[None]:
    """Send llama.cpp's own log lines to ``path`` (appended), or to stderr when None.

    In-process, llama.cpp logs through one callback (``llama_log_set`` covers ggml too), which
    llama-cpp-python points at Python's stderr: model loading and quantisation's "falling
    back" notes would land between the progress lines. The tools ``run_tool`` runs have their
    output captured; it comes here too. Nothing is redirected at the file-descriptor level, so
    Python's own errors and the progress display still reach the terminal.
    """
    import ctypes

    import llama_cpp
    from llama_cpp import _logger

    log = open(path, "a", encoding="utf-8") if path is not None else None

    def write(text: str) -> None:
        out = log or sys.stderr
        out.write(printable(text))  # GGUF metadata and paths in these lines are not ours
        out.flush()

    @llama_cpp.llama_log_callback
    def callback(level, text, user_data):
        with contextlib.suppress(Exception):  # an exception must not unwind into C
            write(text.decode("utf-8", "replace"))

    _sinks.append((write, callback))
    llama_cpp.llama_log_set(callback, ctypes.c_void_p(0))
    try:
        yield
    finally:
        _sinks.pop()
        llama_cpp.llama_log_set(_sinks[-1][1] if _sinks else _logger.llama_log_callback,
                                ctypes.c_void_p(0))
        if log is not None:
            log.close()


def run_tool(args: Sequence, env: dict[str, str] | None = None,
             cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run a llama.cpp tool (or its converter) with its output captured as text; inside
    ``log_lines`` the output also goes where llama.cpp's log lines go."""
    run = subprocess.run([str(a) for a in args], env=env, capture_output=True, text=True, cwd=cwd)
    if _sinks:
        _sinks[-1][0](f"$ {' '.join(str(a) for a in args)}\n{run.stdout}{run.stderr}")
    return run


def threads() -> int:
    """A fixed thread count for every llama.cpp call, so speed figures are comparable."""
    return max(1, min(os.cpu_count() or 1, 8))


def open_gguf(path: Path, *, n_ctx: int = 512, logits_all: bool = False, vocab_only: bool = False):
    """Load a GGUF in-process with llama.cpp (quietly)."""
    import llama_cpp

    return llama_cpp.Llama(str(path), n_ctx=n_ctx, logits_all=logits_all, vocab_only=vocab_only,
                           n_threads=threads(), verbose=False)


def gguf_field(reader, key: str):
    """One metadata value from a ``gguf.GGUFReader`` (str for strings, else the scalar), or None."""
    field = reader.fields.get(key)
    if field is None:
        return None
    value = field.parts[field.data[0]]
    if field.types and field.types[0].name == "STRING":
        return bytes(value).decode()
    return value[0]
