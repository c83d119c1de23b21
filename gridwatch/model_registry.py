"""The model registry: every detector and verifier version, its lineage, its figures and aliases.

Backed by MLflow's model registry (`mlflow-skinny`, the `train` extra) on a local SQLite database
and a file artifact store under one directory, so an engineer's laptop and the centre's training
box work the same way (and a real MLflow server can replace the directory later):

    <root>/mlflow.db           registered models `detector` and `verifier`, their versions, tags, aliases
    <root>/artifacts/...       each version's files (the ONNX model, its card, label map)
    <root>/deployed/<kind>.<alias>.json
                               what an alias points at now: version, local path, sha256. Camera
                               workers read only this file (`read_deployed`, no MLflow import, no
                               database), so they keep onnxruntime as their only model dependency.

Every version carries `sha256` (of its ONNX file, checked again at promotion), `parent` (the
version it was trained from), `dataset` (the dataset version it was trained on) and the metrics
of the standard evaluation sets (`clips.overall.f1`, `clips.gathering.recall`, ...). Aliases:
`production` (what the cameras run), `shadow` (runs beside production, never dispatches),
`candidate` (waiting for a decision).

A promotion to `production` is refused when the new version is worse than the current one on any
higher-is-better metric both carry (precision, recall, F1, S, mAP, AP) unless it is forced with a
reason; every promotion and rollback (who, when, from which version, why, forced or not) is kept in
the registered model's `history` tag, and `rollback` returns an alias to the version it held
before its latest promotion.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "ALIASES",
    "KINDS",
    "DeployedModel",
    "ModelRegistry",
    "ModelVersion",
    "PromotionRefused",
    "RegistryError",
    "flatten_eval",
    "read_deployed",
]

KINDS = ("detector", "verifier")
ALIASES = ("production", "shadow", "candidate")
_HIGHER_IS_BETTER = ("precision", "recall", "f1", "s_score", "map", "map50", "ap", "ap50", "auc")


class RegistryError(ValueError):
    """A registry operation that cannot be done; the message says why."""


class PromotionRefused(RegistryError):
    """The version is worse than production on a standard metric and the promotion was not forced."""


@dataclass(frozen=True)
class ModelVersion:
    kind: str
    version: int
    sha256: str
    path: Path
    parent: str | None
    dataset: str | None
    metrics: dict[str, float]
    aliases: tuple[str, ...]
    created_ms: int
    description: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "version": self.version,
            "sha256": self.sha256,
            "path": str(self.path),
            "parent": self.parent,
            "dataset": self.dataset,
            "metrics": self.metrics,
            "aliases": list(self.aliases),
            "created_ms": self.created_ms,
            "description": self.description,
        }


@dataclass(frozen=True)
class DeployedModel:
    kind: str
    alias: str
    version: int
    path: Path
    sha256: str
    at_ms: int
    by: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _onnx_of(model_dir: Path) -> Path:
    found = sorted(model_dir.glob("*.onnx"))
    if len(found) != 1:
        raise RegistryError(
            f"{model_dir}: a model directory holds exactly one .onnx file (found {len(found)})"
        )
    return found[0]


def flatten_eval(result: dict[str, Any], prefix: str = "clips") -> dict[str, float]:
    """The figures of `gridwatch eval detectors` (its last JSON line) as registry metrics:
    `clips.overall.f1`, `clips.gathering.precision`, ... (None figures are left out)."""
    out: dict[str, float] = {}
    groups = {**result.get("categories", {}), "overall": result.get("overall", {})}
    for group, figures in groups.items():
        for k, v in (figures or {}).items():
            if isinstance(v, int | float) and not isinstance(v, bool):
                out[f"{prefix}.{group}.{k}"] = float(v)
    return out


def _higher_is_better(metric: str) -> bool:
    return metric.rsplit(".", 1)[-1].lower() in _HIGHER_IS_BETTER


def read_deployed(root: Path | str, kind: str, alias: str = "production") -> DeployedModel | None:
    """What `alias` of `kind` points at, from the pointer file (cheap: camera workers poll it)."""
    p = Path(root) / "deployed" / f"{kind}.{alias}.json"
    try:
        d = json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    return DeployedModel(
        d["kind"],
        d["alias"],
        int(d["version"]),
        Path(d["path"]),
        d["sha256"],
        int(d["at_ms"]),
        d.get("by", ""),
    )


class ModelRegistry:
    def __init__(self, root: Path | str) -> None:
        self.root = Path(root).resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / "deployed").mkdir(exist_ok=True)
        import logging

        import mlflow
        from mlflow import MlflowClient

        # MLflow logs its database migrations at INFO on first use: not the user's business
        logging.getLogger("mlflow").setLevel(logging.WARNING)
        logging.getLogger("alembic").setLevel(logging.WARNING)

        self._mlflow = mlflow
        self._uri = f"sqlite:///{self.root / 'mlflow.db'}"
        self.client = MlflowClient(tracking_uri=self._uri, registry_uri=self._uri)

    # --- helpers ---------------------------------------------------------------------------
    def _check_kind(self, kind: str) -> None:
        if kind not in KINDS:
            raise RegistryError(f"model kind must be one of {', '.join(KINDS)}, not {kind!r}")

    def _check_alias(self, alias: str) -> None:
        if alias not in ALIASES:
            raise RegistryError(f"alias must be one of {', '.join(ALIASES)}, not {alias!r}")

    def _experiment(self, kind: str) -> str:
        name = f"gridwatch-{kind}"
        exp = self.client.get_experiment_by_name(name)
        if exp is not None:
            return exp.experiment_id
        return self.client.create_experiment(
            name, artifact_location=(self.root / "artifacts" / kind).as_uri()
        )

    def _ensure_model(self, kind: str) -> None:
        from mlflow.exceptions import MlflowException

        try:
            self.client.get_registered_model(kind)
        except MlflowException:
            self.client.create_registered_model(kind, tags={"history": "[]"})

    def _history(self, kind: str) -> list[dict[str, Any]]:
        rm = self.client.get_registered_model(kind)
        return json.loads(rm.tags.get("history", "[]"))

    def _to_version(self, kind: str, mv: Any, aliases: dict[str, int]) -> ModelVersion:
        run = self.client.get_run(mv.run_id)
        path = Path(mv.source.removeprefix("file://"))
        tags = mv.tags or {}
        return ModelVersion(
            kind=kind,
            version=int(mv.version),
            sha256=tags.get("sha256", ""),
            path=path,
            parent=tags.get("parent") or None,
            dataset=tags.get("dataset") or None,
            metrics=dict(run.data.metrics),
            aliases=tuple(a for a, v in sorted(aliases.items()) if v == int(mv.version)),
            created_ms=int(mv.creation_timestamp),
            description=mv.description or "",
        )

    def _aliases(self, kind: str) -> dict[str, int]:
        rm = self.client.get_registered_model(kind)
        return {a: int(v) for a, v in (rm.aliases or {}).items()}

    # --- what engineers do -----------------------------------------------------------------
    def register(
        self,
        model_dir: Path | str,
        *,
        kind: str,
        metrics: dict[str, float] | None = None,
        parent: str | None = None,
        dataset: str | None = None,
        description: str = "",
    ) -> ModelVersion:
        """Store a model directory (one .onnx plus its card, label map, ...) as a new version."""
        self._check_kind(kind)
        model_dir = Path(model_dir)
        if not model_dir.is_dir():
            raise RegistryError(f"{model_dir}: not a directory")
        digest = sha256_of(_onnx_of(model_dir))
        self._ensure_model(kind)
        exp = self._experiment(kind)
        run = self.client.create_run(exp, tags={"kind": kind, "sha256": digest})
        try:
            for k, v in (metrics or {}).items():
                self.client.log_metric(run.info.run_id, k, float(v))
            self.client.log_artifacts(run.info.run_id, str(model_dir), artifact_path="model")
        finally:
            self.client.set_terminated(run.info.run_id)
        tags = {"sha256": digest, "parent": parent or "", "dataset": dataset or ""}
        mv = self.client.create_model_version(
            kind,
            source=f"{run.info.artifact_uri}/model",
            run_id=run.info.run_id,
            tags=tags,
            description=description,
        )
        return self._to_version(kind, mv, self._aliases(kind))

    def record_metrics(
        self, kind: str, ref: str | int, metrics: dict[str, float], *, by: str = ""
    ) -> ModelVersion:
        """Add figures to an existing version: a new standard set was evaluated on it (e.g. the
        production model, before a candidate trained with a new class is compared with it).
        Figures it already has are never changed: the registry's record of a version is append-only."""
        v = self.get(kind, ref)
        bad = sorted(k for k, val in metrics.items() if not math.isfinite(float(val)))
        if bad:
            raise RegistryError(f"{kind} v{v.version}: not a number: {', '.join(bad)}")
        clash = sorted(k for k in metrics if k in v.metrics and v.metrics[k] != float(metrics[k]))
        if clash:
            raise RegistryError(f"{kind} v{v.version}: already has other figures for {', '.join(clash)}")
        run_id = self.client.get_model_version(kind, str(v.version)).run_id
        added = sorted(k for k in metrics if k not in v.metrics)
        for k in added:
            self.client.log_metric(run_id, k, float(metrics[k]))
        if added:  # the gate's inputs changed: the history says when, and which sets
            self._record(
                kind,
                {"op": "metrics", "alias": None, "version": v.version, "previous": None, "by": by,
                 "reason": f"{len(added)} figures of {', '.join(sorted({k.split('.')[0] for k in added}))}",
                 "forced": False, "worse": []},
            )  # fmt: skip
        return self.get(kind, v.version)

    def versions(self, kind: str) -> list[ModelVersion]:
        self._check_kind(kind)
        from mlflow.exceptions import MlflowException

        try:
            aliases = self._aliases(kind)
        except MlflowException:
            return []
        found = self.client.search_model_versions(f"name='{kind}'")
        return sorted((self._to_version(kind, mv, aliases) for mv in found), key=lambda v: v.version)

    def get(self, kind: str, ref: str | int) -> ModelVersion:
        """A version by number or by alias."""
        self._check_kind(kind)
        from mlflow.exceptions import MlflowException

        try:
            if isinstance(ref, int) or str(ref).isdigit():
                mv = self.client.get_model_version(kind, str(ref))
            else:
                self._check_alias(str(ref))
                mv = self.client.get_model_version_by_alias(kind, str(ref))
        except MlflowException:
            raise RegistryError(f"no {kind} version {ref!r} in the registry at {self.root}") from None
        return self._to_version(kind, mv, self._aliases(kind))

    def history(self, kind: str) -> list[dict[str, Any]]:
        self._check_kind(kind)
        return self._history(kind)

    def worse_than_production(self, kind: str, version: ModelVersion) -> list[str]:
        """The higher-is-better metrics on which `version` falls below production (empty: not worse)."""
        try:
            prod = self.get(kind, "production")
        except RegistryError:
            return []
        out = []
        for m in sorted(set(prod.metrics) & set(version.metrics)):
            if _higher_is_better(m) and version.metrics[m] < prod.metrics[m]:
                out.append(f"{m}: {prod.metrics[m]:.4g} (v{prod.version}) -> {version.metrics[m]:.4g}")
        return out

    def promote(
        self,
        kind: str,
        version: int,
        *,
        alias: str = "production",
        by: str = "",
        reason: str = "",
        force: bool = False,
    ) -> DeployedModel:
        """Point `alias` at `version` (checked: its file's sha256; for production, its figures)."""
        self._check_alias(alias)
        v = self.get(kind, version)
        onnx = _onnx_of(v.path)
        if sha256_of(onnx) != v.sha256:
            raise RegistryError(
                f"{kind} v{version}: {onnx} does not match its registered sha256 {v.sha256[:12]}"
            )
        worse = self.worse_than_production(kind, v) if alias == "production" else []
        if worse and not force:
            raise PromotionRefused(
                f"{kind} v{version} is worse than production on the standard sets:\n  "
                + "\n  ".join(worse)
                + "\n(use --force with --reason to promote anyway; it is recorded)"
            )
        if force and not reason.strip():
            raise RegistryError("a forced promotion needs a reason (--reason)")
        previous = self._aliases(kind).get(alias)
        self._record(
            kind,
            {"op": "promote", "alias": alias, "version": version, "previous": previous, "by": by,
             "reason": reason, "forced": bool(worse and force), "worse": worse},
        )  # fmt: skip
        return self._point(kind, alias, v, by)

    def rollback(
        self, kind: str, *, alias: str = "production", by: str = "", reason: str = ""
    ) -> DeployedModel:
        """Back to the version `alias` held before its latest promotion."""
        self._check_alias(alias)
        last = next(
            (h for h in reversed(self._history(kind)) if h["alias"] == alias and h["op"] == "promote"), None
        )
        if last is None or last.get("previous") is None:
            raise RegistryError(f"{kind}: {alias} has no earlier version to roll back to")
        target = self.get(kind, int(last["previous"]))
        self._record(
            kind,
            {"op": "rollback", "alias": alias, "version": target.version, "previous": last["version"], "by": by,
             "reason": reason, "forced": False, "worse": []},
        )  # fmt: skip
        # the rollback itself counts as a promotion of the older version (a second rollback undoes it)
        self._record(
            kind,
            {"op": "promote", "alias": alias, "version": target.version, "previous": last["version"], "by": by,
             "reason": f"rollback: {reason}", "forced": False, "worse": []},
        )  # fmt: skip
        return self._point(kind, alias, target, by)

    def unset(self, kind: str, *, alias: str, by: str = "", reason: str = "") -> int:
        """Take `alias` off its version (e.g. end a shadow run); returns the version it held. Not
        for `production`: camera workers always need one (promote or roll back instead)."""
        self._check_alias(alias)
        if alias == "production":
            raise RegistryError("production cannot be unset: promote another version or roll back")
        held = self._aliases(kind).get(alias)
        if held is None:
            raise RegistryError(f"{kind}: {alias} points at no version")
        self.client.delete_registered_model_alias(kind, alias)
        (self.root / "deployed" / f"{kind}.{alias}.json").unlink(missing_ok=True)
        self._record(
            kind,
            {"op": "unset", "alias": alias, "version": None, "previous": held, "by": by,
             "reason": reason, "forced": False, "worse": []},
        )  # fmt: skip
        return held

    def _record(self, kind: str, entry: dict[str, Any]) -> None:
        hist = self._history(kind)
        hist.append({**entry, "at_ms": int(time.time() * 1000)})
        # MLflow tag values are limited (5,000 characters in its SQL store): keep the newest entries
        text = json.dumps(hist, ensure_ascii=False)
        while len(text) > 4900 and len(hist) > 1:
            hist = hist[1:]
            text = json.dumps(hist, ensure_ascii=False)
        self.client.set_registered_model_tag(kind, "history", text)

    def _point(self, kind: str, alias: str, v: ModelVersion, by: str) -> DeployedModel:
        self.client.set_registered_model_alias(kind, alias, str(v.version))
        d = DeployedModel(kind, alias, v.version, v.path, v.sha256, int(time.time() * 1000), by)
        p = self.root / "deployed" / f"{kind}.{alias}.json"
        tmp = p.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(
            json.dumps(
                {
                    "kind": kind,
                    "alias": alias,
                    "version": v.version,
                    "path": str(v.path),
                    "sha256": v.sha256,
                    "at_ms": d.at_ms,
                    "by": by,
                },
                indent=1,
            ),  # fmt: skip
            encoding="utf-8",
        )
        os.replace(tmp, p)  # a worker polling the file sees the old or the new pointer, never half
        return d
