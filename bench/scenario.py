"""The scenario registry entry: how ``python -m bench`` finds and runs a scenario.

A scenario module exposes one :class:`Scenario`; ``bench.__main__`` lists
them in its registry, gives each a sub-command with the common options
(``--json``, ``--repeat``, ``--quick``) and lets it add its own.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

import attrs

from .report import Report

__all__ = ["Scenario"]


@attrs.frozen(kw_only=True)
class Scenario:
    """One ``python -m bench <name>`` sub-command.

    Attributes:
        name: the sub-command.
        help: one line for ``--help``.
        add_arguments: adds the scenario's own options to its sub-parser.
        run: runs the scenario with the parsed options and returns its report.
    """

    name: str
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], Report]
