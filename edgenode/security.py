"""Cluster membership credentials: a cluster CA, member certificates, and call tokens.

`edgenode keygen` creates a cluster: a CA (``ca.pem``: its key and certificate; keep it
off the devices) and a member credential (``cluster.pem``: a private key, its
certificate signed by the CA, and the CA certificate), which every device of the
cluster gets. ``--ca`` issues more member credentials from the same CA (one per
device, or short-lived ones).

How it is used (edgenode/transport/_security.py):

- Every gRPC connection is TLS. A node's server presents its member certificate; a
  caller accepts only a server whose certificate the cluster CA signed, so it never
  sends anything to an outsider.
- Every call carries a token in its metadata: the caller's member certificate, a
  timestamp and an ECDSA signature of both, made with the member's private key. The
  server checks that the CA signed the certificate, that it is valid now, that the
  signature verifies and that the timestamp is recent, and refuses the call
  otherwise: UNAUTHENTICATED without a token, PERMISSION_DENIED with a token that
  does not prove membership. Tokens travel only inside TLS, so they cannot be
  observed and replayed from the network.

No secret is ever sent: certificates are public, private keys never leave the file.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from edgenode.errors import ConfigError, PermissionDenied, Unauthenticated

__all__ = [
    "MEMBER_NAME",
    "TOKEN_HEADER",
    "Credentials",
    "TokenSigner",
    "TokenVerifier",
    "issue_member",
    "load_credentials",
    "new_cluster",
]

MEMBER_NAME = "edgenode-member"  # DNS name in every member certificate; the TLS target name
TOKEN_HEADER = "edgenode-auth"  # call metadata key
TOKEN_VERSION = "v1"
TOKEN_MAX_AGE_S = 300.0  # a token older (or newer: clock skew) than this is refused
TOKEN_REFRESH_S = 60.0  # a caller signs a new token this often
DEFAULT_DAYS = 3650
_CACHE_SIZE = 1024
_PRIVATE_MODE = 0o600  # key files: read and write by their owner only


@dataclass(frozen=True, slots=True, kw_only=True)
class Credentials:
    """A member credential: private key, certificate and the cluster CA, all PEM."""

    key_pem: bytes
    cert_pem: bytes
    ca_pem: bytes
    cluster: str
    member: str
    not_after: dt.datetime

    def bundle(self) -> bytes:
        """The credential as one PEM file (key, certificate, CA certificate)."""
        return self.key_pem + self.cert_pem + self.ca_pem


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _name(cluster: str, common: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, cluster),
            x509.NameAttribute(NameOID.COMMON_NAME, common),
        ]
    )


_CA_USAGE = x509.KeyUsage(
    digital_signature=False,
    content_commitment=False,
    key_encipherment=False,
    data_encipherment=False,
    key_agreement=False,
    key_cert_sign=True,
    crl_sign=True,
    encipher_only=False,
    decipher_only=False,
)


def new_cluster(
    cluster: str, *, days: int = DEFAULT_DAYS, now: dt.datetime | None = None
) -> tuple[bytes, Credentials]:
    """A new cluster CA (PEM: key and certificate) and a first member credential."""
    start = now or _now()
    key = ec.generate_private_key(ec.SECP256R1())
    name = _name(cluster, f"edgenode cluster CA {cluster}")
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start - dt.timedelta(minutes=5))
        .not_valid_after(start + dt.timedelta(days=max(days, 1)))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_CA_USAGE, critical=True)
        .sign(key, hashes.SHA256())
    )
    ca = _key_pem(key) + _cert_pem(cert)
    return ca, issue_member(ca, days=days, now=start)


def issue_member(
    ca_bundle: bytes,
    *,
    days: int = DEFAULT_DAYS,
    member: str = "member",
    now: dt.datetime | None = None,
) -> Credentials:
    """A member credential signed by the CA in ``ca_bundle`` (valid ``days`` from ``now``;
    a negative number gives an expired one, for tests); ConfigError when ``ca_bundle`` is
    not a CA valid at ``now``."""
    start = now or _now()
    ca_key, ca_cert = _read_ca(ca_bundle, start)
    cluster = _cluster_of(ca_cert)
    key = ec.generate_private_key(ec.SECP256R1())
    end = start + dt.timedelta(days=days)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(cluster, member))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(min(start, end) - dt.timedelta(minutes=5))
        .not_valid_after(end)
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(MEMBER_NAME)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    return Credentials(
        key_pem=_key_pem(key),
        cert_pem=_cert_pem(cert),
        ca_pem=_cert_pem(ca_cert),
        cluster=cluster,
        member=member,
        not_after=end,
    )


def _cluster_of(cert: x509.Certificate) -> str:
    names = cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)
    return str(names[0].value) if names else ""


def _read_ca(
    bundle: bytes, now: dt.datetime
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """The key and certificate of a cluster CA valid at ``now``; ConfigError saying why
    ``bundle`` is not one."""
    if b"PRIVATE KEY-----" not in bundle:
        raise ConfigError(
            "not a cluster CA: no private key in it (use the ca.pem written by edgenode keygen)"
        )
    try:
        key = serialization.load_pem_private_key(bundle, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise ConfigError(
            "not a cluster CA: its private key is unreadable (encrypted, damaged or unknown type)"
        ) from None
    try:
        cert = x509.load_pem_x509_certificate(bundle)
    except ValueError:
        raise ConfigError("not a cluster CA: no readable certificate in it") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ConfigError("the CA key is not an EC key made by edgenode keygen")
    try:
        is_ca = cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        is_ca = False
    if not is_ca:
        raise ConfigError(
            "not a cluster CA: its certificate has no basicConstraints CA=true (a member "
            "credential such as cluster.pem cannot issue others)"
        )
    try:
        signs = cert.extensions.get_extension_for_class(x509.KeyUsage).value.key_cert_sign
    except x509.ExtensionNotFound:
        signs = True  # no KeyUsage extension: no restriction
    if not signs:
        raise ConfigError("not a cluster CA: its key usage does not allow signing certificates")
    if _public_der(key.public_key()) != _public_der(cert.public_key()):
        raise ConfigError("not a cluster CA: the private key does not belong to its certificate")
    if cert.not_valid_after_utc < now:
        raise ConfigError(f"the CA expired on {cert.not_valid_after_utc:%Y-%m-%d}")
    if now < cert.not_valid_before_utc:
        raise ConfigError(
            f"the CA is not valid before {cert.not_valid_before_utc:%Y-%m-%d %H:%M} UTC "
            "(check the clock)"
        )
    return key, cert


def _public_der(key: PublicKeyTypes) -> bytes:
    return key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def write_private(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` readable by its owner only, atomically (OSError on failure)."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    partial = f".{path.name}.partial"
    # Every step is relative to one open directory, so a directory swapped underneath
    # cannot redirect a later step.
    directory = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        # A stale temporary may have a wide mode or be a symlink planted by someone else:
        # unlink removes the link itself, and O_EXCL | O_NOFOLLOW refuse anything that
        # reappears at that name instead of opening it.
        with contextlib.suppress(FileNotFoundError):
            os.unlink(partial, dir_fd=directory)
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(partial, flags, _PRIVATE_MODE, dir_fd=directory)
        try:
            with os.fdopen(fd, "wb") as out:
                os.fchmod(out.fileno(), _PRIVATE_MODE)  # exactly 0600, whatever the umask
                out.write(data)
                out.flush()
                os.fsync(out.fileno())  # the bytes are on disk before the name points at them
            os.replace(partial, path.name, src_dir_fd=directory, dst_dir_fd=directory)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(partial, dir_fd=directory)
            raise
        os.fsync(directory)  # the rename itself survives a power cut
    finally:
        os.close(directory)


def load_credentials(path: Path, *, now: dt.datetime | None = None) -> Credentials:
    """Read and check a member credential file; ConfigError naming what is wrong."""
    where = f"security.key: {path}"
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{where}: {exc.strerror or exc}") from None
    blocks = [
        b"-----BEGIN" + part for part in data.split(b"-----BEGIN")[1:]
    ]  # key, member certificate, CA certificate
    keys = [b for b in blocks if b"PRIVATE KEY" in b.split(b"\n", 1)[0]]
    certs = [b for b in blocks if b.startswith(b"-----BEGIN CERTIFICATE")]
    if len(keys) != 1 or len(certs) != 2:
        raise ConfigError(
            f"{where}: expected a private key and two certificates (member, CA), as written "
            "by `edgenode keygen`"
        )
    try:
        key = serialization.load_pem_private_key(keys[0], password=None)
        cert = x509.load_pem_x509_certificate(certs[0])
        ca = x509.load_pem_x509_certificate(certs[1])
    except ValueError as exc:
        raise ConfigError(f"{where}: unreadable: {exc}") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ConfigError(f"{where}: the key is not an EC key made by edgenode keygen")
    if key.public_key().public_numbers() != cert.public_key().public_numbers():  # type: ignore[union-attr]
        raise ConfigError(f"{where}: the private key does not belong to the certificate")
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        raise ConfigError(f"{where}: the certificate is not signed by the CA in the file") from None
    moment = now or _now()
    if cert.not_valid_after_utc < moment:
        raise ConfigError(f"{where}: the credential expired on {cert.not_valid_after_utc:%Y-%m-%d}")
    member = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return Credentials(
        key_pem=keys[0],
        cert_pem=certs[0],
        ca_pem=certs[1],
        cluster=_cluster_of(ca),
        member=str(member[0].value) if member else "",
        not_after=cert.not_valid_after_utc,
    )


class TokenSigner:
    """Makes the call token of a member credential, renewed every TOKEN_REFRESH_S."""

    def __init__(self, credentials: Credentials, *, clock: Callable[[], float] = time.time) -> None:
        key = serialization.load_pem_private_key(credentials.key_pem, password=None)
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        self._key = key
        cert = x509.load_pem_x509_certificate(credentials.cert_pem)
        self._cert = base64.urlsafe_b64encode(cert.public_bytes(serialization.Encoding.DER))
        self._clock = clock
        self._lock = threading.Lock()  # grpc may call the metadata plugin from its threads
        self._token = ""
        self._made = -1e18

    def token(self) -> str:
        """The current token."""
        now = self._clock()
        with self._lock:
            if now - self._made >= TOKEN_REFRESH_S:
                stamp = str(int(now))
                signature = self._key.sign(_signed(stamp), ec.ECDSA(hashes.SHA256()))
                self._token = ".".join(
                    [TOKEN_VERSION, self._cert.decode(), stamp,
                     base64.urlsafe_b64encode(signature).decode()]
                )  # fmt: skip
                self._made = now
            return self._token


def _signed(stamp: str) -> bytes:
    return f"edgenode-auth-{TOKEN_VERSION}|{stamp}".encode()


class TokenVerifier:
    """Checks call tokens against the cluster CA; remembers tokens already verified."""

    def __init__(self, ca_pem: bytes, *, clock: Callable[[], float] = time.time) -> None:
        self._ca = x509.load_pem_x509_certificate(ca_pem)
        self._clock = clock
        self._verified: OrderedDict[str, tuple[str, float]] = OrderedDict()  # -> member, until
        self._lock = threading.Lock()

    def check(self, token: str | None) -> str:
        """The member name a valid token proves; Unauthenticated without a token,
        PermissionDenied when it does not prove membership of this cluster now."""
        if not token:
            raise Unauthenticated("no cluster credential: this node serves cluster members only")
        now = self._clock()
        with self._lock:
            known = self._verified.get(token)
            if known is not None and now < known[1]:
                return known[0]
        member, until = self._verify(token, now)
        with self._lock:
            self._verified[token] = (member, until)
            if len(self._verified) > _CACHE_SIZE:
                self._verified.popitem(last=False)
        return member

    def _verify(self, token: str, now: float) -> tuple[str, float]:
        parts = token.split(".")
        if len(parts) != 4 or parts[0] != TOKEN_VERSION:
            raise PermissionDenied("malformed cluster credential")
        _, cert_b64, stamp, sig_b64 = parts
        try:
            cert = x509.load_der_x509_certificate(base64.urlsafe_b64decode(cert_b64))
            signature = base64.urlsafe_b64decode(sig_b64)
            made = int(stamp)
        except ValueError:
            raise PermissionDenied("malformed cluster credential") from None
        try:
            cert.verify_directly_issued_by(self._ca)
        except (ValueError, TypeError, InvalidSignature):
            raise PermissionDenied("credential of another cluster (not signed by its CA)") from None
        moment = dt.datetime.fromtimestamp(now, dt.UTC)
        if not cert.not_valid_before_utc <= moment <= cert.not_valid_after_utc:
            raise PermissionDenied(
                f"credential not valid now (valid until {cert.not_valid_after_utc:%Y-%m-%d})"
            )
        if abs(now - made) > TOKEN_MAX_AGE_S:
            raise PermissionDenied("stale credential token (check the clocks)")
        public = cert.public_key()
        if not isinstance(public, ec.EllipticCurvePublicKey):
            raise PermissionDenied("credential with an unsupported key type")
        try:
            public.verify(signature, _signed(stamp), ec.ECDSA(hashes.SHA256()))
        except InvalidSignature:
            raise PermissionDenied("credential token with a bad signature") from None
        names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        until = min(made + TOKEN_MAX_AGE_S, cert.not_valid_after_utc.timestamp())
        return (str(names[0].value) if names else "?"), until
