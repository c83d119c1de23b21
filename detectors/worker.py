"""The camera worker: `gridwatch cameras worker`. Every configured camera, one process.

    RTSP --> CameraReader (ingest/camera.py; latest frame, watchdog) --> CameraPipeline (motion gate,
    detector, tracker, zones, rules, evidence) --> gridwatch.incident.candidates (Kafka)
    camera up/down --> gridwatch.camera.events (Kafka) + camera_event (InfluxDB)
    health --> camera_health, pipeline_health (InfluxDB)
    shadow (cameras.shadow) --> the same frames through the registry's `shadow` detector and its own
        rules --> record files only (detectors/shadow.py; never Kafka, never dispatched)

One thread per camera runs its pipeline on the newest frame at the camera's analysed rate (a slow
camera never holds up another: frames are taken, never queued). The detector is shared; a
semaphore bounds concurrent inferences to the cores. Candidates go through a bounded queue to one
Kafka producer: while Kafka is away they wait there; if the bound is reached the loss is counted
(`candidates_dropped`) and logged, never silent.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from collections import deque
from typing import Any

import cv2

from gridwatch.clock import SYSTEM_CLOCK, Clock
from gridwatch.codec import decode_event, encode_event
from gridwatch.config import CameraConfig, GridwatchConfig, VerifierConfig
from gridwatch.detectors.base import Detector
from gridwatch.detectors.evidence import EvidenceStore, FrameRing, RingFrame, resolve_frame_request
from gridwatch.detectors.pipeline import CameraPipeline
from gridwatch.detectors.shadow import ShadowRecorder, ShadowRun
from gridwatch.detectors.verification import ZoneVerification
from gridwatch.influx import InfluxSink, health_lines, line
from gridwatch.ingest.camera import CameraEvent, CameraReader
from gridwatch.ingest.camera import health_lines as camera_health_lines
from gridwatch.kafka import consumer_settings, ensure_topics, make_producer
from gridwatch.model_registry import DeployedModel, read_deployed
from gridwatch.schemas import IncidentCandidate, IncidentCommandEvent, Location, VerifyRequest
from gridwatch.stats import percentile
from gridwatch.topics import CAMERA_EVENTS, INCIDENT_CANDIDATES, INCIDENT_COMMANDS, VERIFY_REQUESTS

log = logging.getLogger(__name__)

__all__ = ["CameraWorker"]

MAX_PENDING = 10_000


class CameraWorker:
    def __init__(
        self,
        cfg: GridwatchConfig,
        *,
        clock: Clock = SYSTEM_CLOCK,
        detector: Detector | None = None,
        kafka: bool = True,
        instance: str = "cameras-0",
    ) -> None:
        self.cfg = cfg
        self.clock = clock
        self.instance = instance
        cams = cfg.cameras
        needs_detector = any(f.detect for f in cams.feeds)
        #: the registry versions now running (follow_registry: the detector's and the verifier's
        #: production pointers), and a pair that failed to load (not retried until a pointer moves)
        self.deployed_version: int | None = None
        self.verifier_version: int | None = None
        self._failed: tuple[int | None, int | None] | None = None
        self.counters = {
            "candidates": 0,
            "candidates_sent": 0,
            "candidates_dropped": 0,
            "events": 0,
            "errors": 0,
            "model_swaps": 0,
            "model_swap_errors": 0,
            "verifier_errors": 0,
        }
        if detector is None and needs_detector:
            d, v = self._registry_pointers()
            detector = self._build_detector(
                self._detector_config(d.path) if d else cams.detector, v.path if v else None
            )
            self.deployed_version = d.version if d else None
            self.verifier_version = v.version if v else None
        self.detector = detector
        self.inference = threading.Semaphore(cams.inference_slots or os.cpu_count() or 1)
        self.evidence = EvidenceStore(cams.evidence)
        #: missed reports (docs/DISPATCH.md): each camera's recent analysed frames, and the counts
        #: of the frame requests it answered. Kept only where a hard-example store can ask for them:
        #: each one costs a JPEG encode per analysed frame
        self.recent_frames: dict[str, FrameRing] = {
            f.source.id: FrameRing(
                cams.evidence.recent_frames_s, int(cams.evidence.recent_frames_max_mb * 2**20)
            )
            for f in cams.feeds
            if cams.evidence.recent_frames_s > 0 and cfg.dispatch.hard_examples_dir is not None
        }
        self.frame_request_poll_s = 2.0
        self.counters.update(
            missed_frames_filled=0, missed_frames_unavailable=0, missed_frame_errors=0,
            recent_frames_evicted_age=0, recent_frames_evicted_memory=0, recent_frames_bytes=0,
        )  # fmt: skip
        self.kafka = kafka
        self.readers: dict[str, CameraReader] = {}
        self.pipelines: dict[str, CameraPipeline] = {}
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pending: asyncio.Queue[tuple[str, bytes, bytes]] | None = None
        self._influx: InfluxSink | None = None  # made in run(), on the event loop
        self.latency_ms: deque[float] = deque(maxlen=5000)  # frame capture -> candidate emitted
        self.frame_latency_ms: deque[float] = deque(maxlen=20000)  # frame capture -> analysis done
        self.candidates: list[IncidentCandidate] = []  # the most recent, for tests and the demo
        self.verifications: dict[str, list[ZoneVerification]] = {}
        self.verified: list[tuple[str, bool]] = []
        self._verify_lock = threading.Lock()
        for feed in cams.feeds:
            self._add(feed)
        #: the shadow run (cameras.shadow): the registry's `shadow` detector, recorded, never sent
        self.shadow: ShadowRun | None = None
        self._failed_shadow: int | None = None
        if cams.shadow.enabled and self.detector is not None:
            self._start_shadow()

    def _add(self, feed: CameraConfig) -> None:
        cid = feed.source.id
        self.readers[cid] = CameraReader(feed.source, clock=self.clock, on_event=self._on_event)
        loc = Location(lon=feed.location.lon, lat=feed.location.lat) if feed.location else None
        self.pipelines[cid] = CameraPipeline(
            feed.rules,
            self.detector if feed.detect else None,
            self.cfg.cameras.motion,
            self.evidence,
            location=loc,
            inference=self.inference,
        )

    # --- the shadow run ------------------------------------------------------------------------
    def _start_shadow(self) -> None:
        cams = self.cfg.cameras
        chosen = set(cams.shadow.cameras) if cams.shadow.cameras is not None else None
        feeds = {
            f.source.id: (f.rules, f.source.analysed_fps)
            for f in cams.feeds
            if f.detect and (chosen is None or f.source.id in chosen)
        }
        shadow = ShadowRun(
            feeds, cams.motion, ShadowRecorder(cams.shadow.record_dir),
            frame_share=cams.shadow.frame_share, inference=self.inference,
        )  # fmt: skip
        assert self.detector is not None
        shadow.set_production_model(self.detector.model_version)
        self.shadow = shadow
        try:
            d = read_deployed(self.cfg.models.registry_dir, "detector", "shadow")
        except Exception as e:  # an unreadable pointer is the shadow's problem, not production's
            shadow.counters["shadow_errors"] += 1
            log.error(
                "cameras: shadow pointer unreadable (%s: %s); production continues", type(e).__name__, e
            )
            d = None
        if d is not None:  # else it starts when the registry's shadow pointer appears
            new = self._load_shadow(d.version, d.path)
            if new is not None:
                shadow.set_detector(new, d.version)

    def _load_shadow(self, version: int, path: Any) -> Detector | None:
        """The shadow's detector, or None (logged, counted) when it does not load: production goes on."""
        assert self.shadow is not None
        try:
            return self._build_detector(self._detector_config(path))
        except Exception as e:  # a broken shadow must never stop production
            self._failed_shadow = version  # not retried until the pointer changes
            self.shadow.counters["shadow_errors"] += 1
            # the exception names the file and the problem; no credentials are involved in a model load
            log.error("cameras: shadow detector v%s did not load (%s: %s); production continues",
                      version, type(e).__name__, e)  # fmt: skip
            return None

    async def _poll_shadow(self) -> None:
        """Start, swap or stop the shadow when the registry's `shadow` pointer appears, changes or goes."""
        shadow = self.shadow
        assert shadow is not None
        d = read_deployed(self.cfg.models.registry_dir, "detector", "shadow")
        if d is None:
            if shadow.detector is not None:  # the pointer was removed: stop the shadow
                old = await asyncio.to_thread(shadow.set_detector, None, None)
                if old is not None:
                    old.close()
            self._failed_shadow = None
            return
        if d.version in (shadow.version, self._failed_shadow):
            return
        new = await asyncio.to_thread(self._load_shadow, d.version, d.path)
        if new is None:
            return
        old = await asyncio.to_thread(shadow.set_detector, new, d.version)
        if old is not None:
            old.close()

    # --- the model registry (hot swap) ---------------------------------------------------------
    def _registry_pointers(self) -> tuple[DeployedModel | None, DeployedModel | None]:
        """The registry's production detector and verifier (None each: not following, or none yet)."""
        if not self.cfg.cameras.follow_registry:
            return None, None
        root = self.cfg.models.registry_dir
        return read_deployed(root, "detector"), read_deployed(root, "verifier")

    def _build_detector(self, det_cfg: Any, registry_verifier: Any = None) -> Detector:
        """The detector, followed by the false-alarm verifier (the registry's production one, else
        `cameras.verifier`'s) that drops look-alikes before tracking, so they never get a track nor
        feed a rule. A registry verifier that does not fit the detector (trained on another one's
        features, e.g. after a fine-tune was promoted) is left out, logged and counted: the promoted
        detector runs, and `model_version` shows it runs without a verifier until one is retrained."""
        from gridwatch.detectors.verifier import VerifierError, build_camera_detector

        if registry_verifier is None:
            return build_camera_detector(self.cfg.cameras, det_cfg)
        try:
            return build_camera_detector(self.cfg.cameras, det_cfg, registry_verifier)
        except VerifierError as e:
            self.counters["verifier_errors"] += 1
            log.error(
                "cameras: the registry's verifier does not fit this detector (%s); running without it", e
            )
            return build_camera_detector(
                self.cfg.cameras.model_copy(update={"verifier": VerifierConfig()}), det_cfg
            )

    def _detector_config(self, model_dir: Any) -> Any:
        det = self.cfg.cameras.detector
        if "model_dir" not in type(det).model_fields:
            raise ValueError(f"cameras.follow_registry: detector type {det.type!r} has no model_dir to swap")
        return det.model_copy(update={"model_dir": model_dir})

    def swap_detector(self, new: Detector, version: int | None = None) -> Detector | None:
        """Every camera analyses its next frame with `new`; returns the old detector (the caller
        closes it: an inference still running on it finishes first)."""
        old = self.detector
        for feed in self.cfg.cameras.feeds:
            if feed.detect:
                self.pipelines[feed.source.id].set_detector(new)
        self.detector = new
        self.deployed_version = version
        self.counters["model_swaps"] += 1
        if self.shadow is not None:
            self.shadow.set_production_model(new.model_version)
        log.info("cameras: detector now %s (registry version %s)", new.model_version, version)
        return old

    async def _follow_registry(self, stop: asyncio.Event) -> None:
        """Poll the registry's production pointer; load a new version beside the running one, then
        swap between frames (no restart, no frame lost beyond the swap, rule state kept)."""
        cams = self.cfg.cameras
        while not stop.is_set():
            await asyncio.sleep(cams.registry_poll_s)
            if self.shadow is not None:
                try:
                    await self._poll_shadow()
                except Exception:  # the shadow's pointer or files: never the production poll's problem
                    self.shadow.counters["shadow_errors"] += 1
                    log.exception("cameras: shadow registry poll failed; production continues")
            if not cams.follow_registry or self.detector is None:
                continue
            d, v = self._registry_pointers()
            want = (d.version if d else self.deployed_version, v.version if v else self.verifier_version)
            if want in ((self.deployed_version, self.verifier_version), self._failed):
                continue
            det_cfg = self._detector_config(d.path) if d else cams.detector
            try:
                new = await asyncio.to_thread(self._build_detector, det_cfg, v.path if v else None)
            except Exception:  # a broken model must not stop the cameras: keep the running one
                self.counters["model_swap_errors"] += 1
                self._failed = want
                log.exception("cameras: registry detector v%s / verifier v%s did not load; keeping %s",
                              want[0], want[1], self.detector.model_version)  # fmt: skip
                continue
            self.verifier_version = want[1]
            old = self.swap_detector(new, want[0])
            if old is not None:
                await asyncio.sleep(1.0)  # let an inference that started on it finish
                old.close()

    # --- threads (one per camera) ------------------------------------------------------------
    def _camera_loop(self, cid: str) -> None:
        reader, pipe = self.readers[cid], self.pipelines[cid]
        while not self._stop.is_set():
            try:
                for frame in reader.frames(self._stop):
                    t0 = time.perf_counter()
                    step = pipe.process(frame.image, frame.ts_ms)
                    production_ms = (time.perf_counter() - t0) * 1000
                    self.frame_latency_ms.append(float(self.clock.now_ms() - frame.ts_ms))
                    if self.verifications.get(cid):
                        self._verify(cid, pipe, frame.ts_ms)
                    for c in step.candidates:
                        self._emit_candidate(c, frame.ts_ms)
                    self._remember_frame(cid, step)
                    if self.shadow is not None:  # after production's candidates are on their way
                        self.shadow.observe(cid, step, production_ms, pipe.rules.occupied_zones)
            except Exception:  # a bug on one camera must not stop the others: log, count, go on
                self.counters["errors"] += 1
                log.exception("camera %s: pipeline error; continuing", cid)
                time.sleep(1.0)

    # --- closure verification (dispatch asks; this camera answers) ------------------------------
    def add_verification(self, req: VerifyRequest) -> bool:
        """Watch a zone for a resolved incident; False if this worker does not have the camera/zone."""
        pipe = self.pipelines.get(req.camera_id)
        if pipe is None:
            return False
        if req.zone_id not in {z.id for z in pipe.zones}:
            log.warning(
                "camera %s: cannot verify %s: no zone %r", req.camera_id, req.incident_id, req.zone_id
            )
            return False
        with self._verify_lock:
            pending = self.verifications.setdefault(req.camera_id, [])
            if any(v.incident_id == req.incident_id and v.result is None for v in pending):
                return True  # a redelivered request
            v = ZoneVerification(
                req.incident_id, req.zone_id, req.requested_at, int(req.clear_s * 1000), int(req.timeout_s * 1000),
                req.resolution,
            )  # fmt: skip
            pending.append(v)
        log.info(
            "camera %s: verifying incident %s (zone %s clear for %g s)",
            req.camera_id,
            req.incident_id,
            req.zone_id,
            req.clear_s,
        )
        return True

    def _verify(self, cid: str, pipe: CameraPipeline, ts_ms: int) -> None:
        with self._verify_lock:
            pending = list(self.verifications.get(cid, ()))
        for v in pending:
            if v.update(ts_ms, pipe.rules.zone_occupied(v.zone_id)) is None:
                continue
            with self._verify_lock:
                self.verifications[cid].remove(v)
            ok = bool(v.result)
            note = (f"zone {v.zone_id} clear for {v.clear_ms / 1000:g} s" if ok
                    else f"zone {v.zone_id} still occupied {(ts_ms - v.requested_at) / 1000:.0f} s after resolution")  # fmt: skip
            ev = IncidentCommandEvent(
                command_id=f"camverify:{v.incident_id}:{v.resolution}",
                incident_id=v.incident_id, command="verify", actor="camera", by=cid, params={"ok": ok, "note": note},
            )  # fmt: skip
            self.verified.append((v.incident_id, ok))
            log.info(
                "camera %s: incident %s %s (%s)",
                cid,
                v.incident_id,
                "verified" if ok else "NOT verified",
                note,
            )
            self._enqueue(INCIDENT_COMMANDS.name, v.incident_id.encode(), encode_event(ev))

    async def _verify_requests(self, stop: asyncio.Event) -> None:
        from aiokafka import AIOKafkaConsumer

        consumer = AIOKafkaConsumer(
            VERIFY_REQUESTS.name, **consumer_settings(self.cfg.kafka, f"gridwatch-cameras-{self.instance}")
        )
        await consumer.start()
        try:
            while not stop.is_set():
                batch = await consumer.getmany(timeout_ms=300, max_records=100)
                for tp, records in batch.items():
                    for rec in records:
                        try:
                            self.add_verification(decode_event(rec.value, VerifyRequest))
                        except Exception as e:  # not ours to dead-letter here: log and count
                            self.counters["errors"] += 1
                            log.warning(
                                "camera worker: bad verify request at %s/%d: %s", tp.topic, rec.offset, e
                            )
                    await consumer.commit({tp: records[-1].offset + 1})
        finally:
            await consumer.stop()

    def _emit_candidate(self, c: IncidentCandidate, frame_ts_ms: int) -> None:
        self.counters["candidates"] += 1
        self.latency_ms.append(float(self.clock.now_ms() - frame_ts_ms))
        self.candidates.append(c)
        del self.candidates[:-100]
        log.info("camera %s: candidate %s %s in zone %s (%s)", c.source_id, c.category.value, c.candidate_id,
                 c.details.get("zone_id"), c.summary)  # fmt: skip
        self._enqueue(INCIDENT_CANDIDATES.name, c.source_id.encode(), encode_event(c))

    def _on_event(self, ev: CameraEvent) -> None:  # camera threads: quick, non-blocking
        self.counters["events"] += 1
        if ev.kind == "up":
            pipe = self.pipelines.get(ev.camera_id)
            if pipe is not None:
                pipe.reset()
            if self.shadow is not None:
                self.shadow.reset(ev.camera_id)
        self._enqueue(CAMERA_EVENTS.name, ev.camera_id.encode(), ev.model_dump_json().encode())
        if self._influx is not None and self._loop is not None:
            ln = line(
                "camera_event",
                {"camera_id": ev.camera_id, "kind": ev.kind},
                {"reason": ev.reason[:200]},
                ev.ts_ms,
            )
            self._loop.call_soon_threadsafe(self._influx.write, [ln])

    def _enqueue(self, topic: str, key: bytes, value: bytes) -> None:
        loop, q = self._loop, self._pending
        if loop is None or q is None or not self.kafka:
            return

        def put() -> None:
            try:
                q.put_nowait((topic, key, value))
            except asyncio.QueueFull:
                self.counters["candidates_dropped"] += 1
                log.error(
                    "camera worker: %d records waiting for Kafka; dropping one for %s (counted)",
                    MAX_PENDING,
                    topic,
                )

        loop.call_soon_threadsafe(put)

    # --- missed reports: recent frames and frame requests (docs/DATASETS.md) -------------------
    def _remember_frame(self, cid: str, step: Any) -> None:
        """Keep the analysed frame (JPEG) with its detections in the camera's ring. A failure here
        costs a miss its frame, never the camera its analysis: logged and counted."""
        ring = self.recent_frames.get(cid)
        if ring is None or step.image is None:
            return
        try:
            ok, buf = cv2.imencode(
                ".jpg", step.image, [cv2.IMWRITE_JPEG_QUALITY, self.cfg.cameras.evidence.jpeg_quality]
            )
            if not ok:
                raise OSError("cv2.imencode failed")
            pipe = self.pipelines[cid]
            h, w = step.image.shape[:2]
            ring.add(
                RingFrame(step.ts_ms, bytes(buf.tobytes()), int(w), int(h), pipe.last_detections,
                          step.detections, pipe.detector.model_version if pipe.detector else None)
            )  # fmt: skip
        except Exception:
            self.counters["missed_frame_errors"] += 1
            log.exception("camera %s: could not keep the frame for missed reports", cid)

    def answer_frame_requests(self) -> dict[str, int]:
        """One pass over the hard-example store's frame requests for this worker's cameras: fill
        each from the camera's ring, or mark it unavailable, or leave it for the next pass (frames
        around its time may still come). Requests for other cameras are left alone."""
        from gridwatch.dataset.hard_examples import HardExampleStore

        done = {"filled": 0, "unavailable": 0, "waiting": 0}
        hx = self.cfg.dispatch.hard_examples_dir
        if hx is None:
            return done
        store = HardExampleStore(hx)
        periods = {f.source.id: int(1000 / f.source.analysed_fps) for f in self.cfg.cameras.feeds}
        keep_ms = int(self.cfg.cameras.evidence.recent_frames_s * 1000)
        now = self.clock.now_ms()
        for req in store.frame_requests(self.readers):
            ring = self.recent_frames.get(req.camera_id)
            try:
                action, frame, why = resolve_frame_request(
                    ring.snapshot() if ring is not None else [], req.at_ms, periods[req.camera_id], now,
                    keep_ms if ring is not None else 0,
                )  # fmt: skip
                if action == "fill":
                    assert frame is not None
                    side = frame.sidecar(req.example_id, req.camera_id)
                    store.fill_frame(req, frame.jpeg, side, frame.ts_ms)
                    self.counters["missed_frames_filled"] += 1
                    done["filled"] += 1
                    log.info("camera %s: frame at %d for missed example %s (asked %d)",
                             req.camera_id, frame.ts_ms, req.example_id, req.at_ms)  # fmt: skip
                elif action == "unavailable":
                    store.mark_frame_unavailable(req, why)
                    self.counters["missed_frames_unavailable"] += 1
                    done["unavailable"] += 1
                    log.warning(
                        "camera %s: no frame for missed example %s: %s", req.camera_id, req.example_id, why
                    )
                else:
                    done["waiting"] += 1
            except Exception:  # one bad request must not stop the others: it stays, is retried
                self.counters["missed_frame_errors"] += 1
                log.exception("camera %s: frame request %s failed", req.camera_id, req.example_id)
        rings = self.recent_frames.values()
        self.counters["recent_frames_evicted_age"] = sum(r.evicted_age for r in rings)
        self.counters["recent_frames_evicted_memory"] = sum(r.evicted_memory for r in rings)
        self.counters["recent_frames_bytes"] = sum(r.bytes for r in rings)
        return done

    async def _frame_requests_loop(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await asyncio.sleep(self.frame_request_poll_s)
            try:
                await asyncio.to_thread(self.answer_frame_requests)
            except Exception:  # the store's directory away: retried at the next pass
                self.counters["missed_frame_errors"] += 1
                log.exception("cameras: frame requests pass failed")

    # --- lifecycle ---------------------------------------------------------------------------
    async def run(self, stop: asyncio.Event) -> None:
        self._loop = asyncio.get_running_loop()
        self._pending = asyncio.Queue(maxsize=MAX_PENDING)
        if self.kafka:
            await ensure_topics(self.cfg.kafka)
        self._influx = InfluxSink(self.cfg.influx, clock=self.clock, name="cameras")
        await self._influx.start()
        producer = make_producer(self.cfg.kafka) if self.kafka else None
        if producer is not None:
            await producer.start()
        for cid, reader in self.readers.items():
            reader.start()
            t = threading.Thread(target=self._camera_loop, args=(cid,), name=f"camera-{cid}", daemon=True)
            t.start()
            self._threads.append(t)
        log.info("cameras: ready (%d cameras, detector %s)", len(self.readers),
                 self.detector.model_version if self.detector else "none")  # fmt: skip
        tasks = [asyncio.create_task(self._health(stop))]
        if self.cfg.dispatch.hard_examples_dir is not None:
            tasks.append(asyncio.create_task(self._frame_requests_loop(stop)))
        if (self.cfg.cameras.follow_registry and self.detector is not None) or self.shadow is not None:
            tasks.append(asyncio.create_task(self._follow_registry(stop)))
        if producer is not None:
            tasks.append(asyncio.create_task(self._send(producer, stop)))
            tasks.append(asyncio.create_task(self._verify_requests(stop)))
        try:
            await stop.wait()
        finally:
            self._stop.set()
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            for reader in self.readers.values():
                await asyncio.to_thread(reader.stop)
            for t in self._threads:
                await asyncio.to_thread(t.join, 5)
            if producer is not None:
                await producer.stop()
            await self._influx.close()
            if self.detector is not None:
                self.detector.close()
            if self.shadow is not None:
                self.shadow.flush()
                if self.shadow.detector is not None:
                    self.shadow.detector.close()

    async def _send(self, producer: Any, stop: asyncio.Event) -> None:
        assert self._pending is not None
        while not stop.is_set():
            topic, key, value = await self._pending.get()
            delay = 0.5
            while True:
                try:
                    await producer.send_and_wait(topic, value, key=key)
                    if topic == INCIDENT_CANDIDATES.name:
                        self.counters["candidates_sent"] += 1
                    break
                except Exception as e:  # Kafka away: keep it, retry with backoff
                    log.warning(
                        "camera worker: Kafka send failed (%s); retrying in %.1fs", type(e).__name__, delay
                    )
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 10.0)

    def stats(self) -> dict[str, Any]:
        s: dict[str, Any] = dict(self.counters)
        lat = list(self.latency_ms)
        # not `latency_*`: InfluxDB fixes a field's type per measurement, and the streams worker
        # writes its own `latency_p50_ms` into pipeline_health as an integer
        s["candidate_latency_p50_ms"] = percentile(lat, 0.5)
        s["candidate_latency_p99_ms"] = percentile(lat, 0.99)
        flat = list(self.frame_latency_ms)
        s["frame_latency_p50_ms"] = percentile(flat, 0.5)
        s["frame_latency_p99_ms"] = percentile(flat, 0.99)
        s["frames"] = sum(p.stats.frames for p in self.pipelines.values())
        s["inferences"] = sum(p.stats.inferences for p in self.pipelines.values())
        s["pending"] = self._pending.qsize() if self._pending is not None else 0
        # which model made the candidates of this interval (a string field: InfluxDB keeps its type)
        s["model_version"] = self.detector.model_version if self.detector is not None else ""
        s["verifier_dropped"] = int(getattr(self.detector, "dropped", 0))
        if self.shadow is not None:
            s.update(self.shadow.stats())
        return s

    async def _health(self, stop: asyncio.Event) -> None:
        assert self._influx is not None
        while not stop.is_set():
            now = self.clock.now_ms()
            lines = camera_health_lines([r.health() for r in self.readers.values()], now)
            lines += health_lines("cameras", self.instance, self.stats(), now)
            self._influx.write(lines)
            await asyncio.sleep(self.cfg.cameras.health_interval_s)


def run_camera_worker(cfg: GridwatchConfig) -> None:
    import signal

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await CameraWorker(cfg).run(stop)

    asyncio.run(main())
