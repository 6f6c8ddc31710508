"""``python -m edgetune``: the same as the ``edgetune`` command."""

from edgetune.cli.main import main

main()
