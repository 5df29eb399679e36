"""Errors of the overlay network."""

from computeswarm.errors import SystemError_, UserError


class InvalidKey(UserError):
    """A WireGuard key is malformed or of the wrong kind."""


class AddressPoolExhausted(UserError):
    """The overlay range has no address left that was never given out."""

    def __init__(self, network: str, issued: int):
        self.network = network
        self.issued = issued
        super().__init__(
            f"overlay range {network} is exhausted ({issued} addresses given out, none is ever "
            "reused); configure a larger range, e.g. overlay_cidr: 10.90.0.0/16"
        )


class ConfigParseError(UserError):
    """A wg-quick configuration file could not be parsed."""

    def __init__(self, message: str, line: int | None = None):
        self.line = line
        super().__init__(f"line {line}: {message}" if line else message)


class BackendUnavailable(SystemError_):
    """The chosen tunnel backend cannot run on this machine."""

    def __init__(self, backend: str, reason: str):
        self.backend = backend
        self.reason = reason
        super().__init__(f"tunnel backend {backend!r} is unavailable: {reason}")


class InterfaceNameError(UserError):
    """An interface name is invalid or already used somewhere on this machine."""
