"""Simulated RTSP cameras: Debian's gst-rtsp-server streaming looped H.264 MP4 files (dev only).

Run by :class:`gridwatch.devservers.rtsp.RtspServer` with Debian's ``/usr/bin/python3``: PyGObject
(python3-gi) and the GstRtspServer typelib are system packages that cannot be imported inside the
project's virtualenv.  So this file must not import anything from ``gridwatch`` and must stay
runnable by a bare system Python 3.

    /usr/bin/python3 rtsp_gst_server.py --port 8554 --mount /cam1=vtest.h264.mp4 --mount /cam2=sample.h264.mp4

Each mount serves ``filesrc ! qtdemux ! h264parse ! rtph264pay name=pay0 pt=96``.  The factory is not
shared: every client gets its own pipeline, which starts at the beginning of the file (like a camera
that was just tuned to).  The file is looped forever with continuous timestamps, so a client sees
one endless live stream (how, and why a plain "drop EOS, seek to 0" does not work: see
:class:`_Looper`).  Verified with OpenCV as the client: frame timestamps advance by exactly one frame
across each loop and the stream keeps its real-time pace.

Optional RTSP basic auth: ``--user NAME`` plus the password in the environment variable named by
``--password-env`` (never in argv, which ``ps`` shows and the parent logs).

Logs go to stderr (the parent appends them to the server's log file).
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtspServer  # noqa: E402 - needs require_version first

log = logging.getLogger("rtsp_gst_server")


def _launch_line(path: str) -> str:
    # Quoted location: footage paths may contain spaces.  No decoding anywhere: the server only
    # re-packetises the file's H.264, so many cameras cost almost no CPU.
    loc = path.replace("\\", "\\\\").replace('"', '\\"')
    return (
        f'( filesrc location="{loc}" ! qtdemux name=demux ! h264parse name=parse '
        "config-interval=-1 ! rtph264pay name=pay0 pt=96 config-interval=-1 )"
    )


class LoopingFactory(GstRtspServer.RTSPMediaFactory):
    """A media factory whose media loop their file forever (see the module docstring)."""

    def __init__(self, mount: str, path: str) -> None:
        super().__init__()
        self.mount = mount
        self.set_launch(_launch_line(path))
        self.set_shared(False)
        self.connect("media-configure", self._on_media_configure)

    def _on_media_configure(
        self, _factory: GstRtspServer.RTSPMediaFactory, media: GstRtspServer.RTSPMedia
    ) -> None:
        parse = media.get_element().get_by_name("parse")
        if parse is None:  # pragma: no cover - the launch line names it
            log.error("%s: no element named 'parse' in the pipeline; no looping", self.mount)
            return
        loop = _Looper(self.mount)
        parse.get_static_pad("sink").add_probe(
            Gst.PadProbeType.EVENT_DOWNSTREAM | Gst.PadProbeType.EVENT_FLUSH | Gst.PadProbeType.BUFFER,
            loop.on_probe,
        )


class _Looper:
    """Loops one media's file by hand (one instance per client pipeline).

    Why not simply drop the EOS and seek back: an EOS leaves the demuxer's source pad flagged EOS
    (sticky events are stored before pad probes run), so everything it pushes afterwards is refused.
    Only a flush clears that flag.  So, at EOS:

    1. the EOS is dropped here, on the parser's sink pad, so nothing downstream ever ends;
    2. a *flushing* seek to 0 is sent to the demuxer alone; its FLUSH_START/FLUSH_STOP are dropped
       here too, so the payloader and the RTSP sinks never flush (clients notice nothing);
    3. the demuxer restarts with a segment whose running time starts at 0 again, so its source pad
       gets an offset of the running time played so far (``Gst.Pad.set_offset``): timestamps keep
       increasing across loops and the sinks keep pacing the stream in real time.
    """

    def __init__(self, mount: str) -> None:
        self.mount = mount
        self.loops = 0
        self.first_pts: int | None = None  # of the current pass through the file
        self.end_pts = 0  # pts + duration of the last buffer seen
        self.offset = 0  # running time added to the demuxer's output (ns)
        self.seeking = False

    def on_probe(self, pad: Gst.Pad, info: Gst.PadProbeInfo) -> Gst.PadProbeReturn:
        if info.type & Gst.PadProbeType.BUFFER:
            buf = info.get_buffer()
            if buf.pts != Gst.CLOCK_TIME_NONE:
                if self.first_pts is None:
                    self.first_pts = buf.pts
                dur = buf.duration if buf.duration != Gst.CLOCK_TIME_NONE else 0
                self.end_pts = max(self.end_pts, buf.pts + dur)
            return Gst.PadProbeReturn.OK
        event = info.get_event()
        if event is None:
            return Gst.PadProbeReturn.OK
        if event.type in (Gst.EventType.FLUSH_START, Gst.EventType.FLUSH_STOP) and self.seeking:
            if event.type == Gst.EventType.FLUSH_STOP:
                self.seeking = False
            return Gst.PadProbeReturn.DROP
        if event.type == Gst.EventType.EOS:
            self.loops += 1
            self.offset += self.end_pts - (self.first_pts or 0)
            self.first_pts = None
            self.end_pts = 0
            log.info("%s: end of file, looping (loop %d)", self.mount, self.loops)
            # Not from this streaming thread: a flushing seek waits for the demuxer's task, which is
            # the thread we are in.  The main loop does it.
            GLib.idle_add(self._seek_to_start, pad.get_peer())
            return Gst.PadProbeReturn.DROP
        return Gst.PadProbeReturn.OK

    def _seek_to_start(self, demux_src: Gst.Pad | None) -> bool:
        if demux_src is None:
            return False
        self.seeking = True
        demux_src.set_offset(self.offset)
        seek = Gst.Event.new_seek(
            1.0,
            Gst.Format.TIME,
            Gst.SeekFlags.FLUSH | Gst.SeekFlags.KEY_UNIT,
            Gst.SeekType.SET,
            0,
            Gst.SeekType.NONE,
            -1,
        )
        # Sent upstream from the demuxer's source pad, i.e. to the demuxer alone: a pipeline-wide
        # seek would go through the RTSP media's sinks and flush the clients' streams.
        if not demux_src.send_event(seek):
            self.seeking = False
            log.error("%s: seek back to the start failed; the stream will end", self.mount)
        return False  # one-shot idle callback


def _auth(user: str, password: str) -> GstRtspServer.RTSPAuth:
    auth = GstRtspServer.RTSPAuth()
    token = GstRtspServer.RTSPToken()
    # set_string, not writable_structure().set_value(): PyGObject hands out a copy of the structure
    # there, and the token silently stays empty (every request then gets 401).
    token.set_string(GstRtspServer.RTSP_TOKEN_MEDIA_FACTORY_ROLE, user)
    auth.add_basic(GstRtspServer.RTSPAuth.make_basic(user, password), token)
    return auth


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--mount", action="append", required=True, help="/path=FILE (repeatable)")
    ap.add_argument("--user", default=None, help="require RTSP basic auth with this user")
    ap.add_argument("--password-env", default=None, help="environment variable holding the password")
    args = ap.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )

    Gst.init(None)
    server = GstRtspServer.RTSPServer()
    server.set_address(args.host)
    server.set_service(str(args.port))
    if args.user:
        password = os.environ.get(args.password_env or "", "")
        if not password:
            log.error("--user given but the password variable %r is empty or unset", args.password_env)
            return 2
        server.set_auth(_auth(args.user, password))
    mounts = server.get_mount_points()
    for spec in args.mount:
        path_part, sep, file_part = spec.partition("=")
        if not sep or not path_part.startswith("/"):
            log.error("bad --mount %r: expected /path=FILE", spec)
            return 2
        if not os.path.isfile(file_part):
            log.error("--mount %s: no such file %s", path_part, file_part)
            return 2
        factory = LoopingFactory(path_part, file_part)
        if args.user:
            factory.add_role_from_structure(
                Gst.Structure.new_from_string(
                    f"{args.user}, media.factory.access=(boolean)true, media.factory.construct=(boolean)true"
                )
            )
        mounts.add_factory(path_part, factory)
        log.info("mount %s -> %s", path_part, file_part)

    loop = GLib.MainLoop()
    if server.attach(None) == 0:
        log.error("cannot listen on %s:%d", args.host, args.port)
        return 1
    # A graceful stop (SIGTERM/SIGINT) quits the main loop and exits 0.
    for sig in (signal.SIGTERM, signal.SIGINT):
        GLib.unix_signal_add(GLib.PRIORITY_DEFAULT, sig, lambda: (loop.quit(), False)[1])
    log.info("listening on rtsp://%s:%d", args.host, args.port)
    loop.run()
    log.info("stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
