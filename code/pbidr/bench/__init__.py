"""``pbidr bench``: the project's benchmarks, one verb each (``pbidr bench VERB --help``).

Verb modules (each ``add_arguments(parser)`` and ``main(args) -> int``; registered in
:mod:`pbidr.commands.bench`, which adds and resolves ``--device`` for every verb):
``suite`` (``all``: every section of BENCHMARKS.md), ``render`` (the preprocess renderer), ``quality``
(the ray/MLP detail mode over seeds and variants), ``texel`` (the texel fit over seeds, levers and the
oracle), ``batch`` (``pbidr batch``'s engines). A verb module is imported to build the command line, so
it imports the stages it runs inside ``main``.

The work they share or start: ``common`` (the machine, the one fp32 matmul probe, the machine line,
report writing), ``sections`` (the timed sections of ``all`` and ``render``), ``flops`` (FLOPs of a
training iteration), ``quality_run`` (one quality run's process), ``texel_fit`` (one texel fit's worker).
"""
