"""A terminal for tests: a command in a detached tmux session on a private server, its
screen read with capture-pane, keys sent with send-keys; the server is killed after."""

from __future__ import annotations

import re
import secrets
import shlex
import shutil
import subprocess
import time


class Terminal:
    def __init__(self, command: list[str], width: int = 200, height: int = 40):
        if shutil.which("tmux") is None:
            raise RuntimeError("tmux not found (apt-get install tmux)")
        self.socket = f"cs-test-{secrets.token_hex(4)}"
        self.command = command
        self.size = (width, height)

    def __enter__(self) -> Terminal:
        width, height = self.size
        # The screen stays after the command ends, with its exit status.
        # Not pytest's COLUMNS/LINES: the program sizes itself from the terminal.
        command = ["env", "-u", "COLUMNS", "-u", "LINES", *self.command]
        line = " ".join(shlex.quote(a) for a in command) + '; echo "[exited $?]"; sleep 600'
        self._tmux("new-session", "-d", "-s", "t", "-x", str(width), "-y", str(height), line)
        return self

    def __exit__(self, *_) -> None:
        subprocess.run(["tmux", "-L", self.socket, "kill-server"], capture_output=True)

    def screen(self) -> str:
        return self._tmux("capture-pane", "-p", "-t", "t").stdout

    def press(self, keys: str) -> None:
        self._tmux("send-keys", "-t", "t", keys)

    def exit_status(self) -> int | None:
        """The command's, once it has ended."""
        found = re.search(r"\[exited (\d+)\]", self.screen())
        return int(found[1]) if found else None

    def wait_for(self, predicate, timeout: float = 30.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate(shown := self.screen()):
                return shown
            time.sleep(0.5)
        raise AssertionError(f"the terminal never showed it:\n{self.screen()}")

    def _tmux(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            ["tmux", "-L", self.socket, *args], capture_output=True, text=True, check=True
        )
