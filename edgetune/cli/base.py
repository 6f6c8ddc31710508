"""What every click group of edgetune shares: errors shown as ``Error:`` / ``Hint:`` lines."""

from __future__ import annotations

import os

import click

from edgetune.errors import EdgetuneError


class ErrorGroup:
    """Mixed into click groups: EdgetuneError becomes ``Error:`` / ``Hint:`` lines and its exit
    code, not a traceback (EDGETUNE_DEBUG=1 shows it). Used by the main CLI and by groups that
    must behave the same when invoked on their own (``edgetune followers``)."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except EdgetuneError as exc:
            if os.environ.get("EDGETUNE_DEBUG"):
                raise
            click.echo(f"Error: {exc.message}", err=True)
            if exc.hint:
                click.echo(f"Hint: {exc.hint}", err=True)
            ctx.exit(exc.exit_code)


def no_color() -> bool:
    """https://no-color.org: NO_COLOR set to anything but the empty string."""
    return bool(os.environ.get("NO_COLOR"))


class CliGroup(ErrorGroup, click.Group):
    """The main ``edgetune`` group's class, also for groups invoked on their own
    (``followers``): edgetune's error output, and no styles from click.echo under NO_COLOR."""

    def invoke(self, ctx: click.Context):
        if no_color():
            ctx.color = False  # inherited by the context of every command below
        return super().invoke(ctx)
