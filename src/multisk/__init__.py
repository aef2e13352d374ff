"""multisk: structure-preserving multi-modal learning with Multi-Assignment Sinkhorn-Knopp."""

__version__ = "0.1.0"
