"""The dmp-node daemon (layer: apps): configuration, composition root, CLI.

``config`` turns DMP_* variables and CLI flags into a :class:`NodeConfig`;
``service`` builds the node from it (the only place concrete adapters are
chosen) and runs it; ``cli`` is the ``dmp-node`` console script.
"""
