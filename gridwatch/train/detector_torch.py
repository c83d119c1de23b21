"""NanoDet's GFL head in torch, for head-only fine-tuning on cached neck features (issue 8 part 4b).

Everything model-specific is read from the parent's ONNX graph and model.yaml, nothing is converted
by a tool (onnx2torch needs torchvision, which does not import beside this torch, and it would
keep the graph's batch-1 head Reshapes ``[1, C, -1]``):

* :func:`head_specs` walks the graph back from each level's class output (as
  detectors/verifier.py's ``find_feature_taps``): ``neck (PAN Add, 128 ch) -> Pad -> Conv 3x3 ->
  LeakyReLU(0.1) -> Conv 1x1 -> Split(80 | 44)`` and records the neck tensor, the pads, the LeakyReLU
  slope and the four initializer names of the level.
* :class:`GFLHead` is that head written by hand (3 levels), its weights loaded from the initializers
  with ``onnx.numpy_helper``; any batch size (the trap of the ONNX Reshape is not copied).
* :class:`NeckExtractor` runs the parent graph in onnxruntime with the neck tensors declared as extra
  outputs (``with_extra_outputs`` of detectors/verifier.py) and returns them per image, after
  detectors/nanodet.py's own ``preprocess`` (the same letterbox).
* :func:`gfl_loss`: the NanoDet / GFL loss (Li et al., "Generalized Focal Loss", NeurIPS 2020,
  arXiv:2006.04388; RangiLyu/nanodet v0.x ``nanodet/model/head/gfl_head.py``): ATSS assignment
  (Zhang et al., CVPR 2020, arXiv:1912.02424; top-k 9 per level, anchors 5 x stride), quality
  focal loss on the classes, distribution focal loss (x 0.25) + GIoU (x 2) on the boxes, plus the
  distillation terms that keep the known classes at the parent's scores and boxes.
* :func:`export_onnx`: the parent graph with the head initializers replaced, every other byte
  the same (onnx re-serialises the bundled file byte for byte; checked in the tests).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
import torch.nn.functional as F
from onnx import numpy_helper
from torch import nn

from gridwatch.detectors.nanodet import (
    Letterbox,
    ModelIntegrityError,
    ModelManifest,
    load_manifest,
    make_session,
    preprocess,
)
from gridwatch.detectors.verifier import with_extra_outputs

__all__ = [
    "ANCHOR_SCALE",
    "ATSS_TOPK",
    "GFLHead",
    "HeadLevelSpec",
    "LossWeights",
    "NeckExtractor",
    "atss_assign",
    "cell_centers",
    "decode_boxes",
    "export_onnx",
    "gfl_loss",
    "head_specs",
]

#: NanoDet v0.x ``octave_base_scale``: ATSS's anchor of a cell is a square of 5 x stride
ANCHOR_SCALE = 5.0
#: ATSS candidates per level and ground-truth box (``topk=9`` in NanoDet and the ATSS paper)
ATSS_TOPK = 9


@dataclass(frozen=True)
class HeadLevelSpec:
    """One head level as read from the graph."""

    stride: int
    neck: str  # the tensor the level's Pad reads (what is cached)
    pads: tuple[int, int, int, int]  # F.pad order: left, right, top, bottom
    alpha: float  # LeakyReLU slope
    conv_w: str  # initializer names: 3x3 conv weight / bias, 1x1 prediction conv weight / bias
    conv_b: str
    pred_w: str
    pred_b: str
    num_classes: int
    cls_out: str
    dis_out: str


def _producers(graph: onnx.GraphProto) -> dict[str, onnx.NodeProto]:
    return {o: n for n in graph.node for o in n.output}


def head_specs(model: onnx.ModelProto, manifest: ModelManifest) -> list[HeadLevelSpec]:
    """Each level's head, found from the manifest's class outputs (walk back to the prediction Conv,
    then LeakyReLU, 3x3 Conv, Pad); raises ModelIntegrityError naming what does not fit."""
    g = model.graph
    prod = _producers(g)
    inits = {i.name: i for i in g.initializer}
    uses: dict[str, int] = {}
    for n in g.node:
        for i in n.input:
            uses[i] = uses.get(i, 0) + 1

    def expect(name: str, op: str, what: str) -> onnx.NodeProto:
        node = prod.get(name)
        if node is None or node.op_type != op:
            raise ModelIntegrityError(
                f"{manifest.name}: {what}: expected {op} producing {name!r}, found "
                f"{node.op_type if node is not None else 'nothing'}"
            )
        return node

    specs = []
    for lvl in manifest.head.levels:
        node, steps = prod.get(lvl.cls), 0
        while node is not None and node.op_type != "Conv" and steps < 16:
            node, steps = prod.get(node.input[0]), steps + 1
        if node is None or node.op_type != "Conv":
            raise ModelIntegrityError(f"{manifest.name}: no Conv upstream of head output {lvl.cls!r}")
        pred = node
        act = expect(pred.input[0], "LeakyRelu", f"stride {lvl.stride} head activation")
        conv = expect(act.input[0], "Conv", f"stride {lvl.stride} head 3x3 conv")
        pad = expect(conv.input[0], "Pad", f"stride {lvl.stride} head padding")
        alpha = next((a.f for a in act.attribute if a.name == "alpha"), 0.01)
        p = numpy_helper.to_array(inits[pad.input[1]]).tolist()  # [n0, c0, h0, w0, n1, c1, h1, w1]
        if len(p) != 8 or p[0] or p[1] or p[4] or p[5]:
            raise ModelIntegrityError(f"{manifest.name}: stride {lvl.stride}: unexpected head pads {p}")
        names = (conv.input[1], conv.input[2], pred.input[1], pred.input[2])
        for n in names:
            if n not in inits:
                raise ModelIntegrityError(f"{manifest.name}: head weight {n!r} is not an initializer")
            if uses[n] != 1:
                # content-addressed names: a tensor shared with another node could not be replaced alone
                raise ModelIntegrityError(f"{manifest.name}: head weight {n!r} is shared by {uses[n]} nodes")
        n_out = list(inits[pred.input[1]].dims)[0]
        n_dis = 4 * (manifest.head.reg_max + 1)
        specs.append(
            HeadLevelSpec(
                stride=lvl.stride,
                neck=pad.input[0],
                pads=(int(p[3]), int(p[7]), int(p[2]), int(p[6])),
                alpha=float(alpha),
                conv_w=names[0],
                conv_b=names[1],
                pred_w=names[2],
                pred_b=names[3],
                num_classes=int(n_out - n_dis),
                cls_out=lvl.cls,
                dis_out=lvl.dis,
            )
        )
    return specs


# --- the head -------------------------------------------------------------------------------------
class GFLHead(nn.Module):
    """NanoDet v0.x head, one level per stride: ``pad -> conv 3x3 -> LeakyReLU -> conv 1x1 ->
    (class logits | box logits)``. ``forward`` returns per level class *logits* ``[B, HW, C]`` (the
    graph applies the sigmoid) and box logits ``[B, HW, 4 x (reg_max + 1)]``, cells row-major."""

    def __init__(self, specs: Sequence[HeadLevelSpec], channels: int, reg_max: int) -> None:
        super().__init__()
        self.specs = list(specs)
        self.reg_max = reg_max
        self.num_classes = specs[0].num_classes
        n_out = self.num_classes + 4 * (reg_max + 1)
        self.convs = nn.ModuleList(nn.Conv2d(channels, channels, 3) for _ in specs)
        self.preds = nn.ModuleList(nn.Conv2d(channels, n_out, 1) for _ in specs)

    @classmethod
    def from_onnx(cls, model: onnx.ModelProto, manifest: ModelManifest) -> GFLHead:
        specs = head_specs(model, manifest)
        inits = {i.name: i for i in model.graph.initializer}
        channels = int(inits[specs[0].conv_w].dims[1])
        head = cls(specs, channels, manifest.head.reg_max)
        with torch.no_grad():
            for k, s in enumerate(specs):
                for param, name in (
                    (head.convs[k].weight, s.conv_w),
                    (head.convs[k].bias, s.conv_b),
                    (head.preds[k].weight, s.pred_w),
                    (head.preds[k].bias, s.pred_b),
                ):
                    arr = numpy_helper.to_array(inits[name]).astype(np.float32)
                    if tuple(arr.shape) != tuple(param.shape):
                        raise ModelIntegrityError(
                            f"{manifest.name}: {name} has shape {arr.shape}, expected {tuple(param.shape)}"
                        )
                    param.copy_(torch.from_numpy(arr))
        return head

    def forward(self, feats: Sequence[torch.Tensor]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        cls_out, dis_out = [], []
        for k, (x, s) in enumerate(zip(feats, self.specs, strict=True)):
            x = F.leaky_relu(self.convs[k](F.pad(x, s.pads)), s.alpha)
            y = self.preds[k](x).flatten(2).transpose(1, 2)  # [B, HW, C + 44], row-major cells
            cls_out.append(y[..., : self.num_classes])
            dis_out.append(y[..., self.num_classes :])
        return cls_out, dis_out

    def named_initializers(self) -> dict[str, np.ndarray]:
        """The head's weights under their ONNX initializer names (for :func:`export_onnx`)."""
        out = {}
        for k, s in enumerate(self.specs):
            out[s.conv_w] = self.convs[k].weight.detach().cpu().numpy()
            out[s.conv_b] = self.convs[k].bias.detach().cpu().numpy()
            out[s.pred_w] = self.preds[k].weight.detach().cpu().numpy()
            out[s.pred_b] = self.preds[k].bias.detach().cpu().numpy()
        return out


