"""A private certificate authority for benchmarks and tests that run ``wss://``.

``PrivateAuthority(directory)`` makes (with trustme) a CA and a certificate
for ``127.0.0.1`` and ``localhost`` (or the ``names`` given) signed by it, and writes two PEM files:
``server_pem`` (the chain and its key, for a far end's ``--tls-cert``) and
``ca_pem`` (what a client trusts: a websocket channel's option ``ca_file``).
``client_context()`` is a client context that trusts the CA and nothing else.
"""

from __future__ import annotations

import ssl
from pathlib import Path

import trustme

__all__ = ["PrivateAuthority"]


class PrivateAuthority:
    """A CA and one server certificate for the loopback names, as PEM files in ``directory``."""

    def __init__(
        self, directory: Path, names: tuple[str, ...] = ("127.0.0.1", "localhost")
    ) -> None:
        self._ca = trustme.CA()
        issued = self._ca.issue_cert(*names)
        self.server_pem = directory / "far-end.pem"
        self.ca_pem = directory / "ca.pem"
        issued.private_key_and_cert_chain_pem.write_to_path(str(self.server_pem))
        self._ca.cert_pem.write_to_path(str(self.ca_pem))

    def client_context(self) -> ssl.SSLContext:
        """A client context that trusts this CA only (hostnames checked)."""
        return ssl.create_default_context(cafile=str(self.ca_pem))
