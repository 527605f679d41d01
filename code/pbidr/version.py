"""The package's version, in a module of its own: every layer may import it, while ``pbidr/__init__``
(the public Python API's facade) sits above them all."""

__version__ = "0.1.0"
