"""Incremental, crash-safe builds: every stage's output is keyed by a hash of its inputs.

A stage's key is the sha256 of what it reads: the keys of the stages before it, its own
settings, digests of the data it uses and the versions of the tools that do the work. Keys
depend only on inputs, never on results, so a whole build can be planned (``edgetune status``)
without loading a model. After a stage completes, its key is stamped in
``<out>/.edgetune/stages/<stage>.json``; on the next build a stage whose stamp matches and
whose folder is present is reused, and everything after the first changed stage reruns.

Crash safety comes from two rules: stage folders appear only complete (``atomic_dir``), and the
stamp is removed before a stage runs and written only after its folder is in place. A build
killed at any point (SIGKILL included) therefore leaves either a stale stage (redone) or a
complete one with its stamp, never a partial artifact that looks finished. One build per
output folder at a time (``BuildLock``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgetune.artifacts import write_json_atomic
from edgetune.errors import ConfigError

STATE_DIR = ".edgetune"
STAGES = ("sft", "train", "merge", "convert", "quantise", "evaluate", "bundle")
TRAIN_TOOLS = ("torch", "transformers", "trl", "peft", "unsloth", "bitsandbytes")
LLAMA_TOOLS = ("llama_cpp_python", "gguf")


def tool_versions(names: Iterable[str]) -> dict[str, str | None]:
    """Installed versions (None: not installed), read from package metadata: no imports."""
    from importlib.metadata import PackageNotFoundError, version

    found: dict[str, str | None] = {}
    for name in names:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = None
    return found


def digest(value: Any) -> str:
    """sha256 of a JSON-able value (dataclasses included), stable across runs and machines."""
    def plain(v: Any) -> Any:
        if dataclasses.is_dataclass(v) and not isinstance(v, type):
            return plain(dataclasses.asdict(v))
        if isinstance(v, dict):
            return {str(k): plain(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        if isinstance(v, Path):
            return str(v)
        return v

    text = json.dumps(plain(value), sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def model_fingerprint(path: Path) -> dict:
    """What identifies a local model folder cheaply: small files by content, weights by size.

    Hashing gigabytes of weights on every build would cost more than most stages; a changed
    checkpoint changes its config, its size or (in the Hugging Face cache) its folder name.
    """
    files = {}
    for file in sorted(Path(path).iterdir()):
        if not file.is_file():
            continue
        size = file.stat().st_size
        files[file.name] = (hashlib.sha256(file.read_bytes()).hexdigest() if size < 1 << 20
                            else f"{size} bytes")
    return {"path": str(Path(path).resolve()), "files": files}


@dataclass(frozen=True)
class StagePlan:
    name: str
    folder: Path  # where the stage writes its output
    key: str
    inputs: dict  # what the key was computed from (kept in the stamp, to say why it is stale)


@dataclass(frozen=True)
class StageState:
    name: str
    folder: Path
    status: str  # "up to date", "stale" or "missing"
    why: str = ""


class Stamps:
    """The stage stamps of one build folder."""

    def __init__(self, out: Path):
        self.dir = Path(out) / STATE_DIR / "stages"

    def _file(self, name: str) -> Path:
        return self.dir / f"{name.replace('/', '@')}.json"

    @staticmethod
    def _id(plan: StagePlan) -> str:
        """Stages of one target in a multi-target build live in targets/<name>/: one stamp each."""
        return plan.name if plan.folder.parent.parent.name != "targets" \
            else f"{plan.name}/{plan.folder.parent.name}"

    def read(self, name: str) -> dict | None:
        try:
            return json.loads(self._file(name).read_text())
        except (OSError, ValueError):
            return None

    def fresh(self, plan: StagePlan) -> bool:
        stamp = self.read(self._id(plan))
        return bool(stamp) and stamp.get("key") == plan.key and plan.folder.is_dir()

    def clear(self, plan: StagePlan) -> None:
        self._file(self._id(plan)).unlink(missing_ok=True)

    def write(self, plan: StagePlan) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        write_json_atomic(self._file(self._id(plan)), {"stage": plan.name, "key": plan.key,
                                                  "folder": plan.folder.name,
                                                  "inputs": plan.inputs})

    def state(self, plan: StagePlan) -> StageState:
        stamp = self.read(self._id(plan))
        if not plan.folder.is_dir():
            return StageState(plan.name, plan.folder, "missing")
        if not stamp:
            return StageState(plan.name, plan.folder, "stale", "not built by this edgetune")
        if stamp.get("key") == plan.key:
            return StageState(plan.name, plan.folder, "up to date")
        old = stamp.get("inputs") or {}
        changed = sorted(k for k in {*old, *plan.inputs} if old.get(k) != plan.inputs.get(k))
        why = ("an earlier stage changed" if changed == ["upstream"] else
               "changed: " + ", ".join(c for c in changed if c != "upstream") if changed
               else "inputs changed")
        return StageState(plan.name, plan.folder, "stale", why)


def states(out: Path, plans: Sequence[StagePlan]) -> list[StageState]:
    """Each planned stage's state; a stage after a stale or missing one is stale too."""
    stamps, result, upstream = Stamps(out), [], ""
    for plan in plans:
        state = stamps.state(plan)
        if state.status == "up to date" and upstream:
            state = StageState(plan.name, plan.folder, "stale", f"{upstream} will be rebuilt")
        if state.status != "up to date" and not upstream:
            upstream = plan.name
        result.append(state)
    return result


def remove_leftovers(out: Path) -> list[str]:
    """Scratch folders of killed builds (``.<stage>.*.partial``, ``.<stage>.old``): never used."""
    removed = []
    folders = [Path(out), *sorted((Path(out) / "targets").glob("*"))]
    for folder in (f for f in folders if f.is_dir()):
        for entry in folder.iterdir():
            if entry.name.startswith(".") and (entry.name.endswith(".partial")
                                               or entry.name.endswith(".old")):
                shutil.rmtree(entry, ignore_errors=True)
                removed.append(entry.relative_to(out).as_posix())
    return removed


@contextmanager
def build_lock(out: Path) -> Iterator[None]:
    """Refuse a second build of the same output folder while one runs.

    An advisory ``flock`` on ``<out>/.edgetune/lock``: the kernel releases it when the process
    dies, however it dies, so a killed build never leaves a stale lock behind.
    """
    import fcntl

    state = Path(out) / STATE_DIR
    state.mkdir(parents=True, exist_ok=True)
    fd = os.open(state / "lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            raise ConfigError(f"another edgetune build is using {out} (pid {holder})",
                              hint="wait for it to finish, or build into another --out") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        yield
    finally:
        os.close(fd)
