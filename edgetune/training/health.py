"""health: warnings about a GRPO run that is not learning, read from TRL's per-step metrics.

GRPO learns only from differences between the completions of one prompt. Three patterns in
TRL's logs mean those differences are missing, and each has a known fix:

* ``no_signal``: ``frac_reward_zero_std`` (the share of prompt groups whose completions all
  got the same reward) stays high. Without it in the log, ``reward_std`` of 0 says the same.
* ``format_zero``: every format reward (``rewards/<name>/mean``) stays at 0 (or below:
  xml_count can go negative): the model never writes the tags, so correctness cannot be scored
  either. One warning names them all.
* ``length_capped``: ``completions/clipped_ratio`` stays high: answers are cut off before
  they are written, and a truncated answer scores 0.

A condition must hold for ``window`` consecutive observed steps (steps whose metrics carry its
key) before it warns, so one unlucky batch does not. Each warns once; it re-arms only after
it has been clear for ``window`` observed steps.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

FORMAT_REWARDS = ("strict_format", "soft_format", "xml_count")
ZERO = 1e-9


@dataclass(frozen=True)
class HealthWarning:
    code: str  # "no_signal" | "format_zero" | "length_capped"
    step: int
    message: str


@dataclass
class _Streak:
    """Consecutive observed steps a condition has held / been clear, and whether it may warn."""

    held: int = 0
    cleared: int = 0
    armed: bool = True

    def update(self, holds: bool, window: int) -> bool:
        """Record one observed step; True when the condition should warn now."""
        if holds:
            self.held += 1
            self.cleared = 0
            if self.armed and self.held >= window:
                self.armed = False
                return True
        else:
            self.held = 0
            self.cleared += 1
            if not self.armed and self.cleared >= window:
                self.armed = True
        return False


def _number(value) -> float | None:
    """A metric as a float; None for missing, non-numeric or NaN values."""
    if value is None or isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(number) else number


class TrainingHealth:
    """Feed it each step's metrics; it returns the warnings that step newly triggers."""

    def __init__(self, *, window: int = 10, zero_std_threshold: float = 0.9,
                 clipped_threshold: float = 0.8, max_completion_length: int | None = None,
                 answer_format: str = "<reasoning>...</reasoning> then <answer>...</answer>",
                 system_prompt_given: bool = False):
        if window < 1:
            raise ValueError(f"window must be at least 1, not {window}")
        self.window = window
        self.zero_std_threshold = zero_std_threshold
        self.clipped_threshold = clipped_threshold
        self.max_completion_length = max_completion_length
        self.answer_format = answer_format
        self.system_prompt_given = system_prompt_given  # then "add a system prompt" is no advice
        self._streaks: dict[str, _Streak] = {}
        self._warnings: list[HealthWarning] = []

    @property
    def warnings(self) -> list[HealthWarning]:
        """Every warning emitted so far, in order."""
        return list(self._warnings)

    def observe(self, step: int, metrics: dict) -> list[HealthWarning]:
        """Record one step's metrics; return only the warnings new at this step."""
        new = []
        for key, holds, message in self._conditions(metrics):
            streak = self._streaks.setdefault(key, _Streak())
            if streak.update(holds, self.window):
                code = key.split(":", 1)[0]
                new.append(HealthWarning(code=code, step=step, message=message))
        self._warnings.extend(new)
        return new

    def _conditions(self, metrics: dict):
        """(streak key, holds, message) for each condition this step's metrics can judge."""
        steps = f"for {self.window} step{'s' if self.window != 1 else ''}"

        zero_std = _number(metrics.get("frac_reward_zero_std"))
        reward_std = _number(metrics.get("reward_std"))
        if zero_std is not None:
            holds = zero_std >= self.zero_std_threshold
            seen = f"{steps}, at least {self.zero_std_threshold:.0%} of prompt groups"
        elif reward_std is not None:
            holds = reward_std <= ZERO
            seen = f"{steps}, every prompt group"
        else:
            holds = None
        if holds is not None:
            yield "no_signal", holds, (
                f"{seen} got the same reward for every completion, so GRPO has nothing to learn "
                "from. Try a warm start with --sft-data, more generations (--num-generations), "
                "a higher --temperature, or easier data.")

        # One warning for the format, not one per format reward: they all say the same thing.
        means = {name: _number(metrics.get(f"rewards/{name}/mean")) for name in FORMAT_REWARDS}
        means = {name: mean for name, mean in means.items() if mean is not None}
        if means:
            fixes = "the format warm start (--warm-start always) or SFT data (--sft-data)"
            if not self.system_prompt_given:
                fixes += ", or a system prompt showing the format (--system-prompt-file)"
            yield "format_zero", all(m <= ZERO for m in means.values()), (
                f"the format rewards ({', '.join(means)}) have been 0 {steps}: the model never "
                f"answers in the expected format ({self.answer_format}), so its answers cannot be "
                f"scored either. Fix it with {fixes}.")

        clipped = _number(metrics.get("completions/clipped_ratio"))
        if clipped is not None:
            cap = (f"--max-completion-length {self.max_completion_length}"
                   if self.max_completion_length else "--max-completion-length")
            yield "length_capped", clipped >= self.clipped_threshold, (
                f"{steps}, at least {self.clipped_threshold:.0%} of completions were cut off at "
                f"{cap}, and truncated answers score 0. Raise --max-completion-length or ask "
                "for shorter reasoning in the system prompt.")
