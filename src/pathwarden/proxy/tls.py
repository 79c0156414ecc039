"""TLS contexts for both legs, and the self-signed certificate of the embedded default.

The client leg uses a configured certificate, or one generated on first start
in ``<data_dir>/tls/`` (a self-signed ECDSA P-256 certificate for localhost and
the loopback addresses, valid for a year, regenerated when it expires). The
upstream leg follows libpq's ``sslmode`` meanings.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import logging
import os
import ssl
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

log = logging.getLogger(__name__)


def ensure_self_signed(data_dir: Path, hostnames: list[str] | None = None) -> tuple[Path, Path]:
    """Return (cert, key) paths in ``data_dir/tls``, creating them when missing or expiring."""
    tls_dir = data_dir / "tls"
    cert_path = tls_dir / "gateway.crt"
    key_path = tls_dir / "gateway.key"
    if cert_path.exists() and key_path.exists():
        try:
            cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
            remaining = cert.not_valid_after_utc - dt.datetime.now(dt.UTC)
            if remaining > dt.timedelta(days=7):
                return cert_path, key_path
        except ValueError:
            log.warning("unreadable certificate %s; generating a new one", cert_path)
    tls_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    names = hostnames or ["localhost"]
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"pathwarden {names[0]}")])
    now = dt.datetime.now(dt.UTC)
    san: list[x509.GeneralName] = [x509.DNSName(n) for n in names]
    san += [x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
            x509.IPAddress(ipaddress.ip_address("::1"))]
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=365))
        .add_extension(x509.SubjectAlternativeName(san), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    tmp_key = key_path.with_suffix(".key.tmp")
    fd = os.open(tmp_key, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM,
                                  serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()))
    tmp_cert = cert_path.with_suffix(".crt.tmp")
    tmp_cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    os.replace(tmp_key, key_path)
    os.replace(tmp_cert, cert_path)
    log.info("generated self-signed TLS certificate %s", cert_path)
    return cert_path, key_path


def server_context(cert_file: Path, key_file: Path) -> ssl.SSLContext:
    """TLS context for the client leg (TLS 1.2+)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(str(cert_file), str(key_file))
    return ctx


def upstream_context(sslmode: str, rootcert: Path | None) -> ssl.SSLContext | None:
    """TLS context for the upstream leg per libpq ``sslmode``; None for ``disable``."""
    if sslmode == "disable":
        return None
    if sslmode in ("verify-ca", "verify-full"):
        ctx = ssl.create_default_context(cafile=str(rootcert) if rootcert else None)
        ctx.check_hostname = sslmode == "verify-full"
        ctx.verify_mode = ssl.CERT_REQUIRED
    else:
        # prefer/require encrypt without verifying, exactly as libpq does.
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx
