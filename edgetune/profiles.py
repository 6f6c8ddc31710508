"""Targets are data: ``quant_profiles/<name>.yaml`` says what to build and test for a device.

A profile names the quants to build, the context the bundle advertises, the RAM budget and the
gates every quant must pass before it ships (``edgetune.gates``). Every gate setting is optional;
the defaults below are what a profile gets when it says nothing.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any

from edgetune import resources
from edgetune.errors import ConfigError
from edgetune.llamacpp import QUANT_TYPES

PROFILES_DIR = resources.profiles_dir()
MIB = 1 << 20


@dataclass(frozen=True)
class QuantThresholds:
    """Quality limits for one quant against the F16 model, on held-out domain text.

    ``None`` turns a check off. ``max_accuracy_drop`` is an absolute drop in task accuracy
    (a fraction: 0.05 = five points), F16 accuracy minus this quant's accuracy.
    """

    max_kld_mean: float | None = None  # mean KL divergence F16 -> quant, nats per token
    min_top1: float | None = None  # fraction of tokens whose most likely next token is unchanged
    max_ppl_ratio: float | None = None  # quant perplexity / F16 perplexity
    max_accuracy_drop: float | None = None

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


# Default limits per quant. Anchor: llama.cpp's published figures for LLaMA-3-8B on wikitext-2,
# n_ctx 512, vs F16 (tools/perplexity/README.md; ANCHORS.md 2):
#
#   quant    mean KLD  same top token  PPL ratio  ->  our limits: KLD    top-1  PPL ratio
#   Q8_0     0.0014    97.7%           1.0004             0.01   0.95   1.01
#   Q6_K     0.0055    96.0%           1.0035             0.02   0.93   1.02
#   Q5_K_M   0.0108    (~94%)          ~1.009             0.05   0.90   1.05
#   Q4_K_M   0.0313    91.9%           1.028              0.10   0.85   1.10
#   Q4_0     0.0719    (~88%)          ~1.075             0.15   0.80   1.15
#
# Our models are 0.5-3B: small models quantise worse than an 8B one, and the 896/1152/576-wide
# ones fall back from K-quants to older types, so the limits leave about 3x the 8B KLD as
# headroom. Q8_0 gets more (a KLD near 0.01 already means a broken conversion, not quantisation
# noise) and its PPL limit cannot be tighter than ~1%, the noise of perplexity on a few thousand
# held-out tokens. Q4_0 gets less: it is the speed option for slow phones (~1.1-1.6x faster than
# Q4_K_M on ARM at ~2.3x its KLD) and should stay within 1.5x the Q4_K_M limit; past that, ship
# Q4_K_M, which fits the same budget. Top-1 figures in brackets are interpolated (not published).
# Task accuracy: at most 5 points below F16 for every quant. Held-out sets are small (100-200
# questions: one flipped answer moves accuracy by 0.5-1 point), so a tighter limit would fail
# quants on sampling noise; a real regression shows up in KLD and top-1 first.
DEFAULT_THRESHOLDS: dict[str, QuantThresholds] = {
    "Q8_0": QuantThresholds(max_kld_mean=0.01, min_top1=0.95, max_ppl_ratio=1.01, max_accuracy_drop=0.05),
    "Q6_K": QuantThresholds(max_kld_mean=0.02, min_top1=0.93, max_ppl_ratio=1.02, max_accuracy_drop=0.05),
    "Q5_K_M": QuantThresholds(max_kld_mean=0.05, min_top1=0.90, max_ppl_ratio=1.05, max_accuracy_drop=0.05),
    "Q4_K_M": QuantThresholds(max_kld_mean=0.10, min_top1=0.85, max_ppl_ratio=1.10, max_accuracy_drop=0.05),
    # The measured mix at Q4_K_M's size (edgetune.mix): held to Q4_K_M's limits, and it ships only
    # where it beats Q4_K_M.
    "Q4_K_X": QuantThresholds(max_kld_mean=0.10, min_top1=0.85, max_ppl_ratio=1.10, max_accuracy_drop=0.05),
    "Q4_0": QuantThresholds(max_kld_mean=0.15, min_top1=0.80, max_ppl_ratio=1.15, max_accuracy_drop=0.05),
}
assert set(DEFAULT_THRESHOLDS) == set(QUANT_TYPES), "every quant type needs default thresholds"

# imatrix (importance matrix from the creator's own data, never the eval text) for every quant
# below 8 bits: llama.cpp's Mistral-7B figures, PPL increase Q4_K_M 1.08% -> 0.75%. Giving it to
# the 4-bit quants only inverted verdicts on a real model (SmolLM2-135M: Q5_K_M without it had a
# higher KLD than Q4_K_M with it). Q8_0 ignores an imatrix.
DEFAULT_IMATRIX_QUANTS: tuple[str, ...] = ("Q4_0", "Q4_K_M", "Q5_K_M", "Q6_K", "Q4_K_X")

# Types the Q4_K_X search may give a tensor (edgetune.mix), each only where its block fits the
# rows: K-quants on rows that are multiples of 256, the 32-block types elsewhere. All of them have
# ARM NEON kernels in llama.cpp and decode at about the speed of their size on a phone CPU.
# Left out by default: the IQ types (their quantisation is 3-8x slower and some decode slower on
# ARM), Q4_1 (llama.cpp's own table: +0.45 PPL at 4.78 GB against Q5_0's +0.13 at 5.21 GB on
# Llama-3-8B) and Q5_1 (+8% size over Q5_0 for a fifth less PPL loss). Our only real test model
# has a further reason: its weights come from a Q4_1 file, and Q4_1/Q5_1 find that grid again
# (relative error 1e-6, i.e. lossless), which would flatter any mix that uses them. A profile may
# list them (and the IQ types) in mix_types.
DEFAULT_MIX_TYPES: tuple[str, ...] = ("Q4_0", "Q5_0", "Q8_0", "Q4_K", "Q5_K", "Q6_K")
# Q4_K_X's size budget: "Q4_K_M" (no larger than plain Q4_K_M of the same model), "ram" (the
# largest file whose RAM at the profile's context fits memory_budget_mb) or a size: "1.2GB".
DEFAULT_MIX_BUDGET = "Q4_K_M"

# Decode speed of a quant over F16's, measured in the same run. On CPU decode reads every weight
# once per token, so a quant, with fewer bytes to read, decodes at least as fast as F16. Best of
# 3-5 on a quiet 2-core machine: SmolLM2-135M Q4_K_M 1.45-1.75x, Q8_0 1.4x; a 46M llama 2.3x;
# the 3 MB test/demo model, whose decode step is mostly overhead, 0.94-1.12x (not held to the
# ratio: gates.MIN_F16_STEP_MS). 0.8 leaves room for noise between two measurements and still
# fails a quant slower than F16 on the machine that measured both.
DEFAULT_MIN_DECODE_RATIO = 0.8


@dataclass(frozen=True)
class QuantProfile:
    """A device target.

    ``memory_budget_mb`` is in MiB (2**20 bytes): the RAM the device lets a model use, compared
    with each quant's ``ram_needed_bytes`` at ``context_length``. ``eval_context`` is the
    perplexity chunk size. ``ram_gb`` is the device RAM (GB as sold) the budget was derived from,
    for people to read; see ``pocketpal_usable_ram_mib``.

    Gates (all optional): ``imatrix_quants`` are built with a domain importance matrix when they
    are built (they need not all be in ``quants``). ``min_decode_tps`` is a floor on decode
    tokens/s *measured on the build machine* by ``edgetune.speed`` (CPU, 8 threads at most); it
    is not a phone figure: it catches a model too large for the device class, assuming the build
    machine decodes roughly 2.5-3x faster than the profile's device. ``None``: no speed floor.
    ``min_decode_ratio`` is a floor on each quant's decode tokens/s over F16's, both measured in
    the same run, so the build machine's own speed cancels out (``DEFAULT_MIN_DECODE_RATIO``;
    ``None``: no ratio check). Neither check fails a quant measured while the machine was busy.
    ``mix_types`` and ``mix_budget`` shape the Q4_K_X search (``edgetune.mix``) when ``quants``
    lists it: the tensor types it may use and its size budget (see ``parse_size_budget``).
    ``thresholds`` holds the quality limits of every quant type, the defaults above with the
    profile's overrides merged in field by field.
    """

    name: str
    description: str
    quants: tuple[str, ...]
    context_length: int
    memory_budget_mb: int
    eval_context: int = 512
    ram_gb: float | None = None
    imatrix_quants: tuple[str, ...] = DEFAULT_IMATRIX_QUANTS
    min_decode_tps: float | None = None
    min_decode_ratio: float | None = DEFAULT_MIN_DECODE_RATIO
    mix_types: tuple[str, ...] = DEFAULT_MIX_TYPES
    mix_budget: str = DEFAULT_MIX_BUDGET
    thresholds: dict[str, QuantThresholds] = field(
        default_factory=lambda: dict(DEFAULT_THRESHOLDS), hash=False)

    @property
    def memory_budget_bytes(self) -> int:
        return self.memory_budget_mb * MIB

    def thresholds_for(self, quant: str) -> QuantThresholds:
        """This profile's limits for ``quant``; the defaults where a hand-built profile has none."""
        return self.thresholds.get(quant) or DEFAULT_THRESHOLDS.get(quant) or QuantThresholds()


