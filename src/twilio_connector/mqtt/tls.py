"""TLS to the broker: the context built from the configured files, and a file that cannot serve told in words
(which file, what OpenSSL found wrong)."""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path

from ..settings.config import ConfigError

__all__ = ["ClosedEarly", "TlsFiles", "tls_context", "verifying"]


class ClosedEarly(ConnectionError):
    """The broker closed the connection before its CONNACK."""


@dataclass(frozen=True, slots=True)
class TlsFiles:
    """The CA bundle that verifies the broker (None: the system's) and the client certificate with its key."""

    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None


def verifying(ca_file: str | None, setting: str = "ca_file") -> ssl.SSLContext:
    """A client TLS context that verifies with `ca_file`'s CAs (the system's when None); a file that cannot serve
    is a `ConfigError` naming `setting`, the file and why (the broker's and Twilio's CA files alike)."""
    try:
        return ssl.create_default_context(cafile=ca_file)
    except (ssl.SSLError, OSError) as exc:
        raise ConfigError([f"{setting} {ca_file}: {_tls_words(exc, 'CERTIFICATE')}"]) from None


def tls_context(files: TlsFiles) -> ssl.SSLContext:
    """The broker connection's TLS context; a file that cannot serve is a `ConfigError` naming it and why."""
    context = verifying(files.ca_file)
    if files.cert_file and files.key_file:
        try:
            context.load_cert_chain(files.cert_file, files.key_file)
        except (ssl.SSLError, OSError) as exc:
            raise ConfigError([_chain_problem(files.cert_file, files.key_file, exc)]) from None
    return context


def _chain_problem(cert_file: str, key_file: str, exc: Exception) -> str:
    """Which of the two files is wrong: OpenSSL says only "PEM lib" when either holds no PEM block."""
    for name, path, block in (("cert_file", cert_file, "CERTIFICATE"), ("key_file", key_file, "PRIVATE KEY")):
        problem = _pem_problem(path, block)
        if problem:
            return f"{name} {path}: {problem}"
    if isinstance(exc, ssl.SSLError) and exc.reason == "KEY_VALUES_MISMATCH":
        return f"key_file {key_file} is not the private key of the certificate in cert_file {cert_file}"
    return f"cert_file {cert_file} and key_file {key_file}: {_tls_words(exc, '')}"


def _pem_problem(path: str, block: str) -> str | None:
    try:
        text = Path(path).read_bytes()
    except OSError as exc:
        return exc.strerror or exc.__class__.__name__
    marker = b"PRIVATE KEY-----" if block == "PRIVATE KEY" else f"-----BEGIN {block}".encode()
    return None if marker in text else f"holds no PEM {block.lower()}"


def _tls_words(exc: Exception, block: str) -> str:
    """OpenSSL's reason in words ("key values mismatch"), or the system's for a file that cannot be read."""
    if isinstance(exc, ssl.SSLError):
        words = str(exc).split("] ", 1)[-1].split(" (_ssl.c", 1)[0]
        if exc.reason == "NO_CERTIFICATE_OR_CRL_FOUND" and block:
            return f"holds no PEM {block.lower()} ({words})"
        return f"{words} (OpenSSL {exc.library or 'SSL'}: {exc.reason or 'error'})"
    return (exc.strerror if isinstance(exc, OSError) else None) or str(exc) or exc.__class__.__name__
