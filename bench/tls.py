"""A private certificate authority for benchmarks and tests that run ``wss://``.

``PrivateAuthority(directory)`` makes (with trustme) a CA and a certificate
for ``127.0.0.1`` and ``localhost`` (or the ``names`` given) signed by it, and writes two PEM files:
``server_pem`` (the chain and its key, for a far end's ``--tls-cert``) and
``ca_pem`` (what a client trusts: a websocket channel's option ``ca_file``).
``client_context()`` is a client context that trusts the CA and nothing else.

:func:`add_arguments` gives a benchmark's command line ``--tls`` (a far end
of its own, with a CA of its own) and ``--ca-file`` (for a given ``wss://``
far end).
"""

from __future__ import annotations

import argparse
import ssl
from pathlib import Path

__all__ = ["PrivateAuthority", "add_arguments"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``--tls`` and ``--ca-file``, as ``bench.send_cost`` and ``bench.connect_cost`` take them."""
    parser.add_argument(
        "--tls",
        action="store_true",
        help="websocket: the far end serves wss:// with a certificate of a private CA, "
        "which the node's channels (option ca_file) and the bare client trust",
    )
    parser.add_argument(
        "--ca-file",
        metavar="PEM",
        help="the CAs a wss:// --far-end's certificate chains to (default: the system's)",
    )


class PrivateAuthority:
    """A CA and one server certificate for the loopback names, as PEM files in ``directory``."""

    def __init__(
        self, directory: Path, names: tuple[str, ...] = ("127.0.0.1", "localhost")
    ) -> None:
        import trustme  # (a benchmark's dependency, only when it runs TLS)

        ca = trustme.CA()
        issued = ca.issue_cert(*names)
        self.server_pem = directory / "far-end.pem"
        self.ca_pem = directory / "ca.pem"
        issued.private_key_and_cert_chain_pem.write_to_path(str(self.server_pem))
        ca.cert_pem.write_to_path(str(self.ca_pem))

    def client_context(self) -> ssl.SSLContext:
        """A client context that trusts this CA only (hostnames checked)."""
        return ssl.create_default_context(cafile=str(self.ca_pem))
