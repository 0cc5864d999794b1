"""Logins: credentials from a file or ``$SSLMED_AUTH``, loopback detection, and the
guard that checks passwords in constant time and limits failed attempts.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from sslmed.core.errors import UsageError

AUTH_ENV = "SSLMED_AUTH"


LOOPBACK_NAMES = ("localhost",)


def is_loopback(host: str) -> bool:
    """True when ``host`` is reachable from this machine only (127.0.0.0/8, ::1, localhost)."""
    import ipaddress

    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def parse_credentials(text: str, origin: str) -> dict[str, str]:
    """``user:password`` lines (blank lines and ``#`` comments ignored) -> ``{user: password}``;
    :class:`~sslmed.core.errors.UsageError` naming ``origin`` and the line for anything else."""

    found: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        user, sep, password = line.partition(":")
        if not sep or not user.strip() or not password:
            raise UsageError(f"{origin}, line {number}: expected 'user:password' (the password may not be empty)")
        found[user.strip()] = password
    if not found:
        raise UsageError(f"{origin}: no 'user:password' line")
    return found


def read_credentials(
    auth_file: str | Path | None = None, environ: dict[str, str] | None = None
) -> dict[str, str] | None:
    """Logins from ``auth_file`` or else the ``SSLMED_AUTH`` environment variable
    (never from the command line, where other users of the machine could read them);
    ``None`` when neither is given."""

    env: Mapping[str, str] = os.environ if environ is None else environ
    if auth_file is not None:
        path = Path(auth_file)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise UsageError(f"--auth-file {path}: cannot be read ({exc.strerror or exc})") from None
        return parse_credentials(text, f"--auth-file {path}")
    if env.get(AUTH_ENV):
        return parse_credentials(env[AUTH_ENV], f"${AUTH_ENV}")
    return None


class LoginGuard:
    """Checks logins (Gradio's ``auth`` callable and HTTP basic for ``/api/classify``)
    and limits failures: after ``max_failures`` wrong passwords for one user name within
    ``window`` seconds that name is locked for ``lockout`` seconds, and after
    ``4 × max_failures`` failures in all, every login is; the right password does not
    open a locked name. Gradio's login form does not give the client's address, so the
    limit is per name and overall."""

    def __init__(
        self, credentials: dict[str, str], max_failures: int = 5, window: float = 60.0, lockout: float = 300.0
    ) -> None:
        import threading

        self.credentials = dict(credentials)
        self.max_failures, self.window, self.lockout = max_failures, window, lockout
        self.failures: dict[str | None, list[float]] = {}  # user (None: all users) -> failure times
        self.locked_until: dict[str | None, float] = {}
        self.lock = threading.Lock()

    def __call__(self, username: str, password: str) -> bool:
        return self.check(username, password)

    def check(self, username: str, password: str) -> bool:
        """True for a right user name and password while neither is locked."""
        import hmac
        import logging
        import time

        log = logging.getLogger(__name__)
        now = time.monotonic()
        with self.lock:
            if any(self.locked_until.get(key, 0.0) > now for key in (username, None)):
                log.warning("login refused for %r: locked after repeated failures", username)
                return False
            expected = self.credentials.get(username)
            # compare even for unknown names, so the time taken does not tell which names exist
            ok = hmac.compare_digest((expected or "\0").encode(), password.encode()) and expected is not None
            if ok:
                return True
            for key, allowed in ((username, self.max_failures), (None, 4 * self.max_failures)):
                times = [t for t in self.failures.get(key, []) if now - t < self.window] + [now]
                self.failures[key] = times
                if len(times) >= allowed:
                    self.locked_until[key] = now + self.lockout
                    self.failures[key] = []
                    log.warning(
                        "logins %s locked for %.0f s after %d failures", key or "of all users", self.lockout, allowed
                    )
            log.warning("failed login for %r", username)
            return False

    def check_basic(self, header: str | None) -> bool:
        """:meth:`check` for an HTTP ``Authorization: Basic ...`` header."""
        import base64
        import binascii

        if not header or not header.lower().startswith("basic "):
            return False
        try:
            user, _, password = base64.b64decode(header[6:].strip(), validate=True).decode("utf-8").partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return False
        return self.check(user, password)


NO_AUTH_NOTICE = (
    "**This page has no login** (started with `--no-auth` on {host}): anyone who can reach this "
    "address can use it and send it images."
)
