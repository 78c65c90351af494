"""lorahive.cli: the Typer command-line app (thin: parses, calls, shows progress)."""
