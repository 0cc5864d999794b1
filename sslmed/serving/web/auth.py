"""Logins: credentials from a file or ``$SSLMED_AUTH``, loopback detection, and the
guard that checks passwords in constant time and limits failed attempts.
"""

from __future__ import annotations

import contextvars
import os
from collections.abc import Mapping
from pathlib import Path

from sslmed.core.errors import UsageError
from sslmed.core.files import read_bounded

AUTH_ENV = "SSLMED_AUTH"

#: the address of the client whose request is being handled (set by ``UploadLimit``,
#: the middleware every request passes): Gradio calls its ``auth`` with name and password only
CLIENT_ADDRESS: contextvars.ContextVar[str | None] = contextvars.ContextVar("sslmed_client", default=None)

#: a login file larger than this is refused (a file of logins is a few lines)
MAX_AUTH_FILE_BYTES = 1 << 20


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
        data = read_bounded(path, MAX_AUTH_FILE_BYTES, "--auth-file", UsageError)
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            raise UsageError(f"--auth-file {path}: not UTF-8 text; expected 'user:password' lines") from None
        return parse_credentials(text, f"--auth-file {path}")
    if env.get(AUTH_ENV):
        return parse_credentials(env[AUTH_ENV], f"${AUTH_ENV}")
    return None


class LoginGuard:
    """Checks logins (Gradio's ``auth`` callable and HTTP basic for ``/api/classify``)
    and limits failures per client address: after ``max_failures`` wrong passwords for one
    name from one address within ``window`` seconds, that name is locked for that address
    for ``lockout`` seconds, and after ``4 × max_failures`` failures from one address,
    every login from it is. Nothing is locked for everyone: another address, and the right
    password from it, still gets in (a name or the whole server cannot be locked by
    anyone who can reach the login form). The address is the TCP peer (behind a reverse
    proxy, all clients share the proxy's address; ``X-Forwarded-For`` is not trusted).
    At most :attr:`MAX_TRACKED` keys are remembered; the oldest go first."""

    MAX_TRACKED = 10_000

    def __init__(
        self, credentials: dict[str, str], max_failures: int = 5, window: float = 60.0, lockout: float = 300.0
    ) -> None:
        import threading

        self.credentials = dict(credentials)
        self.max_failures, self.window, self.lockout = max_failures, window, lockout
        # (address, name) and (address, None: any name) -> failure times / locked until
        self.failures: dict[tuple[str | None, str | None], list[float]] = {}
        self.locked_until: dict[tuple[str | None, str | None], float] = {}
        self.lock = threading.Lock()

    def __call__(self, username: str, password: str) -> bool:
        return self.check(username, password)

    def _forget_old(self, now: float) -> None:
        for table in (self.failures, self.locked_until):
            if len(table) > self.MAX_TRACKED:
                stale = [k for k, v in table.items() if (max(v, default=0.0) if isinstance(v, list) else v) < now]
                for key in stale or list(table)[: len(table) // 2]:
                    table.pop(key, None)

    def check(self, username: str, password: str, client: str | None = None) -> bool:
        """True for a right user name and password while neither is locked for ``client``
        (by default the address of the request being handled, :data:`CLIENT_ADDRESS`)."""
        import hmac
        import logging
        import time

        log = logging.getLogger(__name__)
        client = client if client is not None else CLIENT_ADDRESS.get()
        keys = ((client, username), (client, None))
        now = time.monotonic()
        with self.lock:
            if any(self.locked_until.get(key, 0.0) > now for key in keys):
                log.warning("login refused for %r from %s: locked after repeated failures", username, client)
                return False
            expected = self.credentials.get(username)
            # compare even for unknown names, so the time taken does not tell which names exist
            ok = hmac.compare_digest((expected or "\0").encode(), password.encode()) and expected is not None
            if ok:
                return True
            self._forget_old(now - self.window)
            for key, allowed in zip(keys, (self.max_failures, 4 * self.max_failures), strict=True):
                times = [t for t in self.failures.get(key, []) if now - t < self.window] + [now]
                self.failures[key] = times
                if len(times) >= allowed:
                    self.locked_until[key] = now + self.lockout
                    self.failures[key] = []
                    what = f"name {username!r}" if key[1] is not None else "every name"
                    log.warning(
                        "logins for %s from %s locked for %.0f s after %d failures", what, client, self.lockout, allowed
                    )
            log.warning("failed login for %r from %s", username, client)
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
