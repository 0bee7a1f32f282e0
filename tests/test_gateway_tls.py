"""The gateway over TLS and mutual TLS, with a throwaway CA made per module.

Each test proves a refusal and an acceptance against the same server, so a
test that passes cannot be one where TLS was simply never on."""

from __future__ import annotations

import argparse
import datetime
import ipaddress
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

import prism
import prism.remote
from prism.config import TlsConfig
from prism.gateway.command import _tls_override, add_serve_parser
from prism.gateway.testing import GatewayThread
from prism.gateway.tls import TlsError

CONFIG: dict[str, Any] = {
    "backends": {"mem": {"plugin": "memory"}},
    "namespaces": {"users": {"abstraction": "keyvalue"}},
}


@attrs.frozen
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    other_ca: Path
    """A CA that signed nothing here: trusting it must not let a client in."""


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> Path:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return path


def _write_cert(path: Path, cert: x509.Certificate) -> Path:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path


def _ca(name: str) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = _key()
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )
    return cert, key


def _leaf(
    ca: tuple[x509.Certificate, ec.EllipticCurvePrivateKey], name: str, *, server: bool
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = _key()
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(ca[0].subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
    )
    if server:
        builder = builder.add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
    return builder.sign(ca[1], hashes.SHA256()), key


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    folder = tmp_path_factory.mktemp("pki")
    ca = _ca("prism test CA")
    server = _leaf(ca, "prism gateway", server=True)
    client = _leaf(ca, "billing-service", server=False)
    other = _ca("some other CA")
    return Pki(
        ca=_write_cert(folder / "ca.pem", ca[0]),
        server_cert=_write_cert(folder / "server.pem", server[0]),
        server_key=_write_key(folder / "server-key.pem", server[1]),
        client_cert=_write_cert(folder / "client.pem", client[0]),
        client_key=_write_key(folder / "client-key.pem", client[1]),
        other_ca=_write_cert(folder / "other-ca.pem", other[0]),
    )


@pytest.fixture(scope="module")
def tls_gateway(pki: Pki) -> Iterator[GatewayThread]:
    with GatewayThread(CONFIG, tls=TlsConfig(cert=pki.server_cert, key=pki.server_key)) as running:
        yield running


@pytest.fixture(scope="module")
def mtls_gateway(pki: Pki) -> Iterator[GatewayThread]:
    tls = TlsConfig(cert=pki.server_cert, key=pki.server_key, client_ca=pki.ca)
    with GatewayThread(CONFIG, tls=tls) as running:
        yield running


def _round_trip(db: prism.remote.RemotePrism, record: str) -> None:
    users = db.keyvalue("users")
    users.put_items(record, {b"k": b"v"})
    assert users.get_items(record).as_dict() == {b"k": b"v"}


def test_tls_round_trip(tls_gateway: GatewayThread, pki: Pki) -> None:
    assert tls_gateway.target.startswith("grpcs://127.0.0.1:")
    with prism.remote.connect(tls_gateway.target, ca=pki.ca, timeout=10) as db:
        _round_trip(db, "tls-1")
    # The CA may also be given as PEM bytes.
    with prism.remote.connect(tls_gateway.target, ca=pki.ca.read_bytes(), timeout=10) as db:
        assert db.keyvalue("users").get_items("tls-1").as_dict() == {b"k": b"v"}


def test_a_plaintext_client_cannot_talk_to_a_tls_server(tls_gateway: GatewayThread) -> None:
    plain = tls_gateway.target.replace("grpcs://", "grpc://")
    retry = prism.remote.RetryPolicy(attempts=1)
    with prism.remote.connect(plain, timeout=5, retry=retry) as db, pytest.raises(prism.remote.Unavailable):
        db.keyvalue("users").get_items("tls-1")
    with grpc.insecure_channel(tls_gateway.address) as channel, pytest.raises(grpc.FutureTimeoutError):
        grpc.channel_ready_future(channel).result(timeout=2)


def test_a_client_that_does_not_trust_the_server_ca_is_refused(tls_gateway: GatewayThread, pki: Pki) -> None:
    retry = prism.remote.RetryPolicy(attempts=1)
    with (
        prism.remote.connect(tls_gateway.target, ca=pki.other_ca, timeout=5, retry=retry) as db,
        pytest.raises(prism.remote.Unavailable),
    ):
        db.keyvalue("users").get_items("tls-1")


def test_mutual_tls_refuses_a_client_without_a_certificate(mtls_gateway: GatewayThread, pki: Pki) -> None:
    retry = prism.remote.RetryPolicy(attempts=1)
    with (
        prism.remote.connect(mtls_gateway.target, ca=pki.ca, timeout=5, retry=retry) as db,
        pytest.raises(prism.remote.Unavailable),
    ):
        db.keyvalue("users").get_items("mtls-1")
    # The same server accepts a client that presents a certificate from its CA.
    with prism.remote.connect(
        mtls_gateway.target, ca=pki.ca, cert=pki.client_cert, key=pki.client_key, timeout=10
    ) as db:
        _round_trip(db, "mtls-1")


def test_mutual_tls_refuses_a_certificate_from_another_ca(
    mtls_gateway: GatewayThread, pki: Pki, tmp_path: Path
) -> None:
    stranger_ca = _ca("stranger CA")
    stranger = _leaf(stranger_ca, "stranger", server=False)
    cert = _write_cert(tmp_path / "stranger.pem", stranger[0])
    key = _write_key(tmp_path / "stranger-key.pem", stranger[1])
    retry = prism.remote.RetryPolicy(attempts=1)
    with (
        prism.remote.connect(
            mtls_gateway.target, ca=pki.ca, cert=cert, key=key, timeout=5, retry=retry
        ) as db,
        pytest.raises(prism.remote.Unavailable),
    ):
        db.keyvalue("users").get_items("mtls-2")


def test_tls_from_the_config_file_with_paths_relative_to_it(pki: Pki, tmp_path: Path) -> None:
    folder = tmp_path / "etc"
    folder.mkdir()
    for source in (pki.server_cert, pki.server_key, pki.ca):
        (folder / source.name).write_bytes(source.read_bytes())
    config_file = folder / "prism.yaml"
    config_file.write_text(
        "backends: {mem: {plugin: memory}}\n"
        "namespaces: {users: {abstraction: keyvalue}}\n"
        "gateway:\n"
        "  tls: {cert: server.pem, key: server-key.pem, client_ca: ca.pem}\n"
    )
    with GatewayThread(str(config_file)) as gateway:
        assert gateway.gateway is not None
        assert gateway.gateway.tls is not None
        assert gateway.gateway.tls.client_ca == folder / "ca.pem"
        with prism.remote.connect(
            gateway.target, ca=pki.ca, cert=pki.client_cert, key=pki.client_key, timeout=10
        ) as db:
            _round_trip(db, "cfg-1")


def test_client_tls_settings_are_checked_at_connect(pki: Pki, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"grpcs://127\.0\.0\.1:1 to use them"):
        prism.remote.connect_async("grpc://127.0.0.1:1", ca=pki.ca)
    with pytest.raises(ValueError, match="give both cert= and key="):
        prism.remote.connect_async("grpcs://127.0.0.1:1", cert=pki.client_cert)
    with pytest.raises(TlsError, match=r"^ca \(.*missing\.pem\): cannot read the file"):
        prism.remote.connect_async("grpcs://127.0.0.1:1", ca=tmp_path / "missing.pem")
    not_pem = tmp_path / "not.pem"
    not_pem.write_text("hello")
    with pytest.raises(TlsError, match="not a PEM file"):
        prism.remote.connect_async("grpcs://127.0.0.1:1", ca=not_pem)


def test_a_missing_server_certificate_names_the_setting(tmp_path: Path, pki: Pki) -> None:
    tls = TlsConfig(cert=tmp_path / "nope.pem", key=pki.server_key)
    with pytest.raises(OSError, match=r"gateway\.tls\.cert \(.*nope\.pem\): cannot read the file"):
        GatewayThread(CONFIG, tls=tls).start()


def test_serve_tls_flags(tmp_path: Path) -> None:
    parser = argparse.ArgumentParser(prog="prism")
    add_serve_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["serve"])
    assert _tls_override(args) is None
    args = parser.parse_args(
        ["serve", "--tls-cert", "s.pem", "--tls-key", "k.pem", "--tls-client-ca", "ca.pem"]
    )
    tls = _tls_override(args)
    assert tls is not None
    assert (tls.cert, tls.key, tls.client_ca) == (
        Path("s.pem").absolute(),
        Path("k.pem").absolute(),
        Path("ca.pem").absolute(),
    )
    with pytest.raises(ValueError, match="--tls-cert and --tls-key go together"):
        _tls_override(parser.parse_args(["serve", "--tls-cert", "s.pem"]))
    with pytest.raises(ValueError, match="--tls-client-ca needs --tls-cert and --tls-key"):
        _tls_override(parser.parse_args(["serve", "--tls-client-ca", "ca.pem"]))