def pocketpal_usable_ram_mib(ram_gb: float) -> int:
    """PocketPal's cold-start ceiling, min(60% RAM, RAM - 1.2 GB), in whole MiB (ANCHORS.md 3).

    PocketPal applies it to the total the OS reports, in bytes, with 1.2 GB = 1.2e9 bytes. We take
    a device sold as N GB to report N * 1e9 bytes: an N GB phone has N GiB of chips, of which the
    OS reports a few hundred MiB less (firmware and kernel carve-outs), which lands near N * 1e9.
    """
    total = round(ram_gb * 1e9)
    return max(min(total * 6 // 10, total - 1_200_000_000), 0) // MIB


def available_profiles() -> list[str]:
    return sorted(p.stem for p in PROFILES_DIR.glob("*.yaml"))


def load_profile(name_or_path: str) -> QuantProfile:
    """Load a shipped profile by name, or a YAML file by path; report every problem at once."""
    import yaml

    path = Path(name_or_path)
    where = str(path)
    if path.suffix not in (".yaml", ".yml"):
        path = PROFILES_DIR / f"{name_or_path}.yaml"
        where = f"{PROFILES_DIR.name}/{path.name}"
    if not path.is_file():
        raise ConfigError(f"unknown target '{name_or_path}'",
                          hint=f"choose one of: {', '.join(available_profiles())}")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{where}: not valid YAML ({exc})", hint="fix the YAML syntax") from exc
    return parse_profile({} if data is None else data, where)


_THRESHOLD_FIELDS_ORDER = tuple(f.name for f in fields(QuantThresholds))
_THRESHOLD_FIELDS = set(_THRESHOLD_FIELDS_ORDER)
# (check, message) per threshold field; the value is already known to be a number.
_THRESHOLD_RANGES = {
    "max_kld_mean": (lambda v: v >= 0, "must be 0 or more"),
    "min_top1": (lambda v: 0 <= v <= 1, "must be between 0 and 1"),
    "max_ppl_ratio": (lambda v: v >= 1, "must be 1 or more (a ratio to F16 perplexity)"),
    "max_accuracy_drop": (lambda v: 0 <= v <= 1, "must be between 0 and 1 (a fraction)"),
}


def parse_profile(data: dict, where: str) -> QuantProfile:
    """Validate a profile's YAML data; every problem is reported in one ConfigError.

    Each problem reads ``<where>: <field path>: <what is wrong>``.
    """
    problems: list[str] = []

    def problem(path: str, message: str) -> None:
        problems.append(f"{where}: {path}: {message}")

    if not isinstance(data, dict):
        problem("(top level)", f"must be a mapping of fields, got {_describe(data)}")
        _raise(problems)
    known = {f.name: f for f in fields(QuantProfile)}
    for key in data:
        if key not in known:
            problem(str(key), "unknown field")
    for name, f in known.items():
        if name not in data and f.default is MISSING and f.default_factory is MISSING:
            problem(name, "missing")

    values: dict[str, Any] = {}
    for key in ("name", "description"):
        if key in data:
            value = data[key]
            if not isinstance(value, str) or not value.strip():
                problem(key, "must be a non-empty string")
            else:
                values[key] = value
    if "quants" in data:
        quants = _quant_list(data["quants"], "quants", problem, allow_empty=False)
        if quants is not None:
            values["quants"] = quants
    if "imatrix_quants" in data:
        quants = _quant_list(data["imatrix_quants"], "imatrix_quants", problem, allow_empty=True)
        if quants is not None:
            values["imatrix_quants"] = quants
    for key in ("context_length", "memory_budget_mb", "eval_context"):
        if key in data:
            value = data[key]
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                problem(key, f"must be a positive integer, got {value!r}")
            else:
                values[key] = value
    for key in ("ram_gb", "min_decode_tps"):
        if key in data and data[key] is not None:
            value = data[key]
            if not _is_number(value) or value <= 0:
                problem(key, f"must be a positive number or null, got {value!r}")
            else:
                values[key] = float(value)
    if "min_decode_ratio" in data:  # null turns the check off, unlike a missing key
        value = data["min_decode_ratio"]
        if value is not None and (not _is_number(value) or not 0 < value < math.inf):
            problem("min_decode_ratio", f"must be a positive number or null, got {value!r}")
        else:
            values["min_decode_ratio"] = None if value is None else float(value)
    if "mix_types" in data:
        value = data["mix_types"]
        from edgetune.mix import BLOCK

        if not isinstance(value, list) or not value or \
                any(not isinstance(t, str) or t not in BLOCK for t in value):
            problem("mix_types", f"must be a non-empty list of tensor types from "
                                 f"{', '.join(BLOCK)}, got {value!r}")
        else:
            values["mix_types"] = tuple(value)
    if "mix_budget" in data:
        try:
            parse_size_budget(str(data["mix_budget"]))
            values["mix_budget"] = str(data["mix_budget"])
        except ConfigError as exc:
            problem("mix_budget", exc.message)
    if "thresholds" in data:
        values["thresholds"] = _thresholds(data["thresholds"], problem)
    _raise(problems)
    return QuantProfile(**values)


def parse_size_budget(text: str) -> str | int:
    """``"Q4_K_M"`` or ``"ram"`` as they are, a size (``1.2GB``, ``800MB``, ``900MiB``, bytes)
    as a byte count."""
    import re

    spelled = text.strip()
    if spelled.upper() == "Q4_K_M":
        return "Q4_K_M"
    if spelled.lower() == "ram":
        return "ram"
    units = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20,
             "GIB": 2**30}
    match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([KMG]I?B|B)?", spelled, flags=re.IGNORECASE)
    if not match or float(match[1]) <= 0:
        raise ConfigError(f"size budget '{text}' is not a size",
                          hint="use Q4_K_M (its size), ram (the profile's RAM budget) or a "
                               "size such as 1.2GB or 800MB")
    return int(float(match[1]) * units[(match[2] or "").upper()])


def _quant_list(value: Any, path: str, problem, *, allow_empty: bool) -> tuple[str, ...] | None:
    if not isinstance(value, list) or (not value and not allow_empty):
        problem(path, "must be a non-empty list of quant names" if not allow_empty
                else "must be a list of quant names")
        return None
    ok = True
    for i, quant in enumerate(value):
        if not isinstance(quant, str) or quant not in QUANT_TYPES:
            problem(f"{path}[{i}]", f"unknown quant '{quant}' (choose from {', '.join(QUANT_TYPES)})")
            ok = False
        elif quant in value[:i]:
            problem(f"{path}[{i}]", f"'{quant}' is listed twice")
            ok = False
    return tuple(value) if ok else None


def _thresholds(value: Any, problem) -> dict[str, QuantThresholds]:
    """The defaults with the YAML's per-quant, per-field overrides merged in."""
    merged = dict(DEFAULT_THRESHOLDS)
    if value is None:
        return merged
    if not isinstance(value, dict):
        problem("thresholds", f"must be a mapping of quant name to limits, got {_describe(value)}")
        return merged
    for quant, limits in value.items():
        path = f"thresholds.{quant}"
        if quant not in QUANT_TYPES:
            problem(path, f"unknown quant '{quant}' (choose from {', '.join(QUANT_TYPES)})")
            continue
        if not isinstance(limits, dict):
            problem(path, f"must be a mapping of limits ({', '.join(_THRESHOLD_FIELDS_ORDER)}), "
                          f"got {_describe(limits)}")
            continue
        overrides = {}
        for key, limit in limits.items():
            if key not in _THRESHOLD_FIELDS:
                problem(f"{path}.{key}", f"unknown limit (choose from {', '.join(_THRESHOLD_FIELDS_ORDER)})")
            elif limit is None:
                overrides[key] = None  # null turns the check off for this quant
            elif not _is_number(limit) or not math.isfinite(limit):
                problem(f"{path}.{key}", f"must be a number or null, got {limit!r}")
            elif not _THRESHOLD_RANGES[key][0](limit):
                problem(f"{path}.{key}", _THRESHOLD_RANGES[key][1])
            else:
                overrides[key] = float(limit)
        merged[quant] = dataclasses.replace(merged[quant], **overrides)
    return merged


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _describe(value: Any) -> str:
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return "null" if value is None else repr(value)


def _raise(problems: list[str]) -> None:
    if problems:
        n = len(problems)
        err = ConfigError(f"invalid profile ({n} problem{'s' if n > 1 else ''}):\n  "
                          + "\n  ".join(problems),
                          hint="see quant_profiles/phone.yaml for a valid example")
        err.problems = tuple(problems)
        raise err
