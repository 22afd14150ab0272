"""The runtime that runs a recipe's network: Keras itself, or OpenVINO at a stated precision.

    python build_index.py --images ~/photos --name holiday --runtime openvino-f32

The runtime is part of the recipe (`Recipe.runtime`, its key and identity): OpenVINO at bf16 moves
descriptors slightly (measured: docs/runtimes.md), so an index described one way
is searched with queries described the same way, and `load_index` refuses a query recipe of another
runtime. `keras` is the default and leaves keys and manifests as they were.

OpenVINO runs the same Keras network and weights: the trunk is converted with
`openvino.convert_model` (fully convolutional trunks with a dynamic input shape, so one conversion
serves every image size and pooling), saved as OpenVINO IR under the cache folder, keyed by backbone,
weights, input size and the versions involved, and compiled for the CPU at float32 or bfloat16. A
second process reads the saved IR instead of building and converting the Keras network again.
bfloat16 needs CPU units for it (AVX512_BF16 or AMX): elsewhere OpenVINO would quietly run float32,
so `openvino-bf16` is refused there with a message.

The keras-hub rows (vision transformers) take a named input and are not converted here: they run
on Keras only.

cbir.trunks builds the Keras network and calls `openvino_model` with the identity to cache it under;
this module knows nothing of recipes or trunks, so imports go one way.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import warnings
from enum import Enum
from importlib import metadata
from pathlib import Path
from typing import Any, Callable

import numpy as np

from cbir.errors import SettingsError

logger = logging.getLogger(__name__)

INSTALL_HINT = "pip install -r requirements-scale.txt"
CACHE_ENV = "CBIR_OPENVINO_CACHE"  # default: $CBIR_CACHE_DIR/openvino, else ~/.cache/cbir/openvino


class Runtime(str, Enum):
    KERAS = "keras"
    OPENVINO_F32 = "openvino-f32"
    OPENVINO_BF16 = "openvino-bf16"

    @property
    def key_part(self) -> str:
        """What the recipe key gains (nothing for Keras: existing keys stay as they are)."""
        return {Runtime.KERAS: "", Runtime.OPENVINO_F32: "ovf32", Runtime.OPENVINO_BF16: "ovbf16"}[self]

    @property
    def label(self) -> str:
        return {Runtime.KERAS: "Keras", Runtime.OPENVINO_F32: "OpenVINO f32", Runtime.OPENVINO_BF16: "OpenVINO bf16"}[self]

    @property
    def precision(self) -> str | None:
        return {Runtime.KERAS: None, Runtime.OPENVINO_F32: "f32", Runtime.OPENVINO_BF16: "bf16"}[self]

    @classmethod
    def from_key_part(cls, part: str) -> Runtime | None:
        return next((runtime for runtime in cls if runtime.key_part and runtime.key_part == part), None)


def parse_runtime(text: str | Runtime | None) -> Runtime:
    try:
        return Runtime(text or Runtime.KERAS)
    except ValueError:
        raise SettingsError(f"unknown runtime {text!r}; known runtimes: {', '.join(r.value for r in Runtime)}") from None


def _openvino():
    try:
        import openvino
    except ImportError:
        raise SettingsError(f"--runtime openvino-* needs OpenVINO, which is not installed: {INSTALL_HINT} "
                            "(or build with --runtime keras)") from None  # fmt: skip
    return openvino


_core = None
_core_lock = threading.Lock()


def _core_instance():
    global _core
    with _core_lock:
        if _core is None:
            _core = _openvino().Core()
        return _core


def cpu_capabilities() -> list[str]:
    """What OpenVINO's CPU plugin can run here (FP32, BF16, INT8, ...)."""
    return list(_core_instance().get_property("CPU", "OPTIMIZATION_CAPABILITIES"))


def check_runtime(runtime: Runtime) -> None:
    """Refuse, with what to do, a runtime this machine cannot run as asked."""
    if runtime is Runtime.KERAS:
        return
    capabilities = cpu_capabilities()
    if runtime is Runtime.OPENVINO_BF16 and "BF16" not in capabilities:
        raise SettingsError(
            f"--runtime openvino-bf16 needs a CPU with bfloat16 units (AVX512_BF16 or AMX); this one offers "
            f"{', '.join(capabilities)} (OpenVINO would quietly run float32). Use --runtime openvino-f32 or keras."
        )


def cache_dir() -> Path:
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    return Path(os.environ.get("CBIR_CACHE_DIR", Path.home() / ".cache" / "cbir")) / "openvino"


def conversion_key(backbone: str, identity: dict[str, Any]) -> str:
    """Names the converted network: the same trunk identity (backbone, weights, input size, versions
    of what converts it) gives the same IR."""
    identity = {**identity, "openvino": metadata.version("openvino")}
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]
    return f"{backbone}-{digest}"


class _Compiled:
    """An OpenVINO compiled model behind the one call a Trunk makes of its model."""

    def __init__(self, compiled: Any) -> None:
        self.compiled = compiled

    def predict_on_batch(self, pixels: np.ndarray) -> np.ndarray:
        return self.compiled(np.ascontiguousarray(pixels, dtype=np.float32))[0]


def openvino_model(backbone: str, identity: dict[str, Any], runtime: Runtime, keras_model: Callable[[], Any]) -> _Compiled:
    """A network converted to OpenVINO (read from the cache when converted before, else converted from
    `keras_model()`) and compiled at the runtime's precision. `identity` names the network (cbir.trunks)."""
    from cbir import atomic

    check_runtime(runtime)
    openvino = _openvino()
    core = _core_instance()
    folder = cache_dir() / conversion_key(backbone, identity)
    xml = folder / "model.xml"
    if xml.is_file():
        model = core.read_model(str(xml))
        logger.info("%s: OpenVINO network read from %s", backbone, folder)
    else:
        keras = keras_model()
        logger.info("%s: converting to OpenVINO (once; kept in %s)", backbone, folder)
        with warnings.catch_warnings():  # Keras notes the traced input's structure; nothing is wrong
            warnings.simplefilter("ignore", UserWarning)
            model = openvino.convert_model(keras)
        with atomic.replacing_folder(folder) as temporary:
            openvino.save_model(model, str(temporary / "model.xml"), compress_to_fp16=False)
        del keras
    return _Compiled(core.compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": runtime.precision}))
