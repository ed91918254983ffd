"""Mutual TLS for herd links (``[herd.tls]`` in the herd file), for herds that cross hosts.

Every link, between nodes or from a client, is TLS 1.3 with a certificate on both sides, each
signed by the herd's CA. With ``check_names`` (the default) the certificate a node presents must
name the node it says it is in its HELLO (a DNS subjectAltName, or the common name), so a node's
certificate cannot be used to pose as another. Nodes are dialled by address, not by host name,
so the usual host-name check is replaced by that one. Inside TLS the link's own handshake and
sealed records run unchanged: the herd secret is still needed, and TLS adds what the secret
cannot give — a distinct identity per node, and keys a stolen secret does not open.
"""

from __future__ import annotations

import ssl

from ..config import ConfigError, TlsConfig, read_secret_file

__all__ = ["server_context", "client_context", "certificate_names", "misnamed", "make_certificates"]


def _context(purpose: int, tls: TlsConfig, node: str | None) -> ssl.SSLContext:
    ctx = ssl.SSLContext(purpose)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.verify_mode = ssl.CERT_REQUIRED
    if purpose == ssl.PROTOCOL_TLS_CLIENT:
        ctx.check_hostname = False  # dialled by address: names_in() checks the node's name instead
    cert, key = tls.cert_and_key(node)
    who = node or "clients"
    read_secret_file(key, "[herd.tls]", f"key_file of {who}", tls.allow_readable_key)  # private, readable
    try:
        ctx.load_verify_locations(cafile=tls.ca_path)
        ctx.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(
            f"[herd.tls]: cannot load the certificate {cert} and key {key} of {who} (or the CA {tls.ca_path}): {exc}"
        ) from None
    return ctx


def server_context(tls: TlsConfig, node: str) -> ssl.SSLContext:
    """What node ``node`` accepts links with: its certificate; peers must present one from the CA."""
    return _context(ssl.PROTOCOL_TLS_SERVER, tls, node)


def client_context(tls: TlsConfig, node: str | None) -> ssl.SSLContext:
    """What node ``node`` (or a client: ``None``) dials links with."""
    return _context(ssl.PROTOCOL_TLS_CLIENT, tls, node)


def certificate_names(peercert: dict | None) -> set[str]:
    """The DNS subjectAltNames and common names of a verified peer certificate (``getpeercert()``)."""
    if not peercert:
        return set()
    names = {value for kind, value in peercert.get("subjectAltName", ()) if kind == "DNS"}
    for rdn in peercert.get("subject", ()):
        names.update(value for key, value in rdn if key == "commonName")
    return names


def misnamed(transport, name: str) -> str | None:
    """Why the TLS peer on ``transport`` may not be node ``name`` (its certificate does not name
    it), or None: it may, or the transport is not TLS."""
    if transport.get_extra_info("sslcontext") is None:
        return None
    names = certificate_names(transport.get_extra_info("peercert"))
    if name in names:
        return None
    return f"{name!r}'s TLS certificate does not name it (it names {', '.join(sorted(names)) or 'nothing'})"


def make_certificates(directory, nodes, *, days: int = 365) -> dict[str, tuple]:
    """A small CA for a herd, in ``directory``: ``ca.pem`` (and ``ca.key``, to sign more later),
    and for each of ``nodes`` and for ``"client"`` a ``<name>.pem`` certificate naming it (DNS
    subjectAltName and common name) and its ``<name>.key`` (mode 0600). Returns
    ``{name: (cert_path, key_path)}`` with the CA under ``"ca"``. What ``herdrt certs`` writes;
    ``[herd.tls] cert_file = "{node}.pem"``, ``key_file = "{node}.key"`` then fit it."""
    import datetime
    import os
    from pathlib import Path

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)

    def write(name: str, cert, key) -> tuple:
        cert_path, key_path = directory / f"{name}.pem", directory / f"{name}.key"
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as out:
            out.write(
                key.private_bytes(
                    serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
                )
            )
        return cert_path, key_path

    def build(name: str, key, issuer, issuer_key, ca: bool):
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(issuer or subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        )
        if not ca:
            builder = builder.add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
            builder = builder.add_extension(
                x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                critical=False,
            )
        return builder.sign(issuer_key or key, hashes.SHA256())

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = build("herdrt herd CA", ca_key, None, None, ca=True)
    paths = {"ca": write("ca", ca_cert, ca_key)}
    for name in [*nodes, "client"]:
        key = ec.generate_private_key(ec.SECP256R1())
        paths[name] = write(name, build(name, key, ca_cert.subject, ca_key, ca=False), key)
    return paths
