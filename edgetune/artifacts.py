"""Typed artifacts passed between pipeline stages.

Each stage takes the previous artifact and returns the next. An artifact describes a directory
(or file) it owns and is saved as a small ``artifact.json`` beside its files, so a later run can
pick it up without redoing the work. Directories are written through ``atomic_dir``: a crash
never leaves a half-written artifact where a complete one is expected.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from edgetune.errors import OutputExistsError

ARTIFACT_FILE = "artifact.json"

A = TypeVar("A", bound="Artifact")


@dataclass(frozen=True)
class Artifact:
    """Base class: a directory produced by one stage."""

    kind: ClassVar[str] = "artifact"
    path: Path

    def save(self) -> None:
        data = {"kind": self.kind, **_to_json(dataclasses.asdict(self))}
        data.pop("path")
        write_json_atomic(self.path / ARTIFACT_FILE, data)

    @classmethod
    def load(cls: type[A], path: Path) -> A:
        data = json.loads((path / ARTIFACT_FILE).read_text())
        if data.pop("kind") != cls.kind:
            raise ValueError(f"{path} does not hold a {cls.kind} artifact")
        kwargs: dict[str, Any] = {"path": path}
        for f in dataclasses.fields(cls):
            if f.name in data:
                kwargs[f.name] = _from_json(data[f.name], f.type)
        return cls(**kwargs)


@dataclass(frozen=True)
class HfModel(Artifact):
    """A Hugging Face model directory (config, safetensors, tokenizer)."""

    kind: ClassVar[str] = "hf_model"
    architecture: str = ""
    name: str = ""
    source: str = ""  # hub id or path it came from, for provenance


@dataclass(frozen=True)
class Adapter(Artifact):
    """A LoRA adapter trained on top of ``base_model``."""

    kind: ClassVar[str] = "adapter"
    base_model: str = ""
    method: str = "grpo"
    backend: str = "trl"
    steps: int = 0
    log_file: str = "training_log.jsonl"
    effective_config: dict = field(default_factory=dict)


@dataclass(frozen=True)
class MergedModel(Artifact):
    """The LoRA merged into the 16-bit base weights."""

    kind: ClassVar[str] = "merged_model"
    architecture: str = ""
    base_model: str = ""
    max_weight_delta: float = 0.0


@dataclass(frozen=True)
class GgufModel(Artifact):
    """One F16 GGUF file converted from a merged model, with its parity checks."""

    kind: ClassVar[str] = "gguf_model"
    file: str = ""
    architecture: str = ""
    tokenizer_parity: dict = field(default_factory=dict)
    logit_parity: dict = field(default_factory=dict)

    @property
    def gguf(self) -> Path:
        return self.path / self.file


@dataclass(frozen=True)
class QuantizedModels(Artifact):
    """Quantised GGUFs built from one F16 GGUF, keyed by quant name."""

    kind: ClassVar[str] = "quantized_models"
    source_gguf: str = ""
    files: dict = field(default_factory=dict)  # quant name -> file name
    fallbacks: dict = field(default_factory=dict)  # quant name -> tensors that fell back
    # quant name -> {"matrices", "fell_back", "bits_per_weight"}: what llama.cpp really built
    mix: dict = field(default_factory=dict)
    imatrix: str = ""  # file name of the domain importance matrix ("" when none was used)
    without_imatrix: dict = field(default_factory=dict)  # quant -> the same quant without it
    # quant -> how a measured mix was made: its --tensor-type-file, the search, the rebuild command
    recipes: dict = field(default_factory=dict)

    def gguf(self, quant: str) -> Path:
        return self.path / self.files[quant]


@dataclass(frozen=True)
class EvalReport(Artifact):
    """Metrics of every quant against the F16 model."""

    kind: ClassVar[str] = "eval_report"
    file: str = "eval.json"


@dataclass(frozen=True)
class Bundle(Artifact):
    """A signed, phone-ready bundle folder (also a valid Hugging Face repo root)."""

    kind: ClassVar[str] = "bundle"
    bundle_id: str = ""
    version: str = ""
    key_id: str = ""


def _to_json(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, dict):
        return {k: _to_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_to_json(v) for v in value]
    return value


def _from_json(value: Any, annotation: Any) -> Any:
    return Path(value) if annotation in (Path, "Path") else value


@contextlib.contextmanager
def atomic_file(path: Path, *, mode: int = 0o644, sync: bool = True,
                overwrite: bool = True) -> Iterator[Path]:
    """Yield a scratch path beside ``path`` that replaces ``path`` only if the block succeeds:
    readers see the old file or the new one, never half. The scratch file
    (``.<name>.*.tmp``) is removed on any error, KeyboardInterrupt included. ``sync`` flushes
    it to disk before the rename (a crash then cannot leave an empty file under the new name).
    With ``overwrite=False`` an existing ``path`` is never replaced: FileExistsError instead."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, mode)
        if sync:
            with open(tmp, "rb") as fh:
                os.fsync(fh.fileno())
        if overwrite:
            os.replace(tmp, path)
        else:
            _publish_new(Path(tmp), path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _publish_new(tmp: Path, path: Path) -> None:
    """Give ``tmp`` the name ``path``, atomically and never over an existing file."""
    try:
        os.link(tmp, path)  # unlike rename, fails if the name exists (FileExistsError)
    except FileExistsError:
        raise
    except OSError:  # no hard links here (FAT, some network shares): check, then rename
        if os.path.lexists(path):
            raise FileExistsError(path) from None
        os.replace(tmp, path)
    else:
        os.unlink(tmp)


def write_bytes_atomic(path: Path, data: bytes, *, mode: int = 0o644) -> None:
    """Replace ``path`` with ``data``, flushed to disk (``atomic_file``)."""
    with atomic_file(path, mode=mode) as tmp:
        tmp.write_bytes(data)


def write_text_atomic(path: Path, text: str, *, mode: int = 0o644) -> None:
    """Replace ``path`` with UTF-8 ``text``, flushed to disk (``atomic_file``)."""
    write_bytes_atomic(path, text.encode("utf-8"), mode=mode)


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON (indented, sorted keys) so that readers see the old file or the new one."""
    write_text_atomic(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


@contextlib.contextmanager
def atomic_dir(final: Path, *, overwrite: bool = False) -> Iterator[Path]:
    """Yield a scratch directory that becomes ``final`` only if the block succeeds.

    The scratch directory sits beside ``final`` (same filesystem, so the rename is atomic) and
    is removed on any error, including KeyboardInterrupt.
    """
    final = Path(final)
    if final.exists() and not overwrite:
        raise OutputExistsError(
            f"{final} already exists",
            hint="choose another output directory or pass --overwrite",
        )
    final.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}.", suffix=".partial"))
    try:
        yield scratch
        if final.exists():
            old = final.with_name(f".{final.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(final, old)
            os.replace(scratch, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(scratch, final)
    except BaseException:
        shutil.rmtree(scratch, ignore_errors=True)
        raise
