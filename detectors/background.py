"""Left-object (static foreground) detection with two background models.

COCO detectors do not see a bag of rubbish, a mattress or a pile of rubble, so the dumping rule
leans on the classic dual-background method (Porikli et al., "Robust abandoned object detection
using dual foregrounds"): two running-average backgrounds of the (small, grey, blurred) frame,

* a *short* one (time constant `short_tau_s`, a few seconds) that absorbs anything that stops
  moving, and
* a *long* one (`long_tau_s`, minutes) that is updated only where nothing moves, so it still
  remembers the scene before the object arrived.

A pixel that is foreground against the long model but background against the short one is
*static*: something arrived and stopped. Each pixel remembers since when it has been static
(`pixel_gap_s` tolerates a person walking in front of the object; a pixel that shows the old
background again is reset at once: the object was taken away), and connected regions of static
pixels become `StaticBlob`s whose age is the median of their pixels' since-times (deterministic,
so a replay gives the same candidate id).

Guards, each against a known false alarm of this method:

* lighting: the long model is compared after a global gain correction (mean brightness of the
  short model over the long model's), so auto-exposure and a cloud over the sun do not make the
  whole frame "static"; if a non-uniform change still makes more than `max_static_fraction` of
  the frame static, the scene has changed as a whole: the long model is re-seeded from the short
  one and no blob is reported; while more than `max_changed_fraction` of the frame differs from
  the short model (a sudden change in progress) nothing is reported either;
* ghosts: an object that *leaves* (a car parked since start-up, a person in the first frame)
  leaves a static region too. Its outline has edges in the old background, not in the current
  frame; such blobs (`frame edges < removed_edge_ratio x background edges` on the blob's rim)
  are healed into the long model at once and never reported;
* start-up: during the first `warmup_s` the long model is a plain running mean, so whatever was
  in the first frame fades in seconds, not minutes.

What stays long enough is absorbed by the long model too: a blob of contrast C stays visible for
about `long_tau_s x ln(C / diff_threshold)` seconds (300 s x ln(80/22) = 6 min), which is the
upper bound for a dumping rule's `dwell_s`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator


class BackgroundConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    width: int = Field(
        320,
        ge=64,
        le=1920,
        title="Analysis width",
        description="Frames are shrunk to this width (aspect kept) before modelling: ~0.25 Mpx is enough for "
        "objects of a few hundred pixels and keeps the path at a few ms per frame.",
    )
    blur_px: int = Field(
        5, ge=1, le=15, title="Blur", description="Gaussian kernel (odd) against sensor noise."
    )
    short_tau_s: float = Field(
        3.0,
        gt=0,
        title="Short time constant",
        description="Seconds for the short model to absorb a stopped object (it shows as static after "
        "this x ln(contrast / diff_threshold), 2-6 s at the default).",
    )
    long_tau_s: float = Field(
        300.0,
        gt=0,
        title="Long time constant",
        description="Seconds for the long model to absorb a stopped object; must exceed dumping dwell times.",
    )
    warmup_s: float = Field(
        10.0,
        ge=0,
        title="Warm-up",
        description="Seconds after start during which the long model is a running mean.",
    )
    diff_threshold: float = Field(
        22.0,
        gt=0,
        le=255,
        title="Difference threshold",
        description="Grey levels (0-255) that count as change.",
    )
    pixel_gap_s: float = Field(
        3.0,
        ge=0,
        title="Pixel gap",
        description="A static pixel may be non-static (occluded by a passer-by) this long and keep its age.",
    )
    min_blob_px: float = Field(
        120.0,
        gt=0,
        title="Min blob",
        description="Smallest blob reported, square pixels of the original frame.",
    )
    max_static_fraction: float = Field(
        0.25,
        gt=0,
        le=1,
        title="Max static fraction",
        description="More of the frame static than this: the scene changed as a whole (lighting); re-seed.",
    )
    max_changed_fraction: float = Field(
        0.5,
        gt=0,
        le=1,
        title="Max changed fraction",
        description="More of the frame differing from the short model than this: a sudden global change is "
        "in progress; report nothing.",
    )
    removed_edge_ratio: float = Field(
        0.85,
        gt=0,
        le=2,
        title="Removed-object edge ratio",
        description="A blob whose rim has fewer edges in the frame than this x in the long background is a "
        "ghost of something that left; it is healed, never reported.",
    )

    @field_validator("blur_px")
    @classmethod
    def _odd(cls, v: int) -> int:
        if v % 2 == 0:
            raise ValueError("blur_px must be odd (a Gaussian kernel has a centre pixel)")
        return v


@dataclass(frozen=True, slots=True)
class StaticBlob:
    box: tuple[float, float, float, float]  # xyxy in original-frame pixels
    area_px: float  # original-frame square pixels
    since_ms: int  # median time its pixels became static
    edge_ratio: float  # rim edges frame / background (> 1: something is there now)


@dataclass(slots=True)
class StaticForeground:
    """What the background path saw in one frame, for the dumping rule."""

    ts_ms: int
    blobs: list[StaticBlob] = field(default_factory=list)
    changed_fraction: float = 0.0  # of the frame, against the short model
    static_fraction: float = 0.0
    global_change: bool = False  # frame unusable for left-object analysis
    reseeded: bool = False
    ghosts_healed: int = 0


class DualBackground:
    """Dual running-average background model. Feed frames in time order; `apply` is per frame."""

    def __init__(self, cfg: BackgroundConfig | None = None) -> None:
        self.cfg = cfg or BackgroundConfig()
        self._short: np.ndarray | None = None
        self._long: np.ndarray | None = None
        self._since: np.ndarray | None = None  # int64 ms, 0 = not static
        self._last_static: np.ndarray | None = None
        self._first_ts = 0
        self._prev_ts = 0
        self._scale = 1.0  # small px per original px
        self._kernel = np.ones((3, 3), np.uint8)

    @property
    def scale(self) -> float:
        return self._scale

    def _prepare(self, frame: np.ndarray) -> np.ndarray:
        h, w = frame.shape[:2]
        self._scale = self.cfg.width / w
        size = (self.cfg.width, max(1, round(h * self._scale)))
        grey = frame if frame.ndim == 2 else cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY)
        small = cv2.resize(grey, size, interpolation=cv2.INTER_AREA)
        k = self.cfg.blur_px
        if k > 1:
            small = cv2.GaussianBlur(small, (k, k), 0)
        return small.astype(np.float32)

    def apply(self, ts_ms: int, frame: np.ndarray) -> StaticForeground:
        small = self._prepare(frame)
        if self._short is None or self._short.shape != small.shape:
            self._short = small.copy()
            self._long = small.copy()
            self._since = np.zeros(small.shape, np.int64)
            self._last_static = np.zeros(small.shape, np.int64)
            self._first_ts = self._prev_ts = ts_ms
            return StaticForeground(ts_ms)
        assert self._long is not None and self._since is not None and self._last_static is not None
        if ts_ms <= self._prev_ts:  # a repeated or out-of-order frame teaches nothing
            return StaticForeground(ts_ms)
        cfg = self.cfg
        dt = (ts_ms - self._prev_ts) / 1000
        self._prev_ts = ts_ms
        a_short = 1 - np.exp(-dt / cfg.short_tau_s)
        a_long = 1 - np.exp(-dt / cfg.long_tau_s)
        elapsed = (ts_ms - self._first_ts) / 1000
        if elapsed < cfg.warmup_s:
            a_long = max(a_long, dt / elapsed)

        short, long = self._short, self._long
        fg_short = cv2.absdiff(small, short) > cfg.diff_threshold
        # gain: global brightness ratio now / then, from the models (not the frame, whose mean moves
        # with whoever walks by); the median ratio over unsaturated pixels, because clipped whites
        # (sky, a white van) do not brighten and pulled a mean-based gain low enough to make the
        # whole pavement differ after a x1.3 exposure step
        s_sub, l_sub = short[::4, ::4], long[::4, ::4]
        ok = (s_sub < 245) & (l_sub < 245) & (l_sub > 8)
        gain = float(np.median(s_sub[ok] / l_sub[ok])) if ok.any() else 1.0
        # the camera clips at white, so must the prediction: a brightened scene saturates
        long_now = np.minimum(long * gain, 255.0)
        fg_long = cv2.absdiff(small, long_now) > cfg.diff_threshold
        static = fg_long & ~fg_short
        static = cv2.morphologyEx(static.astype(np.uint8), cv2.MORPH_OPEN, self._kernel).astype(bool)

        out = StaticForeground(ts_ms)
        out.changed_fraction = float(fg_short.mean())
        out.static_fraction = float(static.mean())

        # the models learn in every case: the short one everywhere, the long one where nothing moves
        cv2.accumulateWeighted(small, short, float(a_short))
        cv2.accumulateWeighted(small, long, float(a_long), mask=(~fg_short).astype(np.uint8))

        if out.static_fraction > cfg.max_static_fraction:
            # the whole scene changed (light), not an object: start the long model afresh
            self._long = short.copy()
            self._since[:] = 0
            self._last_static[:] = 0
            out.global_change = out.reseeded = True
            return out
        if out.changed_fraction > cfg.max_changed_fraction:
            out.global_change = True
            return out

        since, last = self._since, self._last_static
        last[static] = ts_ms
        since[static & (since == 0)] = ts_ms
        # the gap tolerance is for occlusion only (someone walks in front: the pixel differs from both
        # models). A pixel that matches the long model again shows the old scene: the object is gone.
        since[~fg_long] = 0
        since[(~static) & (ts_ms - last > int(cfg.pixel_gap_s * 1000))] = 0
        held = (since > 0).astype(np.uint8)
        n, labels, stats, _ = cv2.connectedComponentsWithStats(held, connectivity=8)
        min_small = cfg.min_blob_px * self._scale**2
        inv = 1 / self._scale
        for i in range(1, n):
            x, y, w, h, area = (int(v) for v in stats[i])
            if area < min_small:
                continue
            sl = (slice(y, y + h), slice(x, x + w))
            mask = labels[sl] == i
            ratio = self._edge_ratio(small, long_now, labels, i, x, y, w, h)
            if ratio < cfg.removed_edge_ratio:
                # something left (a ghost): the current frame is the true background there
                long[sl][mask] = small[sl][mask]
                since[sl][mask] = 0
                last[sl][mask] = 0
                out.ghosts_healed += 1
                continue
            out.blobs.append(
                StaticBlob(
                    box=(x * inv, y * inv, (x + w) * inv, (y + h) * inv),
                    area_px=area * inv * inv,
                    since_ms=int(np.median(since[sl][mask])),
                    edge_ratio=ratio,
                )
            )
        return out

    def _edge_ratio(
        self, small: np.ndarray, bg: np.ndarray, labels: np.ndarray, i: int, x: int, y: int, w: int, h: int
    ) -> float:
        # rim of the blob (dilated minus eroded), on a window with a margin
        H, W = labels.shape
        x0, y0, x1, y1 = max(x - 3, 0), max(y - 3, 0), min(x + w + 3, W), min(y + h + 3, H)
        m = (labels[y0:y1, x0:x1] == i).astype(np.uint8)
        rim = cv2.dilate(m, self._kernel, iterations=2) & (1 - cv2.erode(m, self._kernel, iterations=1))
        if not rim.any():
            return 1.0
        rb = rim.astype(bool)
        e_frame = _grad(small[y0:y1, x0:x1])[rb].mean()
        e_bg = _grad(bg[y0:y1, x0:x1])[rb].mean()
        return float(e_frame / max(e_bg, 1e-3))


def _grad(img: np.ndarray) -> np.ndarray:
    gx = cv2.Sobel(img, cv2.CV_32F, 1, 0, ksize=3)
    gy = cv2.Sobel(img, cv2.CV_32F, 0, 1, ksize=3)
    return np.abs(gx) + np.abs(gy)
