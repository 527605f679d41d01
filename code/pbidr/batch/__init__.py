"""``pbidr batch``: many subjects through preprocess -> train -> eval, resumable, locally or on Ray.

Modules: ``subjects`` (what the inputs are, stable ids), ``state`` (per-subject status.json and the one
completion check), ``stages`` (one subject's stages, failures caught), ``engines`` (local loop, Ray tasks),
``summary`` (summary.csv / summary.md / overview.png), ``bench`` (Ray vs local). The command line is
:mod:`pbidr.commands.batch`.
"""
