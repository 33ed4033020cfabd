"""Secrets: a wrapper that never prints its value, and the places a secret can come from."""

from __future__ import annotations

import re
from pathlib import Path

__all__ = ["SECRET_ARN", "Secret", "SecretError", "fetch_secrets_manager", "read_secret_file"]

# The pattern the original connector's documentation gives for TwilioAuthTokenSecretArn (its published text had
# lost a few characters of it; they are restored here).
SECRET_ARN = re.compile(
    r"arn:aws:secretsmanager:[a-z0-9\-]+:[0-9]{12}:secret:([a-zA-Z0-9\\]+/)*[a-zA-Z0-9/_+=,.@\-]+-[a-zA-Z0-9]+"
)


class SecretError(Exception):
    """A secret could not be loaded. The message never contains the secret."""


class Secret:
    """A string that shows as `'***'` in reprs, f-strings and logs; `reveal()` gives the value."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)

    def __bool__(self) -> bool:
        return bool(self._value)


def read_secret_file(path: str) -> Secret:
    try:
        value = Path(path).read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise SecretError(f"cannot read secret file {path}: {exc.strerror}") from None
    if not value:
        raise SecretError(f"secret file {path} is empty")
    return Secret(value)


def fetch_secrets_manager(arn: str) -> Secret:
    """Read a plain-text secret from AWS Secrets Manager (blocking: call it off the event loop).

    boto3 finds credentials, region and `AWS_ENDPOINT_URL` the standard way; the region defaults to the ARN's.
    """
    try:
        import boto3  # noqa: PLC0415 - optional and heavy: only loaded when an ARN is configured
        from botocore.exceptions import BotoCoreError, ClientError  # noqa: PLC0415
    except ImportError:
        raise SecretError("TwilioAuthTokenSecretArn needs boto3: pip install 'twilio-connector[aws]'") from None
    region = arn.split(":")[3]
    try:
        client = boto3.session.Session().client("secretsmanager", region_name=region)
        answer = client.get_secret_value(SecretId=arn)
    except ClientError as exc:
        code = exc.response.get("Error", {}).get("Code", "error")
        raise SecretError(f"Secrets Manager refused {arn}: {code}") from None
    except BotoCoreError as exc:
        raise SecretError(f"cannot reach Secrets Manager for {arn}: {exc.__class__.__name__}") from None
    value = answer.get("SecretString")
    if not isinstance(value, str) or not value.strip():
        raise SecretError(f"secret {arn} has no SecretString (the token must be stored as plain text)")
    return Secret(value.strip())
