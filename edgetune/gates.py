"""Gates: every quant is held to its target's limits before it ships.

``gate_quant`` checks one quant's evaluation metrics against a ``QuantProfile``: quality against
F16 (mean KLD, top-1 agreement, perplexity ratio, task-accuracy drop), decode speed on the build
machine (a floor, and a ratio to F16's measured in the same run), and the RAM it needs at the
profile's context. A metric that was not measured is skipped, not failed; F16 is the reference
and is never gated. A decode figure below its limit that was measured while the machine was
busy is not failed either: the check cannot judge, and says "the machine was busy (load X on N
cores ...)" (``decode_checks``).

Metric keys (all optional; ``None`` counts as not measured):

- ``kld_mean``: mean KL divergence F16 -> quant, nats per token
- ``top1``: fraction of tokens whose most likely next token matches F16's
- ``ppl_ratio``: quant perplexity / F16 perplexity (``evaluate`` writes it)
- ``task_accuracy`` and ``f16_task_accuracy``: fractions of held-out questions answered
  correctly; the check is on the drop, F16 minus quant. ``gate_report`` fills
  ``f16_task_accuracy`` from the F16 row, so an eval report's ``quants`` mapping can be passed
  as it is. With ``task_total`` (questions) and McNemar's counts ``task_lost`` (F16 right,
  quant wrong) and ``task_gained`` (the reverse), the drop gets a paired 95% interval
  (``edgetune.intervals``), and the check can answer "cannot judge" (see ``accuracy_check``).
- ``decode_tps``: decode tokens/s on the build machine (``edgetune.speed``), with
  ``machine_busy`` and the load it saw (``load_avg``, ``cores``, ``decode_cpu_share``)
- ``f16_speed``: F16's own ``decode_tps``, ``machine_busy`` and load, for the ratio;
  ``gate_report`` fills it from the F16 row
- ``ram_needed_bytes``: PocketPal's estimate at the profile's context (``evaluate.ram_needed``)
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from edgetune import intervals
from edgetune.errors import EdgetuneError
from edgetune.profiles import MIB, QuantProfile
from edgetune.speed import SPEED_KEYS, busy_note

REFERENCE = "F16"
CHECKS = ("kld_mean", "top1", "ppl_ratio", "accuracy_drop", "decode_tps", "decode_ratio",
          "ram_needed_bytes")
# A check that ran but whose data cannot support a verdict: neither passed nor failed.
CANNOT_JUDGE = "cannot judge"
# Below this F16 accuracy the model does not do the task at all, so no drop can be judged.
MIN_F16_TASK_ACCURACY = 0.10


@dataclass(frozen=True)
class GateResult:
    """One quant's verdict. ``reasons`` has one line per failed check, in ``CHECKS`` order.

    ``checks`` has every check: ``{"value", "limit", "passed"}`` when it ran, or
    ``{"skipped": True, "why": "not measured" | "no limit"}`` when it did not, or
    ``{"skipped": True, "why": "cannot judge", "detail": ...}`` when its data cannot tell
    (``cannot_judge`` lists the details; ``passed`` counts failures only).
    """

    quant: str
    passed: bool
    reasons: tuple[str, ...]
    checks: dict = field(hash=False)

    @property
    def cannot_judge(self) -> tuple[str, ...]:
        return tuple(c["detail"] for c in self.checks.values() if c.get("why") == CANNOT_JUDGE)

    def as_dict(self) -> dict:
        out = {"passed": self.passed, "reasons": list(self.reasons),
               "checks": copy.deepcopy(self.checks)}
        if self.cannot_judge:
            out["cannot_judge"] = list(self.cannot_judge)
        return out


class GateFailure(EdgetuneError):
    """One or more quants failed their target's gates; ``results`` holds every verdict."""

    def __init__(self, results: Mapping[str, GateResult], target: str):
        failed = [q for q, r in results.items() if not r.passed]
        super().__init__(
            f"{len(failed)} of {len(results)} quants failed the gates for target '{target}': "
            f"{', '.join(failed)}",
            hint="see the table above; fix the model/data, choose another --target, or pass "
                 "--accept-gate-failure to ship anyway (recorded in the manifest)")
        self.results = dict(results)
        self.target = target


def gate_quant(quant: str, metrics: Mapping, profile: QuantProfile) -> GateResult:
    """Check one quant's metrics against ``profile``; missing metrics are skipped."""
    if quant == REFERENCE:
        raise ValueError("F16 is the reference the quants are measured against; it is not gated")
    limits = profile.thresholds_for(quant)
    checks: dict[str, dict] = {}
    reasons: list[str] = []

    def run(name: str, value, limit, ok: bool, reason: str, **extra) -> None:
        checks[name] = {"value": value, "limit": limit, "passed": ok, **extra}
        if not ok:
            reasons.append(reason)

    def skip(name: str, why: str, value=None) -> None:
        checks[name] = {"skipped": True, "why": why, **({"value": value} if value is not None else {})}

    def upper(name: str, label: str, value, limit) -> None:  # value must be <= limit
        if value is None:
            skip(name, "not measured")
        elif limit is None:
            skip(name, "no limit", value)
        else:
            v, lim = _pair(value, limit)
            run(name, value, limit, value <= limit, f"{label} {v} > {lim}")

    def lower(name: str, label: str, value, limit, *, digits: int = 3, unit: str = "",
              limit_label: str = "") -> None:  # value must be >= limit
        if value is None:
            skip(name, "not measured")
        elif limit is None:
            skip(name, "no limit", value)
        else:
            v, lim = _pair(value, limit, digits=digits)
            run(name, value, limit, value >= limit, f"{label} {v}{unit} < {limit_label}{lim}")

    upper("kld_mean", "mean KLD", _number(metrics, "kld_mean"), limits.max_kld_mean)

    lower("top1", "top-1 agreement", _number(metrics, "top1"), limits.min_top1)

    upper("ppl_ratio", "PPL ratio", _number(metrics, "ppl_ratio"), limits.max_ppl_ratio)

    checks["accuracy_drop"], reason = accuracy_check(metrics, limits.max_accuracy_drop)
    if reason:
        reasons.append(reason)

    decode, decode_reasons = decode_checks(metrics, profile)
    checks.update(decode)
    reasons += decode_reasons

    ram = metrics.get("ram_needed_bytes")
    if ram is None:
        skip("ram_needed_bytes", "not measured")
    else:
        ram, budget = int(ram), profile.memory_budget_bytes
        # A requirement is rounded up, so it never reads as equal to the budget it exceeds.
        run("ram_needed_bytes", ram, budget, ram <= budget,
            f"needs {math.ceil(ram / MIB):,} MiB RAM at {profile.context_length} ctx "
            f"> budget {profile.memory_budget_mb:,} MiB")

    return GateResult(quant=quant, passed=not reasons, reasons=tuple(reasons), checks=checks)


def accuracy_check(metrics: Mapping, limit: float | None) -> tuple[dict, str | None]:
    """The task-accuracy drop check and, when it fails, its reason.

    With the question count and McNemar's counts, the drop's paired 95% interval decides what
    can be said. A drop whose whole interval lies above ``limit`` fails, however few the
    questions. Otherwise the check cannot judge, and says why (``{"skipped": True, "why":
    "cannot judge", "detail": ...}``: neither passed nor failed), when F16 itself answers fewer
    than ``MIN_F16_TASK_ACCURACY`` of the questions (a drop from nothing means nothing) or when
    the interval's half-width is wider than ``limit`` (too few questions). Else the measured drop
    is held to ``limit``. Metrics without the counts (written by hand, or before intervals)
    are held to ``limit`` as measured.
    """
    accuracy, f16 = _number(metrics, "task_accuracy"), _number(metrics, "f16_task_accuracy")
    if accuracy is None or f16 is None:
        return {"skipped": True, "why": "not measured"}, None
    drop = round(f16 - accuracy, 12)  # so that 0.80 - 0.75 is a drop of 0.05, not 0.0500...04
    if limit is None:
        return {"skipped": True, "why": "no limit", "value": drop}, None
    v, lim = _pair(drop, limit)
    reason = f"task accuracy drop {v} > {lim} ({accuracy:.3f} vs F16 {f16:.3f}"
    check = {"value": drop, "limit": limit, "passed": None, "task_accuracy": accuracy,
             "f16_task_accuracy": f16}
    counts = [metrics.get(k) for k in ("task_total", "task_lost", "task_gained")]
    if any(c is None for c in counts):
        return {**check, "passed": drop <= limit}, None if drop <= limit else reason + ")"
    n, lost, gained = (int(c) for c in counts)
    low, high = intervals.paired_difference(lost, gained, n)
    check.update(n=n, ci95=[low, high])
    reason += f", {n} questions, 95% interval {low:+.3f} to {high:+.3f})"
    half = (high - low) / 2
    if low > limit:
        return {**check, "passed": False}, reason
    if f16 < MIN_F16_TASK_ACCURACY:
        detail = (f"F16 answers {round(f16 * n)} of {n} correctly (below the "
                  f"{MIN_F16_TASK_ACCURACY:.0%} floor)")
    elif half > limit:
        h, lim = _pair(half, limit, digits=2)
        detail = (f"only {n} questions: the 95% interval on the drop is ±{h}, wider than the "
                  f"allowed {lim}")
    else:
        return {**check, "passed": drop <= limit}, None if drop <= limit else reason
    del check["passed"]
    return {"skipped": True, "why": CANNOT_JUDGE,
            "detail": f"cannot judge accuracy on this data: {detail}", **check}, None


# An F16 decode step shorter than this is overhead (graph, thread wake-ups, Python), not reading
# weights, and a quant cannot be faster there: the 3 MB test model's steps take ~0.15 ms and its
# quants measure 0.94-1.12x F16 from run to run; SmolLM2-135M's take 15 ms on 2 cores.
MIN_F16_STEP_MS = 1.0


