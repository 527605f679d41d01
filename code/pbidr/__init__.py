"""PBIDR-py: facial geometric detail recovery via an implicit representation (Ren et al., FG 2023).

The Python API (:mod:`pbidr.api`): ``pbidr.recover(mesh, out)`` runs preprocess, the fit and eval and
returns a :class:`~pbidr.api.Result`; ``pbidr.load_result(path)`` reads a finished run;
``pbidr.score(mesh, sample)`` scores a mesh against the built-in sample's truth. Every input problem
raises :class:`PbidrError` (one line). The API's names load on first use, so that ``import pbidr``
(and ``pbidr --help``) does not import torch.
"""

from pbidr.errors import PbidrError
from pbidr.version import __version__

_API = ("recover", "load_result", "score", "make_sample", "Result", "ResultPaths", "EvalMetrics", "Score",
        "FittedLight", "ProgressEvent")

__all__ = ["__version__", "PbidrError", *_API]


def __getattr__(name: str):
    if name in _API:
        from pbidr import api

        return getattr(api, name)
    raise AttributeError(f"module 'pbidr' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_API))
