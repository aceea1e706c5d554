"""nnlab: train, sweep and compare the classic deep-learning architectures.

Importing the package is cheap (no torch): the command line answers --help and
--cfg job instantly and imports torch and Lightning only when it trains.
"""

from importlib.metadata import PackageNotFoundError, version

try:  # one source for the version: pyproject.toml, through the installed package's metadata
    __version__ = version("nnlab")
except PackageNotFoundError:  # imported from a source tree that was never installed
    __version__ = "0+unknown"
