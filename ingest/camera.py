"""Camera frames for the detectors: live RTSP readers and a file source behind one interface.

``CameraReader`` (one per camera) owns two threads:

* the **reader** opens the stream with OpenCV's FFmpeg backend (RTSP over TCP; open and read
  timeouts passed to the ``VideoCapture`` constructor), reads and decodes every frame and keeps only
  the **latest** one (``Frame``: image, capture time from the one clock, a sequence number that only
  grows, the stream's own timestamp).  Consumers never queue behind the camera: they take the newest
  frame when they are ready (``latest()``, ``wait_frame()``, ``frames()`` paced at ``analysed_fps``).
  A decoded frame becomes a BGR image (``retrieve()``: colour conversion and a 0.9 MB copy at
  640x480) only when a consumer is waiting for one, and otherwise every ``idle_retrieve_interval_s``
  (0.2 s) so ``latest()`` stays fresh: a camera analysed at 1 fps of its 25 converts 6 frames a
  second instead of 25.  ``frames()`` always asks for a frame read after its slot came due.
* the **watchdog** declares the camera down when no frame has arrived for ``stall_timeout_s``.  It
  cannot interrupt a read that is stuck inside FFmpeg, so it marks the session *abandoned*; whatever
  that read returns later is discarded and the capture is closed and reopened (with capped, jittered
  exponential backoff) instead of being read on.

Why the abandon-and-reopen rule: measured with a frozen (SIGSTOPped) gst-rtsp-server, a read blocks
for about three read timeouts (FFmpeg retries: ~9 s with ``read_timeout_s=3``, ~30 s+ with OpenCV's
defaults), and if the camera comes back in the meantime the same connection delivers the whole
backlog at once (20 frames in 60 ms after a 2 s freeze; about 1,000 after 30 s).  Those frames are
seconds old and must never reach the detectors.  A second defence covers hiccups shorter than the
stall timeout, where the connection is kept: ``LagFilter`` compares each frame's stream timestamp
with the clock and drops frames that arrive later than ``max_frame_lag_s`` behind the stream's best
(a backlog drains faster than real time, so it shows up as lag), counting them as ``stale_dropped``.

FFmpeg's probing is cut down (``analyzeduration``, ``probesize``): with its defaults, opening a
stream buffered 2.5 s of frames that were then delivered as a burst.  These options travel in the
process-wide ``OPENCV_FFMPEG_CAPTURE_OPTIONS`` variable, set once before the first open
(:func:`ensure_ffmpeg_capture_options`); an operator's own setting is kept (TCP transport is added).

Credentials: the URL handed to FFmpeg comes from a :class:`SecretUrl` and is never logged; every
log line, exception message, health record and event carries the masked form (``mask_url``).

Isolation: each camera has its own threads and its own lock, held only to swap the latest frame or
update counters, never during I/O; OpenCV releases the GIL while it opens, reads and decodes.  A hung
or offline camera costs its own threads only, and a reader started while its camera is offline keeps
retrying until it appears.

Down/up transitions are reported as :class:`CameraEvent` to ``on_event`` (called in the camera's
threads: it must be quick and must not block, e.g. ``loop.call_soon_threadsafe``) and/or put on an
``event_queue``; the camera worker publishes them.

``FileSource`` reads a local clip through the same interface for labelled test clips and replays:
it decodes every frame as fast as the consumer takes them (faster than real time, nothing dropped)
and stamps each with the clip's own time, ``epoch_ms + index * 1000 / fps``, so detections line up
with the clip's labels whatever the machine's speed.  ``analysed_fps`` subsamples it the way the live
pipeline would (frame ``i`` is kept when its time reaches the next ``1 / analysed_fps`` slot).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import queue
import random
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, Protocol, Self, runtime_checkable

import cv2
import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from gridwatch.clock import SYSTEM_CLOCK, Clock
from gridwatch.influx import line
from gridwatch.ingest.camera_config import CameraSourceConfig, SecretUrl, mask_text, mask_url

__all__ = [
    "Backoff",
    "CameraEvent",
    "CameraHealth",
    "CameraOpenError",
    "CameraReader",
    "CameraState",
    "FileSource",
    "Frame",
    "FrameSource",
    "LagFilter",
    "ensure_ffmpeg_capture_options",
    "health_lines",
    "mask_text",
    "mask_url",
]

log = logging.getLogger(__name__)

CameraState = Literal["starting", "up", "down", "stopped"]

#: FFmpeg demuxer options for every capture of this process (OpenCV reads them from the
#: environment at each open).  TCP: RTP over UDP loses packets (smeared frames) on busy networks.
#: analyzeduration / probesize: do not buffer seconds of stream while probing (see module docstring);
#: the SDP and the first key frame carry everything the decoder needs.
FFMPEG_CAPTURE_OPTIONS = "rtsp_transport;tcp|analyzeduration;100000|probesize;32"
_FFMPEG_ENV = "OPENCV_FFMPEG_CAPTURE_OPTIONS"
_ffmpeg_env_lock = threading.Lock()
_ffmpeg_env_done = False


def ensure_ffmpeg_capture_options() -> str:
    """Set ``OPENCV_FFMPEG_CAPTURE_OPTIONS`` once per process; return its value.

    Called before a reader's first open (not at import) and under a lock: the variable is
    process-wide and putenv must not race with another thread's getenv inside OpenCV.  An existing
    value is respected; only ``rtsp_transport;tcp`` is added to it if it has no transport.
    """
    global _ffmpeg_env_done
    with _ffmpeg_env_lock:
        current = os.environ.get(_FFMPEG_ENV)
        if not _ffmpeg_env_done:
            if current is None:
                current = FFMPEG_CAPTURE_OPTIONS
            elif "rtsp_transport" not in current:
                current = "|".join(p for p in (current, "rtsp_transport;tcp") if p)
            os.environ[_FFMPEG_ENV] = current
            _ffmpeg_env_done = True
        return current or ""


# --------------------------------------------------------------------------------------------------
# Records
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Frame:
    """One decoded frame (BGR, as OpenCV gives it).  Plain dataclass: it is on the hot path."""

    source_id: str
    #: Per source, strictly increasing across reconnections (1, 2, ...); gaps mean frames not taken.
    seq: int
    #: Capture time: epoch ms from the one clock when the frame was read (files: the clip's time).
    ts_ms: int
    image: np.ndarray = field(repr=False)
    #: ``clock.monotonic()`` when the frame was read (for ages and rates; files: read time too).
    mono: float = 0.0
    #: The stream's own timestamp of the frame in ms (RTSP: from the RTP clock; files: index/fps).
    pts_ms: float | None = None
    #: Frame index in the clip (files only).
    index: int | None = None


class CameraHealth(BaseModel):
    """A snapshot of one source's health (also written to InfluxDB by :func:`health_lines`)."""

    model_config = ConfigDict(extra="forbid")

    camera_id: str = Field(title="Camera id", description="Configured camera id.")
    url: str = Field(title="URL", description="Stream URL, password masked.")
    state: CameraState = Field(title="State", description="starting, up, down or stopped.")
    up: bool = Field(title="Up", description="True while frames are arriving.")
    fps: float = Field(
        title="Measured frame rate", description="Frames delivered per second, last few seconds."
    )
    frames: int = Field(title="Frames", description="Frames delivered since start.")
    reconnects: int = Field(title="Reconnects", description="Successful re-openings after the first.")
    open_failures: int = Field(title="Open failures", description="Connection attempts that failed.")
    stalls: int = Field(
        title="Stalls", description="Times the watchdog found no frame for the stall timeout."
    )
    stale_dropped: int = Field(
        title="Stale frames dropped",
        description="Backlog frames discarded (late beyond max_frame_lag_s, or read on an abandoned connection).",
    )
    last_frame_age_s: float | None = Field(
        title="Age of last frame", description="Seconds since the last delivered frame (None: none yet)."
    )
    last_error: str | None = Field(
        title="Last error", description="Why the camera last went down (credentials masked)."
    )
    ts_ms: int = Field(title="Time", description="When the snapshot was taken (epoch ms).")


