"""The root of every ComputeSwarm error: user errors (fix your input) vs system errors."""


class ComputeSwarmError(Exception):
    """Base of all errors raised on purpose by ComputeSwarm."""


class UserError(ComputeSwarmError):
    """The caller's input is wrong; the message says how to fix it."""


class SystemError_(ComputeSwarmError):
    """Something in the environment failed (a command, a service, the kernel)."""


class CommandFailed(SystemError_):
    """An external command (ip, wg, nft, wireguard-go) exited non-zero."""

    def __init__(self, argv: list[str], returncode: int, stderr: str):
        self.argv = argv
        self.returncode = returncode
        self.stderr = stderr.strip()
        super().__init__(f"`{' '.join(argv)}` failed ({returncode}): {self.stderr or 'no output'}")
