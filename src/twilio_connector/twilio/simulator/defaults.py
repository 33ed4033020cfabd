"""The simulator's account and token when none are given: what the tests, the quick start and the docs use."""

DEFAULT_ACCOUNT_SID = "AC" + "0" * 32
DEFAULT_AUTH_TOKEN = "simulator-token"