def export_onnx(parent: onnx.ModelProto, weights: dict[str, np.ndarray]) -> bytes:
    """The parent graph with the named initializers replaced (same name, shape, dtype, raw storage);
    nothing else changes. Raises ValueError naming an unknown or mis-shaped tensor."""
    model = onnx.ModelProto()
    model.CopyFrom(parent)
    inits = {i.name: i for i in model.graph.initializer}
    for name, arr in weights.items():
        t = inits.get(name)
        if t is None:
            raise ValueError(f"export: {name!r} is not an initializer of the parent graph")
        if tuple(t.dims) != tuple(arr.shape) or t.data_type != onnx.TensorProto.FLOAT:
            raise ValueError(
                f"export: {name!r} is {list(t.dims)} type {t.data_type}, got {arr.shape} {arr.dtype}"
            )
        # the same field the parent used (raw_data): the file differs only in these bytes
        t.raw_data = np.ascontiguousarray(arr, dtype="<f4").tobytes()
        del t.float_data[:]
    return model.SerializeToString()


# --- the neck features ------------------------------------------------------------------------------
class NeckExtractor:
    """The parent detector up to the neck: one onnxruntime run per image with the neck tensors (the
    inputs of each level's head Pad) declared as extra outputs. ``run`` letterboxes with
    detectors/nanodet.py's ``preprocess`` at the manifest's input size (no padding trim: every cached
    image has the same grid)."""

    def __init__(self, model_dir: Path, *, threads: int = 1) -> None:
        self.model_dir = Path(model_dir)
        self.manifest = manifest = load_manifest(self.model_dir)
        path = self.model_dir / manifest.file
        if not path.is_file():
            raise ModelIntegrityError(
                f"{path}: model file not found (named by {self.model_dir / 'model.yaml'})"
            )
        data = path.read_bytes()
        if hashlib.sha256(data).hexdigest() != manifest.sha256:
            raise ModelIntegrityError(f"{path}: sha256 does not match {self.model_dir / 'model.yaml'}")
        self.model_bytes = data
        self.model = onnx.load_from_string(data)
        self.specs = head_specs(self.model, manifest)
        self.width, self.height = manifest.input.width, manifest.input.height
        self.strides = [s.stride for s in self.specs]
        self.necks = [s.neck for s in self.specs]
        self._outs = [s.cls_out for s in self.specs] + [s.dis_out for s in self.specs] + self.necks
        self._session: ort.InferenceSession = make_session(with_extra_outputs(data, self.necks), threads)
        self._mean = np.array(manifest.input.mean, np.float32)
        self._std = np.array(manifest.input.std, np.float32)

    def preprocess(self, frame_bgr: np.ndarray) -> tuple[np.ndarray, Letterbox]:
        return preprocess(
            frame_bgr, self.width, self.height, self._mean, self._std,
            resize=self.manifest.input.resize, rgb=self.manifest.input.channel_order == "RGB",
        )  # fmt: skip

    def run(
        self, frame_bgr: np.ndarray
    ) -> tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray], Letterbox]:
        """(neck maps ``[C, H, W]``, parent class scores ``[HW, C]``, parent box logits ``[HW, 44]``
        per level, the letterbox)."""
        batch, box = self.preprocess(frame_bgr)
        out = self._session.run(self._outs, {self.manifest.input.name: batch})
        n = len(self.specs)
        return [f[0] for f in out[2 * n :]], [c[0] for c in out[:n]], [d[0] for d in out[n : 2 * n]], box

    def head(self) -> GFLHead:
        return GFLHead.from_onnx(self.model, self.manifest)


