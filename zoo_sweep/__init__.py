"""zoo-sweep: find and transfer complementary knowledge between the models of a zoo.

The science is from Roth et al., "Fantastic Gains and Where to Find Them" (ICLR 2024). Every stage is a
plain function (``plan_sweep``, ``launch_sweep``, ``write_report`` ...) so notebooks can call them without
the CLI.
"""

__version__ = "0.1.0"

from zoo_sweep.errors import UserError  # noqa: E402,F401  (the one exception callers catch)
