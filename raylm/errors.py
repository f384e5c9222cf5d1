"""User-facing errors: raised for bad configs, paths and environments, printed as one line."""

import re

_URL_CREDENTIALS = re.compile(r"(\b[a-zA-Z][a-zA-Z0-9+.-]*://)[^/\s@]+@")


def redact(text: str) -> str:
    """`scheme://user:secret@host/...` -> `scheme://***@host/...`: what raylm prints or saves never
    carries credentials written into a URL."""
    return _URL_CREDENTIALS.sub(r"\1***@", text)


class RaylmError(Exception):
    """A problem the user can fix. The CLI prints it as one line and exits non-zero."""


class ConfigError(RaylmError):
    """A config key, value or file is wrong."""
