"""Configuration of one camera source, and the credential masking every camera log line goes through.

A camera is described by its RTSP URL *without* a password, an optional user name, and the name of
the environment variable holding the password (``password_env``), as for every other secret in
gridwatch: passwords are never written in the YAML file.  The URL with the password in it exists
only inside a :class:`SecretUrl`, whose ``str()`` / ``repr()`` are masked; only the code that hands
it to FFmpeg calls :meth:`SecretUrl.reveal`.

    cams:
      - id: cam-north-gate
        url: rtsp://10.0.4.21:554/Streaming/Channels/101
        username: viewer
        password_env: GRIDWATCH_CAM_NORTH_GATE_PASSWORD
        analysed_fps: 5

The repository owner wires :class:`CameraSourceConfig` into :mod:`gridwatch.config`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from urllib.parse import quote, urlsplit, urlunsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from gridwatch.config import secret_from_env
from gridwatch.schemas import SENSOR_ID_PATTERN

__all__ = ["MASK", "CameraSourceConfig", "SecretUrl", "mask_text", "mask_url"]

MASK = "***"

# Query parameters that some cameras take credentials in (``?user=admin&password=...``).
_SECRET_QUERY_KEYS = re.compile(r"^(pass(word|wd)?|pwd|token|key|secret|auth|signature)$", re.IGNORECASE)
# Userinfo with a password, for text that urlsplit() cannot take apart (fragments, odd characters).
_USERINFO_RE = re.compile(r"(?P<pre>[A-Za-z][A-Za-z0-9+.\-]*://[^/\s:@'\"]*):[^@\s/'\"]*@")
_URL_IN_TEXT_RE = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*://[^\s'\"<>]+")


def mask_url(url: str) -> str:
    """``url`` with the password (and secret-looking query values) replaced by ``***``.

    ``rtsp://viewer:s3cret@10.0.0.5:554/live?token=abc`` -> ``rtsp://viewer:***@10.0.0.5:554/live?token=***``.
    The user name is kept (it helps an operator and is not a secret).  Never raises: anything that
    cannot be parsed is masked by a regular expression instead.
    """
    try:
        parts = urlsplit(url)
        netloc = parts.netloc
        if "@" in netloc:
            userinfo, _, hostport = netloc.rpartition("@")
            user, has_pw, _pw = userinfo.partition(":")
            netloc = f"{user}:{MASK}@{hostport}" if has_pw else f"{user}@{hostport}"
        query = parts.query
        if query:
            pairs = []
            for item in query.split("&"):
                k, eq, v = item.partition("=")
                pairs.append(f"{k}={MASK}" if eq and v and _SECRET_QUERY_KEYS.match(k) else item)
            query = "&".join(pairs)
        return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))
    except ValueError:  # e.g. an invalid port or IPv6 literal: fall back to the regex
        return _USERINFO_RE.sub(lambda m: f"{m.group('pre')}:{MASK}@", url)


def mask_text(text: str, secrets: Iterable[str] = ()) -> str:
    """Mask every URL in ``text`` (see :func:`mask_url`) and every occurrence of ``secrets``.

    For messages we do not compose ourselves (OpenCV / FFmpeg exceptions), which might quote the URL
    or the password in any form: raw and percent-encoded occurrences are both replaced.
    """
    out = _URL_IN_TEXT_RE.sub(lambda m: mask_url(m.group(0)), text)
    for s in secrets:
        if s:
            for form in {s, quote(s, safe="")}:
                out = out.replace(form, MASK)
    return out


class SecretUrl:
    """A URL that may carry a password: prints masked, reveals the real thing only on request."""

    __slots__ = ("_url", "_secrets")

    def __init__(self, url: str, secrets: Iterable[str] = ()) -> None:
        self._url = url
        self._secrets = tuple(s for s in secrets if s)

    def reveal(self) -> str:
        """The URL with the password: only for handing to the capture library, never for printing."""
        return self._url

    @property
    def masked(self) -> str:
        return mask_text(mask_url(self._url), self._secrets)

    @property
    def secrets(self) -> tuple[str, ...]:
        return self._secrets

    def scrub(self, text: str) -> str:
        """``text`` with this URL's password (and any URL) masked."""
        return mask_text(text, self._secrets)

    def __str__(self) -> str:
        return self.masked

    def __repr__(self) -> str:
        return f"SecretUrl({self.masked!r})"

    def __reduce__(self) -> tuple[object, ...]:  # pickling would be a way to leak it: refuse
        raise TypeError("SecretUrl cannot be pickled")


def with_password(url: str, username: str | None, password: str | None) -> str:
    """``url`` with ``username[:password]@`` in its netloc, both percent-encoded."""
    if username is None:
        return url
    parts = urlsplit(url)
    hostport = parts.netloc.rpartition("@")[2]
    userinfo = quote(username, safe="")
    if password is not None:
        userinfo += ":" + quote(password, safe="")
    return urlunsplit((parts.scheme, f"{userinfo}@{hostport}", parts.path, parts.query, parts.fragment))


