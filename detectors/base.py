"""Detector plugins: a registry of detector types keyed by a ``type`` string (like Frigate's detectors).

Each detector type is a class registered under a key, with its own pydantic config model whose
``type: Literal["<key>"]`` field is the discriminator. A camera's YAML then says, for example::

    detector:
      type: nanodet
      score_threshold: 0.4
      classes: [person, car]

and :func:`build_detector` turns that mapping (or an already validated config) into a ready detector.
Every detector returns :class:`supervision.Detections` in the *original* frame's pixel coordinates:
``xyxy`` float32, ``confidence`` float32, ``class_id`` int, and ``data["class_name"]`` (numpy array
of str). Trackers, zones and the incident rules downstream only ever see that one type.

Adding a type (see docs/MODELS.md)::

    class MyConfig(DetectorConfig):
        type: Literal["mine"] = Field("mine", title=..., description=...)

    @register_detector("mine")
    class MyDetector(Detector):
        config_model = MyConfig
        def __init__(self, config: MyConfig) -> None: ...
        def detect(self, frame_bgr): ...
"""

from __future__ import annotations

import importlib
import inspect
import typing
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from functools import cache
from typing import Annotated, Any, ClassVar, TypeVar, Union

import numpy as np
import supervision as sv
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

# Modules whose detectors are always available; imported on first use of the registry so that
# importing this module alone stays cheap and free of import cycles.
BUILTIN_DETECTOR_MODULES: tuple[str, ...] = ("gridwatch.detectors.nanodet",)


class DetectorConfigError(ValueError):
    """A detector configuration problem, phrased as `detector.key.path: problem`."""


class DetectorConfig(BaseModel):
    """Base of every detector's config model. Subclasses narrow ``type`` to ``Literal["<key>"]``."""

    model_config = ConfigDict(extra="forbid", validate_default=True, frozen=True)

    type: str = Field(title="Detector type", description="Registered detector type key, e.g. `nanodet`.")


class Detector(ABC):
    """What every detector offers the camera worker."""

    #: the pydantic model of this detector type's config (set by each subclass)
    config_model: ClassVar[type[DetectorConfig]]
    #: the registry key, set by :func:`register_detector`
    type_key: ClassVar[str]

    config: DetectorConfig
    #: identifies the exact weights, e.g. "nanodet-g-416@eee5a53ea190"; stored with every detection
    #: so an incident can be traced back to the model that saw it
    model_version: str

    @abstractmethod
    def detect(self, frame_bgr: np.ndarray) -> sv.Detections:
        """Detect objects in one BGR uint8 frame (H x W x 3); boxes in that frame's pixels."""

    @property
    @abstractmethod
    def class_names(self) -> Sequence[str]:
        """The labels this detector can output, indexed by ``class_id``."""

    def close(self) -> None:  # noqa: B027 - optional hook, most detectors hold nothing to release
        """Release native resources (sessions, devices). Safe to call twice."""


D = TypeVar("D", bound=type[Detector])

_REGISTRY: dict[str, type[Detector]] = {}


def register_detector(type_key: str) -> Callable[[D], D]:
    """Class decorator registering a detector type under ``type_key``.

    Checks at import time that the class's ``config_model`` has ``type: Literal[type_key]``, so a
    copy-pasted plugin cannot silently shadow another type's configs.
    """

    def decorate(cls: D) -> D:
        model = getattr(cls, "config_model", None)
        if model is None or not (isinstance(model, type) and issubclass(model, DetectorConfig)):
            raise TypeError(f"{cls.__name__}: config_model must be a DetectorConfig subclass")
        field = model.model_fields.get("type")
        allowed = typing.get_args(field.annotation) if field is not None else ()
        if typing.get_origin(field.annotation) is not typing.Literal or allowed != (type_key,):
            raise TypeError(f'{model.__name__}.type must be declared as Literal["{type_key}"]')
        existing = _REGISTRY.get(type_key)
        if existing is not None and existing is not cls and not _same_definition(existing, cls):
            raise ValueError(
                f"detector type {type_key!r} is already registered by {existing.__module__}.{existing.__qualname__}"
            )
        cls.type_key = type_key
        if existing is None or existing is cls:
            _REGISTRY[type_key] = cls
            _union_adapter.cache_clear()
        return cls

    return decorate


