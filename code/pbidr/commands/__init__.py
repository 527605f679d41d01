"""The ``pbidr`` command line: every argparse parser of the package lives here.

Modules: ``args`` (argument types and the one-line-error parser).
"""
