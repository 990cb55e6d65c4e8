"""The node: configuration, lifecycle, storage, cluster, admin and ops surfaces.

So far it holds the ``switchboard`` command line (:mod:`runtime.cli`); the
node itself arrives with the node issue.
"""

__all__: list[str] = []
