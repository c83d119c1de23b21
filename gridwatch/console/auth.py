"""Console users, password hashes, server-side sessions and CSRF tokens.

Password hash format (one string, safe to keep in YAML)::

    scrypt$<n>$<r>$<p>$<salt, urlsafe base64>$<key, urlsafe base64>

scrypt from the standard library (RFC 7914) with a random 16-byte salt per user and a 32-byte key;
the default cost n=2**14, r=8, p=1 takes about 50 ms and 16 MiB, which is slow enough for guessing
and fast enough for a login form. The parameters travel with the hash so they can be raised later
without invalidating existing users. Make one with ``python -m gridwatch.console hash-password``.

Sessions live in this process's memory (the dispatch service is one process): a random session id
in an HttpOnly, SameSite=Strict cookie maps to the user, the language and a per-session CSRF token
that every state-changing request must echo (form field ``csrf`` or header ``X-CSRF-Token``).
A restart logs everybody out, which a command centre can live with.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import secrets
import threading
import time
from dataclasses import dataclass, field
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

__all__ = [
    "ConsoleUser",
    "LoginThrottle",
    "Session",
    "SessionStore",
    "hash_password",
    "verify_password",
]

Role = Literal["operator", "supervisor", "team", "viewer"]
Lang = Literal["zh", "en"]

HASH_PATTERN = r"^scrypt\$\d+\$\d+\$\d+\$[A-Za-z0-9_-]+=*\$[A-Za-z0-9_-]+=*$"
_N, _R, _P, _DKLEN = 2**14, 8, 1, 32


def _b64(b: bytes) -> str:
    return base64.urlsafe_b64encode(b).decode()


def hash_password(password: str, *, n: int = _N, r: int = _R, p: int = _P) -> str:
    """A new hash of `password` with a fresh random salt (format: see the module docstring)."""
    if not password:
        raise ValueError("an empty password cannot be hashed")
    salt = secrets.token_bytes(16)
    key = hashlib.scrypt(password.encode(), salt=salt, n=n, r=r, p=p, dklen=_DKLEN, maxmem=2**26)
    return f"scrypt${n}${r}${p}${_b64(salt)}${_b64(key)}"


def verify_password(password: str, stored: str) -> bool:
    """True when `password` matches `stored`; False for a wrong password or a malformed hash."""
    try:
        scheme, n, r, p, salt, key = stored.split("$")
        if scheme != "scrypt":
            return False
        want = base64.urlsafe_b64decode(key)
        got = hashlib.scrypt(
            password.encode(),
            salt=base64.urlsafe_b64decode(salt),
            n=int(n),
            r=int(r),
            p=int(p),
            dklen=len(want),
            maxmem=2**26,
        )
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(got, want)


# Checked against when the user name is unknown, so that the answer takes as long as for a known
# user with a wrong password (no user-name probing by timing).
@functools.cache
def _dummy_hash() -> str:
    return hash_password(secrets.token_urlsafe(16))


class ConsoleUser(BaseModel):
    """Someone who may log in to the operator console."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$",
        title="Login name",
        description="Log-in name; written as `by` into the audit trail of every command the user gives.",
    )
    display_name: str = Field(
        min_length=1, max_length=64, title="Display name", description="e.g. '值班员 李娜'."
    )
    role: Role = Field(
        title="Role",
        description="operator: acts for teams, escalates, re-dispatches, reviews; supervisor: also "
        "verifies closures; team: acts on its own node's incidents only; viewer: reads only.",
    )
    node: str | None = Field(None, title="Node", description="Ladder node id of the team (role `team` only).")
    password_hash: str = Field(
        pattern=HASH_PATTERN,
        title="Password hash",
        description="scrypt$n$r$p$salt$key; `python -m gridwatch.console hash-password` makes one.",
    )
    lang: Lang = Field("zh", title="Language", description="Language after log-in: zh (default) or en.")

    @model_validator(mode="after")
    def _team_has_node(self) -> ConsoleUser:
        if (self.role == "team") != (self.node is not None):
            raise ValueError("`node` is required for role team and only allowed for it")
        return self


@dataclass
class Session:
    sid: str
    user: ConsoleUser
    csrf: str
    lang: Lang
    created: float
    last_seen: float
    flash: list[tuple[str, str]] = field(default_factory=list)
    """(kind ok|error, message) shown once on the next page."""


class SessionStore:
    """Sessions by id, in memory; idle and absolute expiry."""

    def __init__(self, idle_s: float = 8 * 3600, max_s: float = 24 * 3600) -> None:
        self.idle_s = idle_s
        self.max_s = max_s
        self._by_id: dict[str, Session] = {}
        self._lock = threading.Lock()

    def create(self, user: ConsoleUser, lang: Lang | None = None) -> Session:
        now = time.monotonic()
        s = Session(
            sid=secrets.token_urlsafe(32),
            user=user,
            csrf=secrets.token_urlsafe(32),
            lang=lang or user.lang,
            created=now,
            last_seen=now,
        )
        with self._lock:
            self._sweep(now)
            self._by_id[s.sid] = s
        return s

    def get(self, sid: str | None) -> Session | None:
        if not sid:
            return None
        now = time.monotonic()
        with self._lock:
            s = self._by_id.get(sid)
            if s is None:
                return None
            if now - s.last_seen > self.idle_s or now - s.created > self.max_s:
                del self._by_id[sid]
                return None
            s.last_seen = now
            return s

    def drop(self, sid: str) -> None:
        with self._lock:
            self._by_id.pop(sid, None)

    def _sweep(self, now: float) -> None:
        dead = [
            k
            for k, s in self._by_id.items()
            if now - s.last_seen > self.idle_s or now - s.created > self.max_s
        ]
        for k in dead:
            del self._by_id[k]


class LoginThrottle:
    """After `limit` failed log-ins for a name within `window_s`, refuse that name for `lock_s`.

    Keyed by the name typed (known or not), so guessing one operator's password is slow while
    everybody else can still log in.
    """

    def __init__(self, limit: int = 5, window_s: float = 300, lock_s: float = 60) -> None:
        self.limit, self.window_s, self.lock_s = limit, window_s, lock_s
        self._fails: dict[str, list[float]] = {}
        self._lock = threading.Lock()

    def locked(self, name: str) -> bool:
        now = time.monotonic()
        with self._lock:
            recent = [t for t in self._fails.get(name, []) if now - t < self.window_s]
            self._fails[name] = recent
            return len(recent) >= self.limit and now - recent[-1] < self.lock_s

    def failed(self, name: str) -> None:
        with self._lock:
            self._fails.setdefault(name, []).append(time.monotonic())
            if len(self._fails) > 10_000:  # a flood of made-up names must not grow memory forever
                self._fails.clear()

    def succeeded(self, name: str) -> None:
        with self._lock:
            self._fails.pop(name, None)


def check_login(users: dict[str, ConsoleUser], name: str, password: str) -> ConsoleUser | None:
    user = users.get(name)
    ok = verify_password(password, user.password_hash if user else _dummy_hash())
    return user if ok and user is not None else None


def csrf_ok(session: Session, token: str | None) -> bool:
    return bool(token) and hmac.compare_digest(session.csrf.encode(), str(token).encode())
