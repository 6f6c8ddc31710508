"""How the build reports progress: stages never print, they call a ``BuildEvents`` object.

The CLI renders events with rich (``edgetune.cli.console``); tests record them; library users
pass their own or get ``SilentEvents``.
"""

from __future__ import annotations

from typing import Protocol

from edgetune.training.config import StepLog


class BuildEvents(Protocol):
    def stage(self, name: str, detail: str = "") -> None: ...
    def progress(self, name: str, done: int, total: int, detail: str = "") -> None: ...
    def note(self, message: str) -> None: ...
    def stage_done(self, name: str, summary: str = "") -> None: ...


class SilentEvents:
    def stage(self, name, detail=""): pass
    def progress(self, name, done, total, detail=""): pass
    def note(self, message): pass
    def stage_done(self, name, summary=""): pass


def step_detail(step: StepLog) -> str:
    m = step.metrics
    if "reward" not in m:
        return f"loss {float(m.get('loss', 0)):.3f}"
    per_fn = " ".join(f"{k.split('/')[1][:7]} {float(v):.2f}" for k, v in m.items()
                      if k.startswith("rewards/") and k.endswith("/mean"))
    return (f"reward {float(m['reward']):.2f} ({per_fn}), "
            f"zero-std {float(m.get('frac_reward_zero_std', 0)):.2f}")