class CameraEvent(BaseModel):
    """A down/up transition, for the camera worker to publish."""

    model_config = ConfigDict(extra="forbid")

    camera_id: str = Field(title="Camera id", description="Configured camera id.")
    kind: Literal["up", "down"] = Field(title="Kind", description="The camera came up or went down.")
    ts_ms: int = Field(title="Time", description="When the transition was noticed (epoch ms).")
    reason: str = Field(title="Reason", description="Why (credentials masked).")
    url: str = Field(title="URL", description="Stream URL, password masked.")
    reconnects: int = Field(title="Reconnects", description="The reader's reconnect count at the time.")


class CameraOpenError(RuntimeError):
    """The stream could not be opened. The message carries the masked URL only."""


@runtime_checkable
class FrameSource(Protocol):
    """What the camera pipeline consumes: a live camera or a clip, interchangeably."""

    @property
    def source_id(self) -> str: ...

    def start(self) -> Self: ...

    def stop(self, timeout: float = ...) -> None: ...

    def frames(self, stop: threading.Event | None = None) -> Iterator[Frame]:
        """Frames to analyse, at most ``analysed_fps`` per second of the source's time."""
        ...

    def latest(self) -> Frame | None: ...

    def health(self) -> CameraHealth: ...


# --------------------------------------------------------------------------------------------------
# Pure helpers (unit-tested without a camera)
# --------------------------------------------------------------------------------------------------


