"""edgetune: turn your own Q&A into a small, signed reasoning model that runs offline on a phone.

The pipeline reads top-down as train -> merge -> convert -> quantise -> evaluate -> bundle -> sign.
Each stage is a plain function over typed artifacts (see ``edgetune.artifacts``); the Click CLI
in ``edgetune.cli`` is a thin layer over them.
"""

__version__ = "0.1.0"
