"""TLS for the gateway and its clients: PEM files to gRPC credentials.

The server side reads ``gateway.tls`` (or ``prism serve --tls-*``); with a
client CA it requires every client to present a certificate that chains to it
(mutual TLS). The client side (:func:`channel_credentials`) is what
``prism.remote.connect("grpcs://...")`` uses.

Files are read when the server starts or the client connects, not when the
config is parsed, so that certificates renewed on disk are picked up by a
restart, and a missing file is reported with the setting that names it.
"""

from __future__ import annotations

import os
from pathlib import Path

import grpc

from prism.config import TlsConfig

#: A PEM file's path, or its contents as bytes.
PemSource = str | os.PathLike[str] | bytes


class TlsError(OSError):
    """A certificate or key cannot be read or is not PEM. An ``OSError``, as a
    port that cannot be bound is: the gateway cannot start, and ``prism serve``
    reports it in one line."""


def read_pem(source: PemSource, setting: str) -> bytes:
    """The PEM bytes of ``source``; ``setting`` names where it was configured."""
    if isinstance(source, bytes):
        data = source
        where = f"{setting} (given as bytes)"
    else:
        path = Path(source)
        where = f"{setting} ({path})"
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise TlsError(f"{where}: cannot read the file: {exc.strerror or exc}; check the path") from exc
    if b"-----BEGIN " not in data:
        raise TlsError(f"{where}: not a PEM file (no -----BEGIN line); give a PEM certificate or key")
    return data


def server_credentials(tls: TlsConfig) -> grpc.ServerCredentials:
    """Credentials for ``add_secure_port``; client certificates are required
    exactly when ``tls.client_ca`` is set."""
    cert = read_pem(tls.cert, "gateway.tls.cert")
    key = read_pem(tls.key, "gateway.tls.key")
    client_ca = read_pem(tls.client_ca, "gateway.tls.client_ca") if tls.client_ca is not None else None
    return grpc.ssl_server_credentials(
        [(key, cert)], root_certificates=client_ca, require_client_auth=client_ca is not None
    )


def channel_credentials(
    ca: PemSource | None = None, cert: PemSource | None = None, key: PemSource | None = None
) -> grpc.ChannelCredentials:
    """Client credentials: trust ``ca`` (else the system's roots) and, for
    mutual TLS, present ``cert`` with ``key``.

    :raises ValueError: only one of ``cert`` and ``key``.
    :raises TlsError: a file cannot be read or is not PEM.
    """
    if (cert is None) != (key is None):
        raise ValueError("a client certificate needs its key: give both cert= and key=, or neither")
    return grpc.ssl_channel_credentials(
        root_certificates=read_pem(ca, "ca") if ca is not None else None,
        private_key=read_pem(key, "key") if key is not None else None,
        certificate_chain=read_pem(cert, "cert") if cert is not None else None,
    )


__all__ = ["PemSource", "TlsError", "channel_credentials", "read_pem", "server_credentials"]