class Backoff:
    """Exponential reconnection delays: doubling from ``initial`` up to ``maximum``, jittered.

    "Equal jitter": each delay is drawn uniformly from [d/2, d], so many cameras that failed
    together spread their retries, and the wait never exceeds ``maximum``.
    """

    def __init__(
        self, initial: float, maximum: float, *, factor: float = 2.0, rng: random.Random | None = None
    ):
        self.initial = initial
        self.maximum = maximum
        self.factor = factor
        self._rng = rng or random.Random()
        self._attempt = 0

    def next(self) -> float:
        d = min(self.maximum, self.initial * self.factor**self._attempt)
        self._attempt += 1
        return d * (0.5 + 0.5 * self._rng.random())

    def reset(self) -> None:
        self._attempt = 0


class LagFilter:
    """Tells live frames from backlog by comparing stream time with the clock.

    ``lag = arrival (monotonic s) - stream timestamp (s)``.  Frames paced by the camera arrive with
    a nearly constant lag; a backlog released after a hiccup is decoded faster than real time, so
    its frames arrive with a lag up to the length of the hiccup.  ``accept()`` is False for a frame
    whose lag exceeds the best (lowest) lag seen by more than ``max_lag_s``.  The baseline follows
    a lower lag at once and may creep up by ``drift`` seconds per second (camera clocks and declared
    frame rates are not exact).  A timestamp that jumps back (the camera restarted its clock) starts
    a new baseline.  Frames without a usable timestamp are accepted: the stall watchdog still
    guards them.
    """

    def __init__(self, max_lag_s: float, *, drift: float = 0.01, jump_back_s: float = 1.0) -> None:
        self.max_lag_s = max_lag_s
        self.drift = drift
        self.jump_back_s = jump_back_s
        self._base: float | None = None
        self._last_mono = 0.0
        self._last_pts = -math.inf

    def accept(self, mono: float, pts_s: float | None) -> bool:
        if pts_s is None or not math.isfinite(pts_s) or pts_s < 0:
            return True
        lag = mono - pts_s
        if self._base is None or pts_s < self._last_pts - self.jump_back_s or lag <= self._base:
            self._base = lag
        else:
            self._base = min(lag, self._base + max(0.0, mono - self._last_mono) * self.drift)
        self._last_mono = mono
        self._last_pts = pts_s
        return lag - self._base <= self.max_lag_s


class _RateMeter:
    """Frames per second over a sliding window of monotonic times."""

    def __init__(self, window_s: float = 5.0) -> None:
        self.window_s = window_s
        self._times: deque[float] = deque()

    def add(self, mono: float) -> None:
        self._times.append(mono)
        self._prune(mono)

    def _prune(self, now: float) -> None:
        while self._times and self._times[0] < now - self.window_s:
            self._times.popleft()

    def rate(self, now: float) -> float:
        self._prune(now)
        n = len(self._times)
        if n < 2:
            return 0.0
        # Up to now rather than to the last frame, so a stalled camera's rate decays to 0.
        span = max(now - self._times[0], self._times[-1] - self._times[0])
        return (n - 1) / span if span > 0 else 0.0


