"""User-facing errors: raised for bad configs, paths and environments, printed as one line."""


class RaylmError(Exception):
    """A problem the user can fix. The CLI prints it as one line and exits non-zero."""


class ConfigError(RaylmError):
    """A config key, value or file is wrong."""
