"""nnlab: train, sweep and compare the classic deep-learning architectures.

Importing the package is cheap (no torch): the command line answers --help and
--cfg job instantly and imports torch and Lightning only when it trains.
"""

__version__ = "0.1.0"