def _default_capture_factory(url: str, params: list[int]) -> Any:
    return cv2.VideoCapture(url, cv2.CAP_FFMPEG, params)


def _emit(
    event: CameraEvent, on_event: Callable[[CameraEvent], object] | None, q: queue.Queue[CameraEvent] | None
) -> None:
    if on_event is not None:
        try:
            on_event(event)
        except Exception:  # a faulty listener must not kill the camera's thread
            log.exception("camera %s: on_event callback failed", event.camera_id)
    if q is not None:
        try:
            q.put_nowait(event)
        except queue.Full:
            log.warning("camera %s: event queue full, %s event not queued", event.camera_id, event.kind)


# --------------------------------------------------------------------------------------------------
# The live reader
# --------------------------------------------------------------------------------------------------


class CameraReader:
    """One live camera: a reader thread keeping the latest frame, a watchdog, health and events.

    >>> with CameraReader(cfg, on_event=print) as cam:      # doctest: +SKIP
    ...     for frame in cam.frames():                      # at most cfg.analysed_fps per second
    ...         detect(frame.image)
    """

    def __init__(
        self,
        cfg: CameraSourceConfig,
        *,
        clock: Clock = SYSTEM_CLOCK,
        on_event: Callable[[CameraEvent], object] | None = None,
        event_queue: queue.Queue[CameraEvent] | None = None,
        url: SecretUrl | None = None,
        capture_factory: Callable[[str, list[int]], Any] | None = None,
        rng: random.Random | None = None,
    ) -> None:
        """``url`` overrides ``cfg.resolve_url()`` (which reads the password from the environment).

        ``capture_factory(url, params)`` replaces ``cv2.VideoCapture(url, cv2.CAP_FFMPEG, params)``
        (tests inject fakes); the object needs ``isOpened()``, ``grab()``, ``retrieve()``, ``get()``,
        ``release()``.
        """
        self.cfg = cfg
        self.clock = clock
        self._url = url if url is not None else cfg.resolve_url()
        self._on_event = on_event
        self._event_queue = event_queue
        self._capture_factory = capture_factory or _default_capture_factory
        self._backoff = Backoff(cfg.backoff_initial_s, cfg.backoff_max_s, rng=rng)

        self._lock = threading.Lock()  # guards everything below; never held during I/O
        self._new_frame = threading.Condition(self._lock)
        self._transition_lock = threading.Lock()  # orders state changes and their events
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

        self._state: CameraState = "starting"
        self._latest: Frame | None = None
        self._waiters = 0  # consumers blocked in wait_frame(): the next frame read becomes an image
        self._seq = 0
        self._session = 0  # number of the current capture session (0: none open)
        self._session_open_mono = 0.0
        self._session_frames = 0
        self._abandoned_session = 0  # the session the watchdog gave up on
        self._last_frame_mono: float | None = None
        self._rate = _RateMeter()
        self._frames = 0
        self._opens = 0
        self._open_failures = 0
        self._stalls = 0
        self._stale_dropped = 0
        self._last_error: str | None = None

    # ---- public API ------------------------------------------------------------------------------

    @property
    def source_id(self) -> str:
        return self.cfg.id

    @property
    def url(self) -> str:
        """The stream URL, password masked (safe to log)."""
        return self._url.masked

    @property
    def state(self) -> CameraState:
        return self._state

    def start(self) -> Self:
        """Start the reader and watchdog threads (returns at once; the camera may still be offline)."""
        if self._threads:
            raise RuntimeError(f"camera {self.cfg.id} already started")
        ensure_ffmpeg_capture_options()
        self._stop.clear()
        with self._lock:
            self._state = "starting"
        self._threads = [
            threading.Thread(target=self._reader_main, name=f"camera-{self.cfg.id}", daemon=True),
            threading.Thread(target=self._watchdog_main, name=f"camera-{self.cfg.id}-watchdog", daemon=True),
        ]
        for t in self._threads:
            t.start()
        log.info("camera %s: reader started for %s", self.cfg.id, self.url)
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the threads.  A read stuck in FFmpeg can outlive ``timeout`` (the thread is a daemon
        and releases its capture when the read returns)."""
        self._stop.set()
        with self._new_frame:
            self._new_frame.notify_all()
        deadline = time.monotonic() + timeout
        for t in self._threads:
            t.join(max(0.0, deadline - time.monotonic()))
            if t.is_alive():
                log.warning(
                    "camera %s: thread %s still busy after %.1fs (stuck read)", self.cfg.id, t.name, timeout
                )
        self._threads = []
        with self._transition_lock, self._lock:
            self._state = "stopped"
        log.info("camera %s: reader stopped", self.cfg.id)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def latest(self) -> Frame | None:
        """The newest frame (None before the first).  After the camera goes down this stays the last
        good frame: check ``frame.mono`` / ``health().last_frame_age_s`` before trusting it."""
        with self._lock:
            return self._latest

    def wait_frame(
        self, after_seq: int = 0, timeout: float | None = None, *, read_after: float | None = None
    ) -> Frame | None:
        """The newest frame with ``seq > after_seq``, waiting up to ``timeout`` s (None: no frame).

        ``read_after`` (``clock.monotonic()`` time): only a frame read at or after it will do. While
        a caller waits, the reader makes an image of the next frame it reads (see
        ``idle_retrieve_interval_s``), so the wait is at most one frame interval.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._new_frame:
            self._waiters += 1
            try:
                while not self._stop.is_set():
                    f = self._latest
                    if f is not None and f.seq > after_seq and (read_after is None or f.mono >= read_after):
                        return f
                    remaining = None if deadline is None else deadline - time.monotonic()
                    if remaining is not None and remaining <= 0:
                        return None
                    self._new_frame.wait(remaining)
            finally:
                self._waiters -= 1
        return None

    def frames(self, stop: threading.Event | None = None) -> Iterator[Frame]:
        """Newest frames, at most ``analysed_fps`` per second, until ``stop`` is set or the reader stops.

        Frames that arrived meanwhile are skipped (never queued): a slow consumer always gets the
        most recent picture.  While the camera is down this simply waits.
        """
        period = 1.0 / self.cfg.analysed_fps
        last_seq = 0
        next_due = time.monotonic()
        fresh = self.cfg.idle_retrieve_interval_s > 0
        read_after: float | None = None
        while not self._stop.is_set() and not (stop is not None and stop.is_set()):
            wait = next_due - time.monotonic()
            if wait > 0:
                (stop or self._stop).wait(wait)
                continue
            if fresh and read_after is None:
                # the newest image may be up to idle_retrieve_interval_s old: ask for the next frame
                read_after = self.clock.monotonic()
            f = self.wait_frame(last_seq, timeout=0.25, read_after=read_after)
            if f is None:
                continue
            last_seq = f.seq
            read_after = None
            # Pace by slots, not by "period after the last one", so the average rate is the
            # configured one even though each frame arrives a little after its slot.
            next_due = max(next_due + period, time.monotonic() - period)
            yield f

    def health(self) -> CameraHealth:
        now = self.clock.monotonic()
        with self._lock:
            age = None if self._last_frame_mono is None else max(0.0, now - self._last_frame_mono)
            return CameraHealth(
                camera_id=self.cfg.id,
                url=self.url,
                state=self._state,
                up=self._state == "up",
                fps=round(self._rate.rate(now), 3),
                frames=self._frames,
                reconnects=max(0, self._opens - 1),
                open_failures=self._open_failures,
                stalls=self._stalls,
                stale_dropped=self._stale_dropped,
                last_frame_age_s=None if age is None else round(age, 3),
                last_error=self._last_error,
                ts_ms=self.clock.now_ms(),
            )

    def __repr__(self) -> str:
        return f"<CameraReader {self.cfg.id} {self.url} {self._state}>"

    # ---- state transitions -----------------------------------------------------------------------

    def _set_state(self, new: Literal["up", "down"], reason: str) -> None:
        """Change state; emit an event on starting/up -> down and starting/down -> up."""
        reason = self._url.scrub(reason)
        with self._transition_lock:
            with self._lock:
                old = self._state
                if old in ("stopped", new) or self._stop.is_set():
                    if new == "down":
                        self._last_error = reason
                    return
                self._state = new
                if new == "down":
                    self._last_error = reason
                reconnects = max(0, self._opens - 1)
            event = CameraEvent(
                camera_id=self.cfg.id,
                kind=new,
                ts_ms=self.clock.now_ms(),
                reason=reason,
                url=self.url,
                reconnects=reconnects,
            )
            if new == "down":
                log.warning("camera %s: DOWN (%s): %s", self.cfg.id, reason, self.url)
            else:
                log.info("camera %s: UP (%s): %s", self.cfg.id, reason, self.url)
            # Still under the transition lock, so listeners see down/up in the order they happened.
            _emit(event, self._on_event, self._event_queue)

    # ---- reader thread ---------------------------------------------------------------------------

    def open_capture(self) -> Any:
        """Open the stream once (blocking up to ``open_timeout_s``); raise :class:`CameraOpenError`.

        The reader thread uses it; it is public for one-off checks (``gridwatch camera check``).
        The caller owns the returned capture and must ``release()`` it.
        """
        params = [
            cv2.CAP_PROP_OPEN_TIMEOUT_MSEC,
            int(self.cfg.open_timeout_s * 1000),
            cv2.CAP_PROP_READ_TIMEOUT_MSEC,
            int(self.cfg.read_timeout_s * 1000),
        ]
        if self.cfg.decode_threads:
            params += [cv2.CAP_PROP_N_THREADS, self.cfg.decode_threads]
        t0 = time.monotonic()
        try:
            cap = self._capture_factory(self._url.reveal(), params)
        except Exception as e:  # cv2.error and friends: their text is not ours, scrub it
            raise CameraOpenError(
                f"camera {self.cfg.id}: cannot open {self.url}: {self._url.scrub(f'{type(e).__name__}: {e}')}"
            ) from None
        if not cap.isOpened():
            with contextlib.suppress(Exception):
                cap.release()
            raise CameraOpenError(
                f"camera {self.cfg.id}: cannot open {self.url} "
                f"(no answer, refused or not authorised, after {time.monotonic() - t0:.1f}s)"
            )
        return cap

    def _reader_main(self) -> None:
        # An unexpected error (a bug, a library surprise) must not leave the camera dead for good:
        # report it (scrubbed: the text is not ours), then start over after a backoff delay.
        while not self._stop.is_set():
            try:
                self._reader_loop()
                return
            except Exception as e:
                msg = self._url.scrub(f"{type(e).__name__}: {e}")
                log.error("camera %s: reader loop failed, restarting it: %s", self.cfg.id, msg)
                self._set_state("down", f"reader failed: {msg}")
                self._stop.wait(self._backoff.next())

    def _reader_loop(self) -> None:
        delay = 0.0
        while not self._stop.is_set():
            if delay and self._stop.wait(delay):
                return
            try:
                cap = self.open_capture()
            except CameraOpenError as e:
                with self._lock:
                    self._open_failures += 1
                    failures = self._open_failures
                delay = self._backoff.next()
                # The first failure and then every tenth at WARNING: an offline camera retries forever.
                level = logging.WARNING if failures == 1 or failures % 10 == 0 else logging.DEBUG
                log.log(level, "%s; retrying in %.1fs (failure %d)", e, delay, failures)
                self._set_state("down", str(e))  # built from the masked URL only
                continue
            try:
                delivered = self._read_session(cap)
            finally:
                with self._lock:
                    self._session = 0
                try:
                    cap.release()
                except Exception as e:  # noqa: BLE001 - closing a broken stream may fail; we move on
                    log.debug("camera %s: release failed: %s", self.cfg.id, self._url.scrub(str(e)))
            # A session that delivered frames ended (camera gone or stalled): try again at once,
            # then back off.  One that delivered nothing counts as a failed attempt.
            if delivered:
                self._backoff.reset()
                delay = 0.0
            else:
                delay = self._backoff.next()
            if not self._stop.is_set():
                log.info("camera %s: reconnecting in %.1fs", self.cfg.id, delay)

    def _read_session(self, cap: Any) -> int:
        """Read one opened capture until it fails, stalls or we stop; return frames delivered."""
        mono = self.clock.monotonic()
        with self._lock:
            self._opens += 1
            session = self._opens
            self._session = session
            self._session_open_mono = mono
            self._session_frames = 0
        log.info("camera %s: stream opened (session %d): %s", self.cfg.id, session, self.url)
        lag = LagFilter(self.cfg.max_frame_lag_s)
        idle_interval = self.cfg.idle_retrieve_interval_s
        delivered = 0
        image: np.ndarray | None = None
        while not self._stop.is_set():
            # grab() reads and decodes; retrieve() (below, only when an image is wanted) converts
            # the decoded picture to a BGR image: 0.40 + 0.14 ms of a core for a 640x480 frame
            ok = cap.grab()
            mono = self.clock.monotonic()
            if self._abandoned_session == session:
                # The watchdog gave up on this connection while we were blocked in read(): anything
                # it delivers now is backlog from before the stall.  Drop it and reconnect.
                if ok:
                    with self._lock:
                        self._stale_dropped += 1
                log.info("camera %s: discarding the stalled connection (session %d)", self.cfg.id, session)
                return delivered
            if not ok:
                self._set_state("down", "stream ended or read failed")
                return delivered
            pts_ms = _finite_or_none(cap.get(cv2.CAP_PROP_POS_MSEC))
            if not lag.accept(mono, None if pts_ms is None else pts_ms / 1000.0):
                with self._lock:
                    self._stale_dropped += 1
                continue
            with self._lock:
                last = self._latest
                want = (
                    not idle_interval
                    or self._waiters > 0
                    or delivered == 0  # the first frame of a session: the newest image is older
                    or last is None
                    or mono - last.mono >= idle_interval
                )
            if want:
                ok, image = cap.retrieve()
                if not ok or image is None:
                    self._set_state("down", "stream ended or read failed")
                    return delivered
            now_ms = self.clock.now_ms()
            with self._new_frame:
                self._seq += 1
                if want:
                    self._latest = Frame(self.cfg.id, self._seq, now_ms, image, mono, pts_ms)
                    self._new_frame.notify_all()
                self._last_frame_mono = mono
                self._session_frames += 1
                self._frames += 1
                self._rate.add(mono)
            delivered += 1
            if delivered == 1:
                self._set_state("up", f"first frame of session {session}")
        return delivered

    # ---- watchdog thread -------------------------------------------------------------------------

    def _watchdog_main(self) -> None:
        tick = min(0.25, self.cfg.stall_timeout_s / 4)
        while not self._stop.wait(tick):
            now = self.clock.monotonic()
            with self._lock:
                session = self._session
                if not session or self._abandoned_session == session:
                    continue
                since = self._session_open_mono
                if self._session_frames and self._last_frame_mono is not None:
                    since = max(since, self._last_frame_mono)
                quiet = now - since
                if quiet < self.cfg.stall_timeout_s:
                    continue
                self._abandoned_session = session
                self._stalls += 1
            self._set_state("down", f"no frame for {quiet:.1f}s (stalled)")


