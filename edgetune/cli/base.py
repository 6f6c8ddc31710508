"""What every click group of edgetune shares: errors shown as ``Error:`` / ``Hint:`` lines,
and ``echo``, the one way a command prints a line (control and bidi characters escaped)."""

from __future__ import annotations

import os

import click

from edgetune.errors import EdgetuneError
from edgetune.safe_text import printable


def echo(message: object = "", **options) -> None:
    """``click.echo`` with ``safe_text.printable`` applied: names, paths and fields in the
    line come from files others made, and must not move the cursor or rewrite the screen.
    Style options (``fg``, ``bold``, ...) style the escaped text, as ``click.secho``: print a
    line in pieces (``nl=False``) to style one part of it."""
    style = {k: options.pop(k) for k in list(options) if k not in _ECHO_OPTIONS}
    text = printable(message)
    click.echo(click.style(text, **style) if style else text, **options)


_ECHO_OPTIONS = ("file", "nl", "err", "color")


def _block(label: str, text: str) -> str:
    """``label text``, its further lines indented: nothing in a message can start a line of
    its own that reads like another command's output (``OK: ... verified``)."""
    first, *rest = printable(text).split("\n")
    return "\n".join([f"{label} {first}", *(f"  {line}" if line[:1] not in (" ", "") else line
                                            for line in rest)])


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
            click.echo(_block("Error:", exc.message), err=True)
            if exc.hint:
                click.echo(_block("Hint:", exc.hint), err=True)
            ctx.exit(exc.exit_code)
        except click.ClickException as exc:  # click prints these; they quote paths given to us
            exc.message = printable(exc.message)
            raise
        except OSError as exc:  # a path no check caught first: still named, not a traceback
            if os.environ.get("EDGETUNE_DEBUG") or not exc.filename:
                raise
            click.echo(_block("Error:", f"{exc.filename}: {exc.strerror or exc}"), err=True)
            click.echo("Hint: check that path, its permissions and the free disk space "
                       "(EDGETUNE_DEBUG=1 shows where it failed)", err=True)
            ctx.exit(1)


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
