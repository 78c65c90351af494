"""``python -m lorahive``: the same as the ``lorahive`` command."""

from lorahive.cli.app import main

main()