def _finite_or_none(v: float) -> float | None:
    return v if math.isfinite(v) else None


# --------------------------------------------------------------------------------------------------
# File source
# --------------------------------------------------------------------------------------------------


class FileSource:
    """A local clip behind the :class:`FrameSource` interface, for labelled clips and replays.

    Frames are decoded on demand in the consumer's thread (nothing is dropped, nothing waits for
    the wall clock) and stamped with the clip's own time: ``ts_ms = epoch_ms + round(index * 1000 /
    fps)``, ``pts_ms = index * 1000 / fps``, ``index`` = the frame's index in the clip.  ``fps``
    defaults to the container's frame rate.  ``analysed_fps`` keeps the frames that fall on the
    analysis slots, as the live reader's consumers would see them; None keeps every frame.
    """

    def __init__(
        self,
        path: Path | str,
        source_id: str,
        *,
        analysed_fps: float | None = None,
        fps: float | None = None,
        epoch_ms: int = 0,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self.path = Path(path)
        self._source_id = source_id
        self.analysed_fps = analysed_fps
        self._fps_override = fps
        self.epoch_ms = epoch_ms
        self.clock = clock
        self.fps: float | None = fps
        self.frame_count: int | None = None
        self._latest: Frame | None = None
        self._frames = 0
        self._state: CameraState = "starting"
        self._last_error: str | None = None
        self._rate = _RateMeter()
        self._stopped = threading.Event()

    @property
    def source_id(self) -> str:
        return self._source_id

    def start(self) -> Self:
        if not self.path.is_file():
            raise CameraOpenError(f"source {self._source_id}: no such file {self.path}")
        self._stopped.clear()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        self._stopped.set()
        self._state = "stopped"

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def latest(self) -> Frame | None:
        return self._latest

    def frames(self, stop: threading.Event | None = None) -> Iterator[Frame]:
        """Every frame of the clip (or those on the ``analysed_fps`` slots), as fast as they are taken."""
        cap = cv2.VideoCapture(str(self.path), cv2.CAP_FFMPEG)
        if not cap.isOpened():
            self._state = "down"
            self._last_error = "cannot open the file"
            raise CameraOpenError(f"source {self._source_id}: cannot open {self.path}")
        try:
            fps = self._fps_override or cap.get(cv2.CAP_PROP_FPS)
            if not fps or not math.isfinite(fps) or fps <= 0:
                raise CameraOpenError(
                    f"source {self._source_id}: {self.path} declares no frame rate; pass fps="
                )
            self.fps = fps
            count = cap.get(cv2.CAP_PROP_FRAME_COUNT)
            self.frame_count = int(count) if count and count > 0 else None
            self._state = "up"
            step_ms = 1000.0 / self.analysed_fps if self.analysed_fps else 0.0
            next_slot_ms = 0.0
            index = -1
            while not self._stopped.is_set() and not (stop is not None and stop.is_set()):
                index += 1
                clip_ms = index * 1000.0 / fps
                # Half a frame of tolerance, so 25 fps analysed at 5 fps keeps exactly every 5th.
                wanted = not step_ms or clip_ms + 500.0 / fps >= next_slot_ms
                if not wanted:
                    if not cap.grab():  # decodes, but skips the colour conversion
                        break
                    continue
                ok, image = cap.read()
                if not ok or image is None:
                    break
                if step_ms:
                    next_slot_ms += step_ms
                    while next_slot_ms + 500.0 / fps <= clip_ms:  # never let slots fall behind
                        next_slot_ms += step_ms
                mono = self.clock.monotonic()
                self._frames += 1
                self._rate.add(mono)
                frame = Frame(
                    self._source_id,
                    self._frames,
                    self.epoch_ms + round(clip_ms),
                    image,
                    mono,
                    clip_ms,
                    index,
                )
                self._latest = frame
                yield frame
        finally:
            cap.release()
            if self._state == "up":
                self._state = "down"
                self._last_error = "end of clip"

    def health(self) -> CameraHealth:
        now = self.clock.monotonic()
        f = self._latest
        return CameraHealth(
            camera_id=self._source_id,
            url=mask_url(self.path.as_uri()) if self.path.is_absolute() else str(self.path),
            state=self._state,
            up=self._state == "up",
            fps=round(self._rate.rate(now), 3),
            frames=self._frames,
            reconnects=0,
            open_failures=0,
            stalls=0,
            stale_dropped=0,
            last_frame_age_s=None if f is None else round(max(0.0, now - f.mono), 3),
            last_error=self._last_error,
            ts_ms=self.clock.now_ms(),
        )


# --------------------------------------------------------------------------------------------------
# InfluxDB
# --------------------------------------------------------------------------------------------------


def health_lines(healths: Iterable[CameraHealth], ts_ms: int | None = None) -> list[str]:
    """``camera_health`` lines (tag ``camera_id``; fields ``up``, ``fps``, ``reconnects``,
    ``last_frame_age_s``, ``stale_dropped``, plus ``frames``, ``stalls``, ``open_failures``).

    ``last_frame_age_s`` is left out until a first frame has arrived (an absent field, not a fake 0).
    ``ts_ms`` defaults to each snapshot's own time.
    """
    out = []
    for h in healths:
        fields: dict[str, Any] = {
            "up": h.up,
            "fps": float(h.fps),
            "reconnects": h.reconnects,
            "last_frame_age_s": None if h.last_frame_age_s is None else float(h.last_frame_age_s),
            "stale_dropped": h.stale_dropped,
            "frames": h.frames,
            "stalls": h.stalls,
            "open_failures": h.open_failures,
        }
        out.append(
            line("camera_health", {"camera_id": h.camera_id}, fields, h.ts_ms if ts_ms is None else ts_ms)
        )
    return out
