"""The ``pbidr`` command line: every argparse parser of the package lives here.

Modules: ``main`` (the top-level parser and the dispatch; the ``pbidr`` console script and
``python -m pbidr.commands``), ``args`` (argument types and the one-line-error parser), ``rig`` (the
view-rig arguments of preprocess and batch), ``conf`` (``--conf`` / ``--preset`` and the train
overrides of train and batch), and one module per subcommand: ``sample``, ``preprocess``, ``train``,
``eval``, ``score``, ``photo``, ``batch``, ``bench``. Each subcommand module registers its parser
(``add_*_parser``) and holds its handler (``cmd_*``); the work itself lives in the stage's package.
"""
