"""zoo-sweep: find and transfer complementary knowledge between the models of a zoo.

The science is from Roth et al., "Fantastic Gains and Where to Find Them" (ICLR 2024). Every stage is a
plain function (``plan_sweep``, ``launch_sweep``, ``write_report`` ...) so notebooks can call them without
the CLI; ``Results`` reads a store as pandas frames (docs/notebook.md).
"""

__version__ = "0.1.0"

from zoo_sweep.errors import UserError  # noqa: E402,F401  (the one exception callers catch)


def __getattr__(name: str):
    """``Results`` is imported on first use: every module of the package imports this one, and the commands a
    login node runs must not pay for pandas and SQLAlchemy."""
    if name == "Results":
        from zoo_sweep.report.notebook import Results

        return Results
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
