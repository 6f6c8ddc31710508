"""Targets are data: ``quant_profiles/<name>.yaml`` says what to build and test for a device."""

from __future__ import annotations

from dataclasses import MISSING, dataclass, fields
from pathlib import Path

from edgetune.errors import ConfigError
from edgetune.quantise import QUANT_TYPES

PROFILES_DIR = Path(__file__).resolve().parents[1] / "quant_profiles"


@dataclass(frozen=True)
class QuantProfile:
    name: str
    description: str
    quants: tuple[str, ...]
    context_length: int
    memory_budget_mb: int
    eval_context: int = 512


def available_profiles() -> list[str]:
    return sorted(p.stem for p in PROFILES_DIR.glob("*.yaml"))


def load_profile(name_or_path: str) -> QuantProfile:
    """Load a shipped profile by name, or a YAML file by path; report every problem at once."""
    import yaml

    path = Path(name_or_path)
    if path.suffix not in (".yaml", ".yml"):
        path = PROFILES_DIR / f"{name_or_path}.yaml"
    if not path.is_file():
        raise ConfigError(f"unknown target '{name_or_path}'",
                          hint=f"choose one of: {', '.join(available_profiles())}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc})", hint="fix the YAML syntax") from exc
    return parse_profile(data, str(path))


def parse_profile(data: dict, where: str) -> QuantProfile:
    known = {f.name: f for f in fields(QuantProfile)}
    problems = [f"{where}: unknown field '{k}'" for k in data if k not in known]
    for name, f in known.items():
        if name not in data:
            if f.default is MISSING:
                problems.append(f"{where}: missing field '{name}'")
    quants = data.get("quants")
    if quants is not None:
        if not isinstance(quants, list) or not quants:
            problems.append(f"{where}: 'quants' must be a non-empty list")
        else:
            problems += [f"{where}: quants: unknown quant '{q}' (choose from {', '.join(QUANT_TYPES)})"
                         for q in quants if q not in QUANT_TYPES]
    for key in ("context_length", "memory_budget_mb", "eval_context"):
        value = data.get(key)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value <= 0):
            problems.append(f"{where}: '{key}' must be a positive integer")
    if problems:
        raise ConfigError(f"invalid profile: {'; '.join(problems)}",
                          hint="see quant_profiles/phone.yaml for a valid example")
    return QuantProfile(**{**data, "quants": tuple(data["quants"])})
