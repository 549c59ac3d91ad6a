"""Name → callable lookup for dataset loaders and model builders.

A params.yaml names a loader or builder either by a built-in name or as ``package.module:function``,
so a user brings their own without touching the flows.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any

from edgeloop.core.errors import PluginError


def resolve(kind: str, name: str, builtins: Mapping[str, Callable[..., Any]]) -> Callable[..., Any]:
    """Return the callable called ``name``: a key of ``builtins`` or ``module:attribute``."""
    if name in builtins:
        return builtins[name]
    if ":" not in name:
        raise PluginError(
            f"unknown {kind} {name!r}",
            hint=f"use one of {sorted(builtins)} or 'package.module:function'",
        )
    module_name, _, attr = name.partition(":")
    if not module_name or module_name.startswith(".") or not attr:
        raise PluginError(
            f"{kind} {name!r} is not of the form 'package.module:function'",
            hint="name an absolute module and a callable in it",
        )
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:
        raise PluginError(
            f"{kind} {name!r}: cannot import module {module_name!r} ({exc})",
            hint="check the name in params.yaml and that the module is installed",
        ) from exc
    target = getattr(module, attr, None)
    if not callable(target):
        raise PluginError(
            f"{kind} {name!r}: module {module_name!r} has no callable {attr!r}",
            hint="check the name in params.yaml",
        )
    return target
