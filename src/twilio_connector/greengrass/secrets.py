"""The Twilio auth token from the Greengrass nucleus (GetSecretValue over IPC, served by the
aws.greengrass.SecretManager component from its copy on the core): no boto3, no AWS credentials and no network,
so a core that boots offline starts."""

from __future__ import annotations

from ..settings.secrets import Secret, SecretError
from .session import GreengrassOptions, in_words, open_client

__all__ = ["fetch_from_nucleus"]


def fetch_from_nucleus(options: GreengrassOptions, arn: str) -> Secret:
    """The secret string `arn` names, read from the nucleus (blocking). Raises `SecretError` in words."""
    try:
        client = open_client(options)
    except Exception as exc:
        raise SecretError(f"cannot reach the Greengrass nucleus for {arn}: {in_words(exc)}") from None
    try:
        answer = client.get_secret_value(secret_id=arn)
    except Exception as exc:
        raise SecretError(f"the Greengrass nucleus did not give {arn}: {in_words(exc)}") from None
    finally:
        client.close()
    value = answer.secret_value.secret_string if answer.secret_value is not None else None
    if not value:
        raise SecretError(f"the secret {arn} holds no text (the connector takes the auth token as plain text)")
    return Secret(value.strip())
