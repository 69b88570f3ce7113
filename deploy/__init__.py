"""convdeploy: fold, export, verify and time CNNs built with five research convolutions."""

from deploy.version import __version__

__all__ = ["__version__"]
