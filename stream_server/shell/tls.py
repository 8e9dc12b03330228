"""HTTPS for `deepfake-serve`: the certificate and key uvicorn serves (its own TLS), either given
(`--tls-cert/--tls-key`) or a self-signed one made once and kept under `--data-dir`
(`--tls-self-signed`). Browsers only give a page the webcam in a secure context: https, or
http://localhost, so a page opened from another machine needs one of these."""

from __future__ import annotations

import datetime as dt
import hashlib
import ipaddress
import logging
import os
import socket
import ssl
from dataclasses import dataclass
from pathlib import Path

from stream_server.shell.setting_fields import SettingsError
from stream_server.shell.settings import Settings, default_data_dir

log = logging.getLogger(__name__)

CERT_NAME = "self-signed-cert.pem"
KEY_NAME = "self-signed-key.pem"
VALID_DAYS = 825
RENEW_DAYS = 30  # a kept certificate this close to expiry is made again


@dataclass(frozen=True)
class TlsFiles:
    cert: Path
    key: Path
    fingerprint: str  # SHA-256 of the (first) certificate, colon-separated hex
    self_signed: bool


def data_dir(settings: Settings) -> Path:
    return Path(settings.data_dir) if settings.data_dir is not None else default_data_dir()


def fingerprint(cert: Path) -> str:
    """SHA-256 fingerprint of the first certificate in a PEM file, as browsers show it."""
    pem = cert.read_text(encoding="ascii", errors="replace")
    start = pem.find("-----BEGIN CERTIFICATE-----")
    end = pem.find("-----END CERTIFICATE-----", start)
    if start < 0 or end < 0:
        raise SettingsError(f"TLS certificate {cert} holds no PEM certificate")
    der = ssl.PEM_cert_to_DER_cert(pem[start : end + len("-----END CERTIFICATE-----")] + "\n")
    digest = hashlib.sha256(der).hexdigest().upper()
    return ":".join(digest[i : i + 2] for i in range(0, len(digest), 2))


def tls_files(settings: Settings) -> TlsFiles | None:
    """The certificate and key to serve, or None for plain http. Raises SettingsError with a
    one-line reason (flags that do not go together, files that do not load)."""
    cert, key = settings.tls_cert, settings.tls_key
    if cert is None and key is None and not settings.tls_self_signed:
        return None
    if settings.tls_self_signed and (cert is not None or key is not None):
        raise SettingsError("--tls-self-signed and --tls-cert/--tls-key exclude each other")
    if settings.tls_self_signed:
        cert, key = ensure_self_signed(data_dir(settings), settings.host)
    if cert is None or key is None:
        raise SettingsError("--tls-cert and --tls-key go together")
    try:
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(cert, key)
    except (ssl.SSLError, OSError) as exc:
        raise SettingsError(
            f"TLS certificate {cert} and key {key} do not load together: {exc}"
        ) from None
    return TlsFiles(Path(cert), Path(key), fingerprint(Path(cert)), settings.tls_self_signed)


def _interface_addresses() -> list[str]:
    try:
        import ifaddr  # aioice's dependency
    except ImportError:
        return []
    out: list[str] = []
    for adapter in ifaddr.get_adapters():
        for ip in adapter.ips:
            addr = ip.ip if isinstance(ip.ip, str) else ip.ip[0]
            if not ipaddress.ip_address(addr.split("%")[0]).is_link_local:
                out.append(addr.split("%")[0])
    return out


def certificate_names(host: str, interfaces: bool = True) -> tuple[set[str], set[str]]:
    """(DNS names, IP addresses) the self-signed certificate names: localhost, this host's
    name, loopback, the listen address, and (listening on all addresses) every interface
    address when `interfaces`."""
    dns = {"localhost"}
    for name in (socket.gethostname(), socket.getfqdn()):
        if name and not _is_ip(name):
            dns.add(name.lower())
    ips = {"127.0.0.1", "::1"}
    if _is_ip(host):
        if ipaddress.ip_address(host).is_unspecified:
            if interfaces:
                ips.update(_interface_addresses())
        else:
            ips.add(host)
    elif host:
        dns.add(host.lower())
    return dns, ips


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _covers(cert_path: Path, dns: set[str], ips: set[str]) -> bool:
    """Whether a kept certificate still names `dns` and `ips` and is far from expiry."""
    from cryptography import x509

    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (ValueError, OSError, x509.ExtensionNotFound):
        return False
    have_dns = {n.lower() for n in san.get_values_for_type(x509.DNSName)}
    have_ips = {str(a) for a in san.get_values_for_type(x509.IPAddress)}
    left = cert.not_valid_after_utc - dt.datetime.now(dt.UTC)
    return dns <= have_dns and ips <= have_ips and left > dt.timedelta(days=RENEW_DAYS)


def ensure_self_signed(directory: Path, host: str) -> tuple[Path, Path]:
    """The kept self-signed certificate and key under `directory/tls/`, made when missing,
    unreadable, near expiry, or no longer naming the host name or listen address (interface
    addresses are added when made but not demanded later, so a DHCP change keeps it)."""
    try:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
    except ImportError:
        raise SettingsError(
            "--tls-self-signed needs the cryptography package (pip install cryptography)"
        ) from None
    tls_dir = directory / "tls"
    cert_path, key_path = tls_dir / CERT_NAME, tls_dir / KEY_NAME
    need_dns, need_ips = certificate_names(host, interfaces=False)
    if cert_path.is_file() and key_path.is_file() and _covers(cert_path, need_dns, need_ips):
        return cert_path, key_path
    try:
        tls_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError as exc:
        raise SettingsError(f"cannot create {tls_dir} for the certificate: {exc}") from None
    dns, ips = certificate_names(host, interfaces=True)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name(
        [
            x509.NameAttribute(
                NameOID.COMMON_NAME, f"deepfake-live on {socket.gethostname()}"[:64]
            ),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "deepfake-live (self-signed)"),
        ]
    )
    now = dt.datetime.now(dt.UTC)
    san = [x509.DNSName(n) for n in sorted(dns)] + [
        x509.IPAddress(ipaddress.ip_address(a)) for a in sorted(ips)
    ]
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=VALID_DAYS))
        .add_extension(x509.SubjectAlternativeName(san), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    _write(key_path, key_pem, 0o600)
    _write(cert_path, cert.public_bytes(serialization.Encoding.PEM), 0o644)
    log.warning(
        "made a self-signed TLS certificate %s for %s",
        cert_path,
        ", ".join(sorted(dns) + sorted(ips)),
    )
    return cert_path, key_path


def _write(path: Path, data: bytes, mode: int) -> None:
    """Write atomically (a crash leaves the old file or the new one), with `mode` from the start."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.chmod(tmp, mode)
    os.replace(tmp, path)
