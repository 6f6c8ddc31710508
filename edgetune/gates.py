"""Gates: every quant is held to its target's limits before it ships.

``gate_quant`` checks one quant's evaluation metrics against a ``QuantProfile``: quality against
F16 (mean KLD, top-1 agreement, perplexity ratio, task-accuracy drop), decode speed on the build
machine, and the RAM it needs at the profile's context. A metric that was not measured is
skipped, not failed; F16 is the reference and is never gated.

Metric keys (all optional; ``None`` counts as not measured):

- ``kld_mean``: mean KL divergence F16 -> quant, nats per token
- ``top1``: fraction of tokens whose most likely next token matches F16's
- ``ppl_ratio``: quant perplexity / F16 perplexity (``evaluate`` writes it)
- ``task_accuracy`` and ``f16_task_accuracy``: fractions of held-out questions answered
  correctly; the check is on the drop, F16 minus quant. ``gate_report`` fills
  ``f16_task_accuracy`` from the F16 row, so an eval report's ``quants`` mapping can be passed
  as it is.
- ``decode_tps``: decode tokens/s on the build machine (``evaluate.speed``)
- ``ram_needed_bytes``: PocketPal's estimate at the profile's context (``evaluate.ram_needed``)
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from edgetune.errors import EdgetuneError
from edgetune.profiles import MIB, QuantProfile

REFERENCE = "F16"
CHECKS = ("kld_mean", "top1", "ppl_ratio", "accuracy_drop", "decode_tps", "ram_needed_bytes")


@dataclass(frozen=True)
class GateResult:
    """One quant's verdict. ``reasons`` has one line per failed check, in ``CHECKS`` order.

    ``checks`` has every check: ``{"value", "limit", "passed"}`` when it ran, or
    ``{"skipped": True, "why": "not measured" | "no limit"}`` when it did not.
    """

    quant: str
    passed: bool
    reasons: tuple[str, ...]
    checks: dict = field(hash=False)

    def as_dict(self) -> dict:
        return {"passed": self.passed, "reasons": list(self.reasons),
                "checks": copy.deepcopy(self.checks)}


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

    accuracy = _number(metrics, "task_accuracy")
    f16_accuracy = _number(metrics, "f16_task_accuracy")
    if accuracy is None or f16_accuracy is None:
        skip("accuracy_drop", "not measured")
    else:
        # Rounded so that 0.80 - 0.75 is a drop of 0.05, not 0.05000000000000004.
        drop = round(f16_accuracy - accuracy, 12)
        if limits.max_accuracy_drop is None:
            skip("accuracy_drop", "no limit", drop)
        else:
            v, lim = _pair(drop, limits.max_accuracy_drop)
            run("accuracy_drop", drop, limits.max_accuracy_drop, drop <= limits.max_accuracy_drop,
                f"task accuracy drop {v} > {lim} ({accuracy:.3f} vs F16 {f16_accuracy:.3f})",
                task_accuracy=accuracy, f16_task_accuracy=f16_accuracy)

    lower("decode_tps", "decode", _number(metrics, "decode_tps"), profile.min_decode_tps,
          digits=1, unit=" tok/s", limit_label="floor ")

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


def gate_report(quants_metrics: Mapping[str, Mapping], profile: QuantProfile) -> dict[str, GateResult]:
    """Gate every quant of an eval report's ``quants`` mapping (F16 is the reference, skipped)."""
    f16_accuracy = (quants_metrics.get(REFERENCE) or {}).get("task_accuracy")
    results = {}
    for quant, metrics in quants_metrics.items():
        if quant == REFERENCE:
            continue
        if f16_accuracy is not None and metrics.get("f16_task_accuracy") is None:
            metrics = {**metrics, "f16_task_accuracy": f16_accuracy}
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
