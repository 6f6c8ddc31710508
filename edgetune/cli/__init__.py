"""The command line: a thin Click layer over the library (``edgetune.pipeline`` and the stages).

``main`` holds the group and registers every command; the commands live one area a module:
``build`` (build, status, init, targets), ``stages`` (train, eval), ``bundle`` (keys, sign,
verify, license), ``chat``, ``hub`` (publish, pull), ``followers``. ``console`` renders build
events and tables with rich (plain lines in a pipe); ``options`` holds the option decorators
commands share; ``base`` the group class (errors as ``Error:`` / ``Hint:``, NO_COLOR).
"""

from edgetune.cli.main import cli, main

__all__ = ["cli", "main"]
