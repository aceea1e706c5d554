"""nnlab: train, sweep and compare the classic deep-learning architectures.

From Python (nnlab/api.py):

    import nnlab
    run = nnlab.train("model=vae", "trainer.max_epochs=1")   # -> nnlab.Run
    run.metrics, run.config, run.model, run.sample(16), run.eval(dataset="mnist")
    nnlab.load("outputs/vae/fashion_mnist/<time>")            # -> nnlab.Run
    nnlab.runs("outputs")                                     # records; .to_pandas()

Importing the package is cheap (no torch): the command line answers --help and --cfg job
instantly, and the API imports torch and Lightning only when it trains or loads a model.
"""

from importlib import import_module
from importlib.metadata import PackageNotFoundError, version

try:  # one source for the version: pyproject.toml, through the installed package's metadata
    __version__ = version("nnlab")
except PackageNotFoundError:  # imported from a source tree that was never installed
    __version__ = "0+unknown"

__all__ = ["Records", "Run", "load", "runs", "train"]


def __getattr__(name: str):
    """nnlab.train and nnlab.runs are modules that are also callable (nnlab.api.CallableModule);
    nnlab.load, nnlab.Run, nnlab.Records come from nnlab.api. All imported on first use."""
    if name in ("train", "runs"):
        return import_module(f"nnlab.{name}")
    if name in ("load", "Run", "Records"):
        return getattr(import_module("nnlab.api"), name)
    raise AttributeError(f"module 'nnlab' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
