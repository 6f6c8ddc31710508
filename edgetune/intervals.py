"""95% confidence intervals for task accuracy: how much a few dozen questions can tell.

Hand-written (a few lines each) rather than a dependency on scipy or statsmodels, neither of
which edgetune otherwise needs; the tests check both against published worked examples.

- One accuracy, k of n right: the Wilson score interval (Wilson 1927; Newcombe 1998, "Two-sided
  confidence intervals for the single proportion", method 3). Unlike k/n +- 1.96 SE it stays
  inside [0, 1] and is not zero-wide at 0 of n.
- The drop from F16 to a quant on the *same* questions: the difference of two paired
  proportions, which depends only on the discordant questions (F16 right and the quant wrong,
  or the reverse: McNemar's counts). Interval: Agresti & Min (2005), "Simple improved
  confidence intervals for comparing matched proportions", Stat Med 24:729-740: the Wald
  interval after adding 0.5 to each of the four cells. Pairing is what makes small sets
  usable: a quant that answers 36 questions exactly like F16 gets +-0.05, where treating the
  two accuracies as independent would give about +-0.2.
"""

from __future__ import annotations

import math
from statistics import NormalDist

LEVEL = 0.95
Z = NormalDist().inv_cdf(0.5 + LEVEL / 2)  # 1.959964


def wilson(k: int, n: int, z: float = Z) -> tuple[float, float]:
    """The Wilson score interval for ``k`` successes in ``n`` trials; (0, 1) when n is 0."""
    if n <= 0:
        return 0.0, 1.0
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


def paired_difference(lost: int, gained: int, n: int, z: float = Z) -> tuple[float, float]:
    """Interval for p(reference right) - p(candidate right) on the same ``n`` questions.

    ``lost``: questions the reference got right and the candidate wrong; ``gained``: the
    reverse. Agresti-Min: 0.5 added to each cell of the 2x2 table (so n + 2 in all), then Wald;
    clipped to [-1, 1]. (-1, 1) when n is 0.
    """
    if n <= 0:
        return -1.0, 1.0
    b, c, m = lost + 0.5, gained + 0.5, n + 2
    diff = (b - c) / m
    half = z * math.sqrt((b + c) - (b - c) ** 2 / m) / m
    return max(-1.0, diff - half), min(1.0, diff + half)
