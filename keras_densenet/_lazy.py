"""Package attributes imported from their modules on first use (PEP 562).

A package ``__init__`` that imported its modules eagerly would import Keras and
TensorFlow (seconds) for any ``from keras_densenet.x.y import CONSTANT``; the
command line needs its constants at once, and its ``--help`` in under a second.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any


def lazy_exports(
    package: str, exports: Mapping[str, str]
) -> tuple[Callable[[str], Any], Callable[[], list[str]], list[str]]:
    """``__getattr__``, ``__dir__`` and ``__all__`` for a package whose names live in submodules.

    Args:
        package: The package's ``__name__``.
        exports: Public name -> the module defining it: a submodule of
            ``package`` (``"loop"``), or an absolute ``"keras_densenet.x"``;
            ``"module:attribute"`` exports that attribute under the name.

    Returns:
        The two module-level functions and the sorted public names, to
        assign in the package.
    """
    namespace = importlib.import_module(package).__dict__

    def __getattr__(name: str) -> Any:
        if name not in exports:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        module, _, attribute = exports[name].partition(":")
        if not module.startswith("keras_densenet."):
            module = f"{package}.{module}"
        value = getattr(importlib.import_module(module), attribute or name)
        namespace[name] = value
        return value

    def __dir__() -> list[str]:
        return sorted({*namespace, *exports})

    return __getattr__, __dir__, sorted(exports)