def _same_definition(a: type, b: type) -> bool:
    """The same class statement executed twice: the module imported under two names (e.g. as
    ``detectors.nanodet`` from a checkout and as ``gridwatch.detectors.nanodet``). The first class
    stays registered instead of the second import failing; import ``gridwatch.detectors.*`` only."""
    try:
        return a.__qualname__ == b.__qualname__ and inspect.getfile(a) == inspect.getfile(b)
    except TypeError:
        return False


def load_builtin_detectors() -> None:
    """Import the built-in detector modules so that they register themselves."""
    for module in BUILTIN_DETECTOR_MODULES:
        importlib.import_module(module)


def registered_detectors() -> dict[str, type[Detector]]:
    """Registered detector classes by type key (built-ins included)."""
    load_builtin_detectors()
    return dict(_REGISTRY)


def detector_config_union() -> Any:
    """The discriminated union of all registered config models, for use in a YAML config model::

        class CameraConfig(BaseModel):
            detector: detector_config_union() = Field(...)

    Call it after importing any third-party plugin modules: it captures the registry as it is then.
    """
    load_builtin_detectors()
    models = tuple(cls.config_model for cls in _REGISTRY.values())
    if len(models) == 1:
        # a one-member Union collapses to the model itself; the discriminator still applies
        return Annotated[models[0], Field(discriminator="type")]
    return Annotated[Union[models], Field(discriminator="type")]  # noqa: UP007 - built at run time


@cache
def _union_adapter() -> TypeAdapter[Any]:
    return TypeAdapter(detector_config_union())


def parse_detector_config(
    data: Mapping[str, Any] | DetectorConfig, *, where: str = "detector"
) -> DetectorConfig:
    """Validate a detector config mapping. Raises DetectorConfigError naming the key path."""
    if isinstance(data, DetectorConfig):
        return data
    if not isinstance(data, Mapping):
        raise DetectorConfigError(f"{where}: expected a mapping with a `type` key, got {type(data).__name__}")
    known = registered_detectors()
    kind = data.get("type")
    if kind is None:
        raise DetectorConfigError(f"{where}.type: missing; registered types: {', '.join(sorted(known))}")
    if kind not in known:
        raise DetectorConfigError(
            f"{where}.type: unknown detector type {kind!r}; registered types: {', '.join(sorted(known))}"
        )
    try:
        return _union_adapter().validate_python(dict(data))
    except ValidationError as exc:
        # errors come back located as (<type>, field, ...); name the field under `where`
        problems = []
        for err in exc.errors():
            loc = [str(p) for p in err["loc"]]
            if loc and loc[0] == kind:
                loc = loc[1:]
            path = ".".join([where, *loc])
            problems.append(f"{path}: {err['msg']}")
        raise DetectorConfigError("; ".join(problems)) from None


def build_detector(config: Mapping[str, Any] | DetectorConfig, *, where: str = "detector") -> Detector:
    """Build a ready detector from a config mapping (e.g. a YAML section) or a validated config."""
    cfg = parse_detector_config(config, where=where)
    cls = registered_detectors()[cfg.type]
    if not isinstance(cfg, cls.config_model):
        raise DetectorConfigError(
            f"{where}: config {type(cfg).__name__} is not a {cls.config_model.__name__}"
        )
    return cls(cfg)  # type: ignore[call-arg]


# --- the common output type -----------------------------------------------------------------------
def make_detections(
    xyxy: np.ndarray, confidence: np.ndarray, class_id: np.ndarray, class_names: Sequence[str]
) -> sv.Detections:
    """Detections with the dtypes every consumer relies on; ``class_names`` is indexed by class_id."""
    xyxy = np.asarray(xyxy, dtype=np.float32).reshape(-1, 4)
    class_id = np.asarray(class_id, dtype=np.int64).reshape(-1)
    names = np.asarray(class_names, dtype=str)
    return sv.Detections(
        xyxy=xyxy,
        confidence=np.asarray(confidence, dtype=np.float32).reshape(-1),
        class_id=class_id,
        data={"class_name": names[class_id] if len(class_id) else np.array([], dtype=str)},
    )


def empty_detections() -> sv.Detections:
    """No detections, with the same fields and dtypes as :func:`make_detections` gives."""
    return make_detections(np.zeros((0, 4)), np.zeros(0), np.zeros(0), [])
