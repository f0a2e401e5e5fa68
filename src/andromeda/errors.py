"""One family of user-facing errors. The CLI prints their message (no traceback) and exits 2."""


class AndromedaError(Exception):
    """An error caused by user input: a bad config, manifest, path or option."""


class ConfigError(AndromedaError, ValueError):
    """A model or run configuration is invalid. The message names the field and the fix."""


class UnsupportedError(AndromedaError):
    """A valid request that this device, backend or installation cannot serve."""


def missing_extra(package: str, extra: str) -> AndromedaError:
    return AndromedaError(f"{package} is not installed; install it with: pip install 'andromeda[{extra}]'")
