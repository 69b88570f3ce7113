"""convdeploy: fold, export, verify and time CNNs built with five research convolutions."""

__version__ = "0.1.0"
