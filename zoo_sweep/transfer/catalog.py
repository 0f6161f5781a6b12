"""What every transfer method is, by name, without torch: the registry that specs are checked against.

Each method is declared once, in config/methods.py (the spec layer reads its parameters from there); this
module is where the transfer layer, the rest of the package and a module of your own methods import the
registry from. ``methods.py`` attaches the losses.
"""

from __future__ import annotations

from zoo_sweep.config.methods import (
    CACHE_POLICIES,
    CATALOG,
    ENTRY_POINTS,
    LOSSES,
    MULTI_MODES,
    MethodInfo,
    attach,
    controls,
    declare,
    load_plugins,
    loss,
    single_teacher,
    top_k_fits,
)
from zoo_sweep.config.schema import key  # a method's parameters are declared with it, as every spec key

__all__ = ["CACHE_POLICIES", "CATALOG", "ENTRY_POINTS", "LOSSES", "MULTI_MODES", "MethodInfo", "attach", "controls",
           "declare", "key", "load_plugins", "loss", "single_teacher", "top_k_fits"]