# --- geometry -------------------------------------------------------------------------------------
def cell_centers(
    width: int, height: int, strides: Sequence[int], offset: float = 0.5
) -> tuple[torch.Tensor, torch.Tensor]:
    """Centres ``[N, 2]`` (x, y input pixels) of every cell of every level, row-major, levels in
    order (as decode_gfl), and each cell's stride ``[N]``."""
    cs, ss = [], []
    for s in strides:
        gw, gh = -(-width // s), -(-height // s)
        yy, xx = torch.meshgrid(
            torch.arange(gh, dtype=torch.float32), torch.arange(gw, dtype=torch.float32), indexing="ij"
        )
        cs.append(torch.stack([(xx.reshape(-1) + offset) * s, (yy.reshape(-1) + offset) * s], 1))
        ss.append(torch.full((gw * gh,), float(s)))
    return torch.cat(cs), torch.cat(ss)


def decode_boxes(
    dis: torch.Tensor, centers: torch.Tensor, strides: torch.Tensor, reg_max: int
) -> torch.Tensor:
    """Box logits ``[..., N, 4 (reg_max + 1)]`` -> xyxy ``[..., N, 4]`` in input pixels: per side the
    expectation of the softmax over bins times the stride, from the cell centre (decode_gfl's rule)."""
    bins = torch.arange(reg_max + 1, dtype=dis.dtype)
    d = F.softmax(dis.unflatten(-1, (4, reg_max + 1)), dim=-1) @ bins * strides[:, None]
    return torch.cat([centers - d[..., :2], centers + d[..., 2:]], dim=-1)


def box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """IoU matrix ``[len(a), len(b)]`` of xyxy boxes."""
    lt = torch.maximum(a[:, None, :2], b[None, :, :2])
    rb = torch.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)
    area_a = (a[:, 2:] - a[:, :2]).clamp(min=0).prod(-1)
    area_b = (b[:, 2:] - b[:, :2]).clamp(min=0).prod(-1)
    return inter / (area_a[:, None] + area_b[None] - inter).clamp(min=1e-9)


