"""The ``edgetune`` command: the group, every command registered on it, and ``main``.

The commands live one area a module (see ``edgetune.cli``). Heavy libraries (torch,
transformers, llama_cpp) load inside commands, so ``--help`` is instant.
"""

from __future__ import annotations

import os

import click

from edgetune import __version__
from edgetune.cli.base import CliGroup
from edgetune.cli.build import build, init, status, targets
from edgetune.cli.bundle import keys, license_group, sign, verify
from edgetune.cli.chat import chat, compare
from edgetune.cli.followers import followers
from edgetune.cli.hub import publish, pull
from edgetune.cli.stages import eval_cmd, train_cmd


@click.group(cls=CliGroup)
@click.version_option(__version__, prog_name="edgetune")
def cli() -> None:
    """Turn your own Q&A into a small, signed reasoning model that runs offline on a phone.

    \b
    Quick start (built-in demo, no config):
      edgetune build --target phone
    Set EDGETUNE_DEBUG=1 to see tracebacks, NO_COLOR=1 for output without colours.
    """


for _command in (init, build, status, eval_cmd, train_cmd, targets, keys, verify, sign,
                 license_group, chat, compare, publish, followers, pull):
    cli.add_command(_command)


def main() -> None:
    # Library progress bars and advisories would interleave with our own live view.
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    cli(prog_name="edgetune")


if __name__ == "__main__":
    main()