class CameraSourceConfig(BaseModel):
    """One live camera: where its stream is, how often it is analysed, how it is watched over."""

    # hide_input_in_errors: a ValidationError would otherwise quote a URL carrying a password.
    model_config = ConfigDict(extra="forbid", validate_default=True, hide_input_in_errors=True)

    id: str = Field(
        pattern=SENSOR_ID_PATTERN,
        title="Camera id",
        description="Stable id of the camera: tags its health points and events, names its detections.",
    )
    url: str = Field(
        title="Stream URL",
        description=(
            "RTSP URL of the stream, e.g. `rtsp://10.0.4.21:554/Streaming/Channels/101`. It must not "
            "contain a password: give `username` and `password_env` instead."
        ),
    )
    username: str | None = Field(
        None, title="User name", description="RTSP user name, if the camera wants one."
    )
    password_env: str | None = Field(
        None,
        title="Password variable",
        description="Environment variable holding the RTSP password (read at start; never logged).",
    )
    analysed_fps: float = Field(
        5.0,
        gt=0,
        le=60,
        title="Analysed frame rate",
        description=(
            "Frames per second handed to the detectors. The reader decodes every frame the camera "
            "sends and keeps only the newest; consumers take at most this many per second."
        ),
    )
    open_timeout_s: float = Field(
        5.0,
        gt=0,
        le=120,
        title="Open timeout",
        description="Longest wait for the camera to answer when (re)connecting (OpenCV CAP_PROP_OPEN_TIMEOUT_MSEC).",
    )
    read_timeout_s: float = Field(
        3.0,
        gt=0,
        le=120,
        title="Read timeout",
        description=(
            "FFmpeg's per-read interrupt (OpenCV CAP_PROP_READ_TIMEOUT_MSEC). Measured: a hung camera "
            "holds a read for about three times this (FFmpeg retries), so the watchdog "
            "(`stall_timeout_s`) is what declares the camera down."
        ),
    )
    stall_timeout_s: float = Field(
        5.0,
        gt=0,
        le=300,
        title="Stall timeout",
        description=(
            "No new frame for this long: the camera is reported down and its stream is reopened "
            "(whatever the stalled connection delivers afterwards is discarded)."
        ),
    )
    max_frame_lag_s: float = Field(
        0.5,
        gt=0,
        le=60,
        title="Maximum frame lag",
        description=(
            "A frame whose stream timestamp is this much further behind the wall clock than the "
            "stream's best is a backlog frame (a burst after a hiccup) and is dropped, counted as stale."
        ),
    )
    backoff_initial_s: float = Field(
        0.5,
        gt=0,
        le=60,
        title="First retry delay",
        description="Delay before the first reconnection attempt.",
    )
    backoff_max_s: float = Field(
        4.0,
        gt=0,
        le=600,
        title="Longest retry delay",
        description=(
            "Reconnection delays double up to this bound, each jittered down to half its value so "
            "that cameras behind one failed switch do not retry in lockstep."
        ),
    )
    idle_retrieve_interval_s: float = Field(
        0.2,
        ge=0,
        le=60,
        title="Idle image interval",
        description=(
            "Every frame is decoded as it arrives (a live stream cannot skip any), but turned into "
            "a BGR image only when a consumer is waiting for one, and otherwise at least this "
            "often so that the newest image stays fresh. The colour conversion and the image copy "
            "are a quarter of the decoding cost of a 640x480 frame. 0: an image of every frame."
        ),
    )
    decode_threads: int = Field(
        1,
        ge=0,
        le=16,
        title="Decoder threads",
        description=(
            "FFmpeg decoder threads per camera (0: FFmpeg's choice). One keeps latency lowest and "
            "many cameras from oversubscribing the cores; raise it for 4K streams."
        ),
    )

    @field_validator("url")
    @classmethod
    def _no_password_in_url(cls, v: str) -> str:
        try:
            parts = urlsplit(v)
        except ValueError as e:
            raise ValueError(f"not a URL: {mask_url(v)}") from e
        if parts.scheme.lower() not in ("rtsp", "rtsps", "rtmp", "http", "https"):
            raise ValueError(f"unsupported scheme {parts.scheme!r} in {mask_url(v)}: expected rtsp://...")
        if not parts.hostname:
            raise ValueError(f"no host in {mask_url(v)}")
        if parts.password is not None:
            # The message never repeats the password (pydantic would otherwise echo the input).
            raise ValueError("the URL contains a password: use `username` and `password_env` instead")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> CameraSourceConfig:
        if self.backoff_max_s < self.backoff_initial_s:
            raise ValueError("backoff_max_s must be >= backoff_initial_s")
        if self.password_env and not self.username and not urlsplit(self.url).username:
            raise ValueError("password_env needs a username (here or in the URL)")
        return self

    @property
    def masked_url(self) -> str:
        """The configured URL as it may appear in logs."""
        return mask_url(self.url)

    def resolve_url(self) -> SecretUrl:
        """The URL to connect to, with the password from ``password_env`` (raises ConfigError if unset)."""
        password = secret_from_env(self.password_env, what=f"cameras.{self.id}.password_env")
        username = self.username if self.username is not None else urlsplit(self.url).username
        if password is None:
            return SecretUrl(self.url if self.username is None else with_password(self.url, username, None))
        return SecretUrl(with_password(self.url, username, password), secrets=(password,))
