"""Command groups of ``timeclock-collector`` (see collector/cli.py)."""
