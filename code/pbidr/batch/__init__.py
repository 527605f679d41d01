"""``pbidr batch``: many subjects through preprocess -> train -> eval, resumable, locally or on Ray.

Modules: ``subjects`` (what the inputs are, stable ids), ``state`` (per-subject status.json and the one
completion check), ``stages`` (one subject's stages, failures caught), ``engines`` (local loop, Ray tasks),
``summary`` (summary.csv / summary.md / overview.png). The command line is :mod:`pbidr.commands.batch`;
the engines' benchmark (Ray vs local) is ``pbidr bench batch`` (:mod:`pbidr.bench.batch`).
"""
