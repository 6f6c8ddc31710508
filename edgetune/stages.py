"""Incremental, crash-safe builds: every stage's output is keyed by a hash of its inputs.

A stage's key is the sha256 of what it reads: the keys of the stages before it, its own
settings, digests of the data it uses and the versions of the tools that do the work. Keys
depend only on inputs, never on results, so a whole build can be planned (``plan_build``, which
``edgetune status`` shows) without loading a model. After a stage completes, its key is stamped in
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
from edgetune.data import load_qa, split_qa
from edgetune.errors import ConfigError
from edgetune.profiles import QuantProfile
from edgetune.project import Project

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


@dataclass(frozen=True)
class BuildInputs:
    """The rows a build reads, split as every stage sees them."""

    rows: tuple
    splits: Any
    sft_examples: tuple | None
    # The format warm start (training.warmstart): sft_examples are then the training rows in
    # the answer format; "auto" probes the base first and skips the SFT when it writes the format.
    warm_start: str | None = None  # None: SFT (if any) on the project's own sft_data
    sft_steps: int | None = None  # None: project.sft_steps
    sft_learning_rate: float | None = None  # None: the GRPO learning rate
    dropped: tuple[str, ...] = ()  # notes on rows that repeated earlier ones (data.load_qa)


def read_inputs(project: Project) -> BuildInputs:
    """Read and split the project's data (bad input fails here, before any stage runs)."""
    loaded = load_qa(project.data, project.columns)
    rows = loaded.rows
    splits = split_qa(rows, eval_fraction=project.eval_fraction)
    sft_examples = None
    if project.sft_data is not None:
        from edgetune.sft_data import load_sft

        sft_examples = tuple(load_sft(project.sft_data, format=project.sft_format,
                                      system_prompt=project.system_prompt).examples)
    return BuildInputs(rows=rows, splits=splits, sft_examples=sft_examples,
                       dropped=loaded.dropped)


def plan_build(project: Project, profile: QuantProfile, out: Path, *,
               inputs: BuildInputs | None = None, public_key: Path | None = None,
               accept_gate_failure: bool = False, per_target: bool = False) -> list:
    """Every stage with its output folder and input key; loads no model (``edgetune status``)."""
    import edgetune
    from edgetune.training.checkpoints import data_digest

    inputs = inputs or read_inputs(project)
    out = Path(out)
    if project.base_model is None:
        from edgetune.demo.model import RECIPE_VERSION

        base = {"demo_recipe": RECIPE_VERSION}  # built deterministically from the recipe
    elif Path(project.base_model).expanduser().is_dir():
        base = model_fingerprint(Path(project.base_model).expanduser())
    else:
        base = {"hub_id": project.base_model}
    train_tools = tool_versions(TRAIN_TOOLS)
    llama_tools = tool_versions(LLAMA_TOOLS)
    persona = {"system_prompt": project.system_prompt}
    plans: list = []

    def add(name: str, folder: str, **fields) -> str:
        upstream = plans[-1].key if plans else None
        entries = {"upstream": upstream, "edgetune": edgetune.__version__, **fields}
        plan = StagePlan(name, out / folder, digest({"stage": name, **entries}),
                                {k: digest(v) for k, v in entries.items()})
        plans.append(plan)
        return plan.key

    train_config = dataclasses.asdict(project.train)
    train_config.pop("checkpoint_every")  # how often to save does not change the adapter
    if inputs.sft_examples:
        sft_settings = [train_config, project.sft_steps]
        if inputs.warm_start:
            sft_settings = [train_config, inputs.sft_steps, inputs.sft_learning_rate,
                            inputs.warm_start]
        add("sft", "sft-adapter", base=base, data=data_digest(inputs.sft_examples),
            settings=sft_settings, tools=train_tools)
    add("train", "adapter", base=base, data=data_digest(inputs.splits.train),
        settings=train_config, tools=train_tools)
    add("merge", "merged", tools=train_tools)
    add("convert", "gguf", parity=[data_digest(inputs.splits.eval), persona], tools=llama_tools)
    target = f"targets/{profile.name}/" if per_target else ""
    from edgetune.mix import MIX

    mix = [list(profile.mix_types), profile.mix_budget] if MIX in profile.quants else []
    add("quantise", f"{target}quants", quants=[list(profile.quants), list(profile.imatrix_quants),
                                               *mix],
        calibration=[data_digest(inputs.splits.calibration), persona], tools=llama_tools)
    add("evaluate", f"{target}eval", target=dataclasses.asdict(profile),
        held_out=[data_digest(inputs.splits.eval), persona, project.train.answer_format],
        accept_gate_failure=accept_gate_failure, tools=llama_tools)
    key_id = (digest(Path(public_key).read_bytes())
              if public_key and Path(public_key).is_file() else None)
    add("bundle", f"{target}bundle", project={f.name: getattr(project, f.name) for f in
                                     dataclasses.fields(project)
                                     if f.name not in ("train", "data", "sft_data", "train_sources")},
        key=key_id, layout=2)  # 2: with report.html and reward.png; older bundles are stale
    return plans


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