def aligned_iou_giou(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """IoU and GIoU of row-aligned xyxy boxes."""
    lt = torch.maximum(a[:, :2], b[:, :2])
    rb = torch.minimum(a[:, 2:], b[:, 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)
    area_a = (a[:, 2:] - a[:, :2]).clamp(min=0).prod(-1)
    area_b = (b[:, 2:] - b[:, :2]).clamp(min=0).prod(-1)
    union = (area_a + area_b - inter).clamp(min=1e-9)
    iou = inter / union
    hull = (torch.maximum(a[:, 2:], b[:, 2:]) - torch.minimum(a[:, :2], b[:, :2])).clamp(min=0).prod(-1)
    return iou, iou - (hull - union) / hull.clamp(min=1e-9)


def atss_assign(
    centers: torch.Tensor,
    strides: torch.Tensor,
    level_sizes: Sequence[int],
    gt: torch.Tensor,
    topk: int = ATSS_TOPK,
) -> torch.Tensor:
    """ATSS (Zhang et al. 2020) as NanoDet v0.x uses it: each cell's anchor is a square of
    ``ANCHOR_SCALE x stride`` at its centre; per ground-truth box, the ``topk`` cells per level with
    the nearest centres are candidates; those whose anchor IoU is at least the mean + std of the
    candidates' IoUs, and whose centre lies inside the box, are positives; a cell claimed by several
    boxes takes the one it overlaps most. Returns the assigned box index per cell, -1 for negatives."""
    n = len(centers)
    if len(gt) == 0:
        return torch.full((n,), -1, dtype=torch.long)
    half = strides[:, None] * ANCHOR_SCALE / 2
    anchors = torch.cat([centers - half, centers + half], 1)
    gt_c = (gt[:, :2] + gt[:, 2:]) / 2
    dist = torch.cdist(centers, gt_c)  # [N, G]
    cands, start = [], 0
    for size in level_sizes:
        k = min(topk, size)
        cands.append(dist[start : start + size].topk(k, dim=0, largest=False).indices + start)
        start += size
    cand = torch.cat(cands)  # [K, G]
    ious = box_iou(anchors, gt)  # [N, G]
    cand_iou = ious.gather(0, cand)
    thr = cand_iou.mean(0) + cand_iou.std(0)
    g_idx = torch.arange(len(gt)).expand_as(cand)
    cx, cy = centers[cand, 0], centers[cand, 1]
    inside = (
        (cx - gt[g_idx, 0] > 0.01)
        & (cy - gt[g_idx, 1] > 0.01)
        & (gt[g_idx, 2] - cx > 0.01)
        & (gt[g_idx, 3] - cy > 0.01)
    )
    pos = (cand_iou >= thr[None]) & inside
    m = torch.full((n, len(gt)), -1.0)
    m[cand[pos], g_idx[pos]] = ious[cand[pos], g_idx[pos]]
    best, arg = m.max(1)
    return torch.where(best >= 0, arg, torch.full_like(arg, -1))


# --- the loss -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class LossWeights:
    """NanoDet's loss weights (QFL 1, DFL 0.25, GIoU 2) and the distillation weights."""

    qfl: float = 1.0
    dfl: float = 0.25
    giou: float = 2.0
    qfl_beta: float = 2.0
    #: class scores of the known classes towards the parent's (soft-target QFL, every cell)
    distill_cls: float = 1.0
    #: box distributions towards the parent's where the parent sees a known object (>= box_min).
    #: 1.0 / 0.1 rather than 0.25 / 0.3: the parked car's box AP (.5:.95) on held-out frames fell
    #: 0.80 -> 0.61 with the weaker setting, 0.80 -> 0.66 with this one, the new class unchanged
    distill_box: float = 1.0
    distill_box_min: float = 0.1


def quality_focal_loss(logits: torch.Tensor, target: torch.Tensor, beta: float = 2.0) -> torch.Tensor:
    """QFL (GFL paper eq. 5): ``-|y - sigma|^beta ((1 - y) log(1 - sigma) + y log sigma)``, elementwise,
    with soft targets y in [0, 1] (the IoU of the predicted box for a positive, 0 elsewhere, or the
    parent's score when distilling)."""
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    return bce * (logits.sigmoid() - target).abs().pow(beta)


def distribution_focal_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """DFL (GFL paper eq. 6): cross-entropy to the two bins around the continuous target distance,
    weighted by closeness; ``logits [M, reg_max + 1]``, ``target [M]`` in bins (< reg_max)."""
    left = target.long()
    wl = left.float() + 1 - target
    return F.cross_entropy(logits, left, reduction="none") * wl + F.cross_entropy(
        logits, left + 1, reduction="none"
    ) * (1 - wl)


def gfl_loss(
    cls_logits: torch.Tensor,
    dis_logits: torch.Tensor,
    gts: Sequence[torch.Tensor],
    gt_labels: Sequence[torch.Tensor],
    *,
    centers: torch.Tensor,
    strides: torch.Tensor,
    level_sizes: Sequence[int],
    reg_max: int,
    train_classes: Sequence[int],
    parent_cls: torch.Tensor | None = None,
    parent_dis: torch.Tensor | None = None,
    weights: LossWeights = LossWeights(),
) -> tuple[torch.Tensor, dict[str, float]]:
    """The fine-tuning loss of a batch. ``cls_logits [B, N, C]`` / ``dis_logits [B, N, 44]``: the head's
    outputs, all levels concatenated; ``gts[b]`` xyxy input-pixel boxes of the classes being taught
    (``gt_labels[b]`` their class ids, all in ``train_classes``).

    * ``train_classes`` channels: NanoDet's QFL with ATSS positives, target = IoU of the predicted box
      with its ground truth (detached), 0 elsewhere; boxes of the positives by DFL and GIoU, weighted
      by the predicted score, as gfl_head.py ``loss_single``.
    * every other channel (``parent_cls`` given: the parent's sigmoid scores): the same QFL towards the
      parent's scores (distillation, so the known classes are not forgotten), and where the parent
      sees a known object (max score >= ``distill_box_min``) the box distributions towards the
      parent's (cross-entropy to its softmax, weighted by its score: localisation distillation).

    QFL is divided by the number of positives (at least the batch size, so a batch without the new
    class still counts), box losses by the sum of their weights, as NanoDet's ``avg_factor``."""
    b, n, c = cls_logits.shape
    train = torch.zeros(c, dtype=torch.bool)
    train[list(train_classes)] = True
    target = torch.zeros_like(cls_logits)
    if parent_cls is not None:
        target[..., ~train] = parent_cls[..., ~train]
    qfl_weight = torch.ones(c)
    qfl_weight[~train] = weights.distill_cls if parent_cls is not None else 0.0
    pos_b, pos_n, pos_box, pos_lbl = [], [], [], []
    for i in range(b):
        assigned = atss_assign(centers, strides, level_sizes, gts[i])
        idx = torch.nonzero(assigned >= 0).squeeze(1)
        if len(idx):
            pos_b.append(torch.full_like(idx, i))
            pos_n.append(idx)
            pos_box.append(gts[i][assigned[idx]])
            pos_lbl.append(gt_labels[i][assigned[idx]])
    parts: dict[str, torch.Tensor] = {}
    num_pos = 0
    if pos_b:
        pb, pn, gbox, glbl = torch.cat(pos_b), torch.cat(pos_n), torch.cat(pos_box), torch.cat(pos_lbl)
        num_pos = len(pb)
        # only the positives' boxes are needed: decoding every cell was 20 % of the loss's time
        pbox = decode_boxes(dis_logits[pb, pn], centers[pn], strides[pn], reg_max)
        iou, giou = aligned_iou_giou(pbox, gbox)
        target[pb, pn, glbl] = iou.detach().clamp(min=0)
        # GFL weights each positive's box losses by its (detached) best class score
        w = cls_logits[pb, pn].detach().sigmoid().max(1).values
        wsum = w.sum().clamp(min=1e-6)
        parts["giou"] = weights.giou * ((1 - giou) * w).sum() / wsum
        s = strides[pn][:, None]
        c_xy = centers[pn]
        dist = torch.cat([c_xy - gbox[:, :2], gbox[:, 2:] - c_xy], 1) / s  # l, t, r, b in strides
        dist = dist.clamp(0, reg_max - 0.01)
        dfl = distribution_focal_loss(dis_logits[pb, pn].reshape(-1, reg_max + 1), dist.reshape(-1))
        parts["dfl"] = weights.dfl * (dfl.reshape(-1, 4).mean(1) * w).sum() / wsum
    qfl = quality_focal_loss(cls_logits, target, weights.qfl_beta) * qfl_weight
    parts["qfl"] = weights.qfl * qfl.sum() / max(num_pos, b)
    if parent_dis is not None and parent_cls is not None and weights.distill_box > 0:
        pw = parent_cls[..., ~train].max(-1).values  # [B, N]
        sel = pw >= weights.distill_box_min
        if sel.any():
            p = F.softmax(parent_dis[sel].reshape(-1, reg_max + 1), -1)
            ce = -(p * F.log_softmax(dis_logits[sel].reshape(-1, reg_max + 1), -1)).sum(-1)
            ent = -(p * p.clamp(min=1e-9).log()).sum(-1)  # KL = CE - entropy: 0 when equal
            kl = (ce - ent).reshape(-1, 4).mean(1)
            parts["distill_box"] = weights.distill_box * (kl * pw[sel]).sum() / pw[sel].sum()
    total = sum(parts.values(), torch.zeros(()))
    stats = {k: float(v.detach()) for k, v in parts.items()}
    stats["loss"] = float(total.detach())
    stats["positives"] = float(num_pos)
    return total, stats
