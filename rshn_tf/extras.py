"""Optional dependencies: packages that only some features need, installed with an extra of rshn-tf.

- ``hdbscan`` (extra ``hdbscan``): ``postprocessing.clustering: hdbscan`` (:mod:`rshn_tf.fast_hdbscan`);
- ``matplotlib`` (extra ``plot``): the Table 3 bar chart ``table3.png`` (:mod:`rshn_tf.table3`).

A feature checks its package before the work starts (:func:`require`, :func:`require_for_config`: a look-up with
``importlib.util.find_spec``, nothing is imported) and imports it inside :func:`importing`, which turns a failed
import into the same one-line :class:`MissingPackage` error (an :class:`~rshn_tf.errors.RshnError`, so the CLI prints
it without a traceback). This module imports only the standard library and :mod:`rshn_tf.errors`.
"""

from __future__ import annotations

import importlib.util
from contextlib import contextmanager
from typing import Any, Iterator

from rshn_tf.errors import RshnError

#: The extra of rshn-tf that installs each optional package.
EXTRAS = {"hdbscan": "hdbscan", "matplotlib": "plot"}


class MissingPackage(RshnError):
    """An optional package a requested feature needs is not installed (or cannot be imported).

    Attributes:
        package: The package's import name (a key of :data:`EXTRAS`).
    """

    def __init__(self, message: str, package: str):
        super().__init__(message)
        self.package = package


def install_hint(package: str) -> str:
    """How to install ``package``: the pip command for its extra, from an index and from a source checkout."""
    extra = EXTRAS[package]
    return f'pip install "rshn-tf[{extra}]" (in a source checkout: pip install ".[{extra}]")'


def available(package: str) -> bool:
    """Whether ``package`` can be found (not imported; a package set to None in ``sys.modules`` counts as absent)."""
    try:
        return importlib.util.find_spec(package) is not None
    except (ImportError, ValueError):
        return False


def missing(package: str, feature: str, alternative: str = "") -> MissingPackage:
    """The error for ``feature`` when ``package`` is not installed (``alternative``: another way out, if any)."""
    return MissingPackage(f"{feature} needs the '{package}' package, which is not installed; install it with "
                          f"{install_hint(package)}" + (f", or {alternative}" if alternative else ""), package)


def require(package: str, feature: str, alternative: str = "") -> None:
    """Raise :class:`MissingPackage` for ``feature`` unless ``package`` is installed."""
    if not available(package):
        raise missing(package, feature, alternative)


def needed_packages(config: Any) -> dict[str, str]:
    """The optional packages a :class:`~rshn_tf.config.Config` needs, by the key whose value needs them:
    ``{"postprocessing.clustering": "hdbscan"}`` for HDBSCAN clustering, else none."""
    return {"postprocessing.clustering": "hdbscan"} if config.postprocessing.clustering == "hdbscan" else {}


def require_for_config(config: Any, source: str = "config",
                       alternative: str = "choose postprocessing.clustering: mean_shift") -> None:
    """Check that the optional packages a :class:`~rshn_tf.config.Config` needs are installed (only
    ``postprocessing.clustering: hdbscan`` needs one).

    Args:
        config: The resolved configuration.
        source: Names the config in the message when it does not record where the key was set.
        alternative: Another way out, added to the message.

    Raises:
        MissingPackage: Naming the package and the pip command.
    """
    for key, package in needed_packages(config).items():
        section, name = key.split(".")
        where = getattr(config, "sources", {}).get(key, source)
        require(package, f"{where}: {key}: {getattr(getattr(config, section), name)}", alternative)


@contextmanager
def importing(package: str, feature: str) -> Iterator[None]:
    """Import (parts of) ``package`` in the block; a failed import raises :class:`MissingPackage` instead.

    A package that is installed but fails to import (e.g. built for another NumPy) is reported as such, with the
    library's own message.
    """
    try:
        yield
    except ImportError as exc:
        if not available(package):
            raise missing(package, feature) from None
        raise MissingPackage(f"{feature} needs the '{package}' package, which is installed but cannot be imported "
                             f"({exc}); reinstall it: pip install --force-reinstall {package}", package) from exc
