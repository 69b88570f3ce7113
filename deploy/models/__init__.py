"""The model zoo: ``build_model(arch, conv, ...)`` and what it knows about each arch (``deploy.models.zoo``)."""

from deploy.models.zoo import archs, build_model, supported_convs

__all__ = ["archs", "build_model", "supported_convs"]
