"""The commands of ``anomalens`` (assembled by ``anomalens.cli``): for each, ``add_<command>_arguments(parser)``
and the function that runs it.

Building the parser imports these modules and nothing heavy: ``anomalens list``, ``anomalens params`` and
every ``--help`` run without torch or numpy. A command imports what it uses when it runs (the workflow, the
exporter, the service), so that a prediction with an exported model does not import torch either.
"""