def decode_checks(metrics: Mapping, profile: QuantProfile) -> tuple[dict[str, dict], list[str]]:
    """The decode floor (``decode_tps``) and the decode ratio to F16 (``decode_ratio``), and the
    reasons of those that failed.

    A figure under its limit fails only when measured on a quiet machine: beside other jobs a
    2-core machine decodes 10-100x slower (``edgetune.speed``), which says nothing about the
    model, so the check is skipped with the load it saw. The ratio needs both measurements quiet,
    and an F16 slow enough per step (``MIN_F16_STEP_MS``) for the weights to set its speed.
    """
    checks: dict[str, dict] = {}
    reasons: list[str] = []
    f16 = metrics.get("f16_speed") or {}
    value, f16_value = _number(metrics, "decode_tps"), _number(f16, "decode_tps")
    ratio = None if value is None or not f16_value else value / f16_value

    def judge(name: str, figure, limit, busy: str | None, reason, **extra) -> None:
        """Passed, failed, or with ``busy`` (why the machine's load hides the answer) not judged."""
        if figure is None:
            checks[name] = {"skipped": True, "why": "not measured"}
        elif limit is None:
            checks[name] = {"skipped": True, "why": "no limit", "value": figure}
        elif figure >= limit:
            checks[name] = {"value": figure, "limit": limit, "passed": True, **extra}
        elif busy:
            checks[name] = {"skipped": True, "why": CANNOT_JUDGE, "detail": busy, "busy": True,
                            "value": figure, "limit": limit, **extra}
        else:
            checks[name] = {"value": figure, "limit": limit, "passed": False, **extra}
            reasons.append(reason())

    def floor_reason() -> str:
        v, lim = _pair(value, profile.min_decode_tps, digits=1)
        return f"decode {v} tok/s < floor {lim}"

    def ratio_reason() -> str:
        r, lim = _pair(ratio, profile.min_decode_ratio, digits=2)
        return f"decode {r}x F16's ({value:.1f} vs {f16_value:.1f} tok/s) < {lim}x"

    busy = busy_note(metrics) if metrics.get("machine_busy") else None
    judge("decode_tps", value, profile.min_decode_tps,
          busy and f"cannot judge decode speed: {busy}", floor_reason)
    if busy is None and f16.get("machine_busy"):
        busy = busy_note(f16, measuring="F16")
    if ratio is not None and profile.min_decode_ratio is not None \
            and 1000 / f16_value < MIN_F16_STEP_MS:
        checks["decode_ratio"] = {
            "skipped": True, "value": ratio, "f16_decode_tps": f16_value,
            "why": f"F16 decodes {f16_value:,.0f} tok/s: its steps are overhead, not weights"}
    else:
        judge("decode_ratio", ratio, profile.min_decode_ratio,
              busy and f"cannot judge decode against F16: {busy}", ratio_reason,
              **({} if ratio is None else {"f16_decode_tps": f16_value}))
    return checks, reasons


def gate_report(quants_metrics: Mapping[str, Mapping], profile: QuantProfile) -> dict[str, GateResult]:
    """Gate every quant of an eval report's ``quants`` mapping (F16 is the reference, skipped)."""
    f16_accuracy = (quants_metrics.get(REFERENCE) or {}).get("task_accuracy")
    f16_speed = {k: v for k, v in (quants_metrics.get(REFERENCE) or {}).items() if k in SPEED_KEYS}
    results = {}
    for quant, metrics in quants_metrics.items():
        if quant == REFERENCE:
            continue
        if f16_accuracy is not None and metrics.get("f16_task_accuracy") is None:
            metrics = {**metrics, "f16_task_accuracy": f16_accuracy}
        if f16_speed and metrics.get("f16_speed") is None:
            metrics = {**metrics, "f16_speed": f16_speed}
        results[quant] = gate_quant(quant, metrics, profile)
    return results


def failures_table_rows(results: Mapping[str, GateResult] | Iterable[GateResult]) -> list[tuple[str, str]]:
    """(quant, reason) for every failed check, in order, for the CLI to print as a table."""
    values = results.values() if isinstance(results, Mapping) else results
    return [(r.quant, reason) for r in values for reason in r.reasons]


def check_gates(results: Mapping[str, GateResult], target: str) -> None:
    """Raise ``GateFailure`` when any quant failed."""
    if any(not r.passed for r in results.values()):
        raise GateFailure(results, target)


def _number(metrics: Mapping, key: str) -> float | None:
    value = metrics.get(key)
    return None if value is None else float(value)


def _pair(value: float, limit: float, digits: int = 3) -> tuple[str, str]:
    """Both numbers at ``digits`` decimals, or more where they would otherwise print the same."""
    for d in range(digits, 7):
        a, b = f"{value:.{d}f}", f"{limit:.{d}f}"
        if a != b:
            break
    return a, b
