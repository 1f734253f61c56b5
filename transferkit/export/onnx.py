"""ONNX graphs that carry their own preprocessing, and ONNX Runtime sessions that run them.

Why the preprocessing is inside the graph: the most common complaint about exported classifiers (Teachable
Machine, Ultralytics, hand-written TFLite pipelines) is an exported model that disagrees with the trained one
because a client re-implemented scaling, mean/std or channel order by hand. Our graphs take what every image
library produces, ``uint8`` RGB images ``[N, H, W, 3]`` at the model's input size, and do the rest inside:

    images (uint8 NHWC) -> float -> NCHW -> x / 255 -> (x - mean) / std -> network -> logits, probs

A client only resizes and crops; the exact policy (shorter side, interpolation, centre crop) is written in
the model's metadata (:func:`resize_policy`) and implemented once, in :func:`transferkit.data.transforms.eval_ops`
(:func:`preprocess_image` here), which the trained model's evaluation used too.

The same wrapper exports a backbone alone (``outputs=("features",)``) for the embedding engine.
"""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import io
import json
import logging
import os
import shutil
import stat
import tempfile
import warnings
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import torch
from torch import nn
from torchvision.transforms import v2 as T

from transferkit._version import __version__
from transferkit.data.transforms import eval_ops, resize_size
from transferkit.errors import ConfigError, TransferKitError
from transferkit.fileio import atomic_write, write_text
from transferkit.spec import BackboneSpec

__all__ = [
    "INPUT",
    "OPSET",
    "onnx_available",
    "require_onnx",
    "Preprocessed",
    "resize_policy",
    "export_onnx",
    "export_torchscript",
    "OnnxModel",
    "GraphChanged",
    "record_graph",
    "open_recorded_graph",
    "private_graph_dir",
    "preprocess_image",
    "uint8_pipeline",
    "session_options",
]

INPUT = "images"
OPSET = 18
META_KEY = "transferkit"  # one metadata_props entry holding the JSON metadata
HASH_SUFFIX = ".sha256"  # beside a cached graph: the SHA-256 of its bytes when it was written

logger = logging.getLogger(__name__)


def onnx_available() -> bool:
    """Whether ONNX Runtime and the exporter's dependencies are installed (``pip install transferkit[onnx]``)."""
    import importlib.util

    return all(importlib.util.find_spec(name) is not None for name in ("onnxruntime", "onnx"))


def require_onnx(what: str) -> None:
    if not onnx_available():
        raise ConfigError(f"{what} needs ONNX Runtime and onnx, which are not installed; "
                          "install them with `pip install 'transferkit[onnx]'` or choose --engine torch")


class Preprocessed(nn.Module):
    """``net`` behind the model's own preprocessing: uint8 RGB ``[N, H, W, 3]`` in.

    ``x * scale + shift`` with ``scale = 1 / (255 std)`` and ``shift = -mean / std`` is torchvision's
    ``ToDtype(float32, scale=True)`` followed by ``Normalize(mean, std)`` as one multiply-add; the parity
    check compares against the torchvision ops themselves.
    """

    def __init__(self, net: nn.Module, mean: Sequence[float], std: Sequence[float], outputs: Sequence[str] = ("logits", "probs"),
                 temperature: float = 1.0) -> None:
        super().__init__()
        self.net = net
        self.outputs = tuple(outputs)
        mean_t, std_t = torch.tensor(mean, dtype=torch.float32), torch.tensor(std, dtype=torch.float32)
        self.register_buffer("scale", (1.0 / (255.0 * std_t)).view(1, 3, 1, 1))
        self.register_buffer("shift", (-mean_t / std_t).view(1, 3, 1, 1))
        self.temperature = float(temperature)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...] | torch.Tensor:
        x = images.permute(0, 3, 1, 2).float() * self.scale + self.shift
        out = self.net(x)
        if self.outputs == ("features",):
            return out
        # probabilities at the fitted temperature (1 unless calibration fitted one); logits stay raw
        return out, (out / self.temperature).softmax(dim=1)


def resize_policy(spec: BackboneSpec) -> dict[str, Any]:
    """How a client turns a photo into the graph's input: exactly the evaluation transform of the trained model."""
    return {
        "input": "uint8 RGB, layout NHWC [N, H, W, 3], H = W = input_size; no scaling or normalisation (inside the graph)",
        "resize_shorter_side": resize_size(spec),
        "interpolation": spec.interpolation,
        "antialias": True,
        "center_crop": spec.input_size,
        "exif_orientation": "applied",
        "alpha": "composited onto white",
        "jpeg_draft": (f"JPEGs were decoded with libjpeg's DCT scaling to a shorter side >= {resize_size(spec)} "
                       "(PIL Image.draft) before resizing; a full decode differs by a few grey levels"),
        "reference": "transferkit.export.onnx.preprocess_image",
    }


def uint8_pipeline(spec: BackboneSpec) -> T.Compose:
    """PIL image -> uint8 CHW tensor at the input size: the evaluation geometry, no normalisation."""
    return T.Compose(eval_ops(spec) + [T.ToImage()])


def preprocess_image(image: Any, spec: BackboneSpec) -> np.ndarray:
    """One PIL RGB image -> the graph's input row, uint8 ``[H, W, 3]`` (see :func:`resize_policy`)."""
    return uint8_pipeline(spec)(image).permute(1, 2, 0).contiguous().numpy()


def _quiet_export() -> contextlib.AbstractContextManager:
    stack = contextlib.ExitStack()
    stack.enter_context(warnings.catch_warnings())
    warnings.simplefilter("ignore")
    return stack


def export_onnx(wrapper: Preprocessed, input_size: int, out: str | Path, metadata: Mapping[str, Any]) -> Path:
    """Write ``wrapper`` as ONNX (dynamic batch) with ``metadata`` as JSON in the model's metadata_props.

    The TorchScript-based exporter (``dynamo=False``) is used first: for these convolutional networks it
    gives the same graph as the dynamo exporter much faster (Lite0, timed once here with both exporters on the
    same wrapper: 0.7 s vs 10 s), which matters because the inference engine exports on first use. Where a future torch drops it, the dynamo
    exporter is used. Either way the result is checked by the callers' parity checks.
    """
    import onnx

    target = Path(out)
    wrapper = wrapper.eval()
    example = torch.zeros(2, input_size, input_size, 3, dtype=torch.uint8)
    names = list(wrapper.outputs)
    buffer = io.BytesIO()
    with _quiet_export(), torch.no_grad():
        try:
            torch.onnx.export(wrapper, (example,), buffer, input_names=[INPUT], output_names=names, opset_version=OPSET,
                              dynamic_axes={name: {0: "batch"} for name in [INPUT, *names]}, dynamo=False)
        except (TypeError, RuntimeError, ValueError):  # no legacy exporter in this torch: the dynamo one
            buffer = io.BytesIO()
            batch = torch.export.Dim("batch", min=1, max=65536)
            program = torch.onnx.export(wrapper, (example,), input_names=[INPUT], output_names=names,
                                        opset_version=OPSET, dynamic_shapes=({0: batch},), dynamo=True)
            program.save(buffer)
    model = onnx.load_from_string(buffer.getvalue())
    del model.metadata_props[:]
    entry = model.metadata_props.add()
    entry.key, entry.value = META_KEY, json.dumps(dict(metadata), sort_keys=True)
    model.producer_name, model.producer_version = "transferkit", __version__
    target.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(target) as tmp:
        onnx.save(model, str(tmp))
    return target


def export_torchscript(wrapper: Preprocessed, input_size: int, out: str | Path, metadata: Mapping[str, Any]) -> Path:
    """Write ``wrapper`` traced to TorchScript, with ``metadata`` as the extra file ``transferkit.json``."""
    target = Path(out)
    example = torch.zeros(2, input_size, input_size, 3, dtype=torch.uint8)
    with _quiet_export(), torch.no_grad():
        traced = torch.jit.trace(wrapper.eval(), (example,), check_trace=False)
    target.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(target) as tmp, _quiet_export():  # torch.jit.save warns that TorchScript is deprecated
        torch.jit.save(traced, str(tmp), _extra_files={f"{META_KEY}.json": json.dumps(dict(metadata), sort_keys=True)})
    return target


def session_options(threads: int | None = None) -> Any:
    """ONNX Runtime options for a CPU that is shared with decoding workers.

    ``threads`` intra-op threads (callers pass the CPU plan's share, so threads + workers never exceed
    the cores), one inter-op thread, and no spin-waiting: a spinning idle thread would take the core a
    decoding worker needs.
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = int(threads)
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3
    return options


class GraphChanged(TransferKitError):
    """An ONNX graph's bytes are not the ones recorded when it was written (its SHA-256 differs)."""


class OnnxModel:
    """An exported transferkit graph in an ONNX Runtime session on the CPU.

    ``metadata`` is the JSON written at export (classes, input size, resize policy, ...); ``run`` takes
    uint8 ``[N, H, W, 3]`` and returns ``{output name: array}``. The file is read once: ``sha256`` is the
    SHA-256 of the bytes the session was built from, and when one is expected (``sha256=``) other bytes are
    refused (:class:`GraphChanged`) before a session is made of them.
    """

    def __init__(self, path: str | Path, threads: int | None = None, providers: Sequence[str] = ("CPUExecutionProvider",),
                 sha256: str | None = None) -> None:
        require_onnx("running an ONNX model")
        import onnxruntime as ort

        self.path = Path(path)
        if not self.path.is_file():
            raise ConfigError(f"ONNX model {self.path} does not exist; write one with `transferkit export RUN --format onnx`")
        graph = self.path.read_bytes()
        self.sha256 = hashlib.sha256(graph).hexdigest()
        if sha256 is not None and sha256 != self.sha256:
            raise GraphChanged(f"{self.path} has changed since it was written (SHA-256 {self.sha256[:12]}..., "
                               f"recorded {sha256[:12]}...); export it again (`transferkit serve` and the ONNX engine "
                               "re-export a cached graph themselves)")
        try:
            self.session = ort.InferenceSession(graph, sess_options=session_options(threads), providers=list(providers))
        except Exception as exc:  # onnxruntime raises its own exception types for unreadable files
            raise TransferKitError(f"{self.path} is not a loadable ONNX model ({str(exc).splitlines()[0]})") from None
        del graph
        props = self.session.get_modelmeta().custom_metadata_map
        try:
            self.metadata: dict[str, Any] = json.loads(props[META_KEY])
        except (KeyError, json.JSONDecodeError):
            raise TransferKitError(f"{self.path} is an ONNX model without transferkit metadata; "
                                   "export it with `transferkit export RUN --format onnx`") from None
        self.outputs = [o.name for o in self.session.get_outputs()]
        self.input_size = int(self.metadata["input_size"])

    @property
    def classes(self) -> list[str]:
        return list(self.metadata.get("classes", []))

    def run(self, images: np.ndarray) -> dict[str, np.ndarray]:
        images = np.ascontiguousarray(images, dtype=np.uint8)
        if images.ndim != 4 or images.shape[1:] != (self.input_size, self.input_size, 3):
            raise ConfigError(f"{self.path} takes uint8 images [N, {self.input_size}, {self.input_size}, 3]; "
                              f"got shape {tuple(images.shape)}")
        return dict(zip(self.outputs, self.session.run(None, {INPUT: images})))

    def run_batches(self, batches: Iterable[np.ndarray]) -> Iterable[dict[str, np.ndarray]]:
        for batch in batches:
            yield self.run(batch)


def _hash_file(graph: Path) -> Path:
    return graph.with_name(graph.name + HASH_SUFFIX)


def record_graph(engine: OnnxModel) -> None:
    """Write the SHA-256 of the bytes ``engine`` was built from beside its graph (``<graph>.sha256``)."""
    write_text(_hash_file(engine.path), engine.sha256 + "\n")


def open_recorded_graph(path: Path, threads: int | None = None) -> OnnxModel | None:
    """A cached graph, if its bytes are the ones recorded when it was written (:func:`record_graph`).

    None (after a warning that says why) when the graph or its record is missing, the bytes differ, or the file
    does not load: the caller exports it again.
    """
    if not path.is_file():
        return None
    try:
        recorded = _hash_file(path).read_text(encoding="utf-8").strip()
    except OSError:
        logger.warning("the cached ONNX graph %s has no recorded SHA-256 (an older transferkit wrote it); "
                       "exporting it again", path)
        return None
    try:
        return OnnxModel(path, threads=threads, sha256=recorded)
    except GraphChanged:
        logger.warning("the cached ONNX graph %s does not match the SHA-256 recorded when it was written; "
                       "exporting it again", path)
    except TransferKitError as exc:
        logger.warning("the cached ONNX graph %s cannot be used (%s); exporting it again", path, exc)
    return None


def private_graph_dir() -> Path:
    """A folder for graphs that only this user can write: ``<tmp>/transferkit-onnx-<uid>``, created with mode 0700,
    or, when that name exists and is not a real folder of this user closed to others (a symlink, another owner,
    open permissions: someone may have planted it), a fresh :func:`tempfile.mkdtemp` folder removed at exit."""
    if hasattr(os, "getuid"):
        shared = Path(tempfile.gettempdir()) / f"transferkit-onnx-{os.getuid()}"
        try:
            os.mkdir(shared, 0o700)
        except FileExistsError:
            pass
        except OSError as exc:
            logger.debug("cannot create %s (%s)", shared, exc)
        try:
            info = os.lstat(shared)
            if stat.S_ISDIR(info.st_mode) and info.st_uid == os.getuid() and not info.st_mode & 0o077:
                return shared
            logger.warning("%s is not a private folder of this user (owner uid %d, mode %o, %s); using a fresh "
                           "temporary folder", shared, info.st_uid, stat.S_IMODE(info.st_mode),
                           "a symlink" if stat.S_ISLNK(info.st_mode) else "not a symlink")
        except OSError:
            pass
    fresh = Path(tempfile.mkdtemp(prefix="transferkit-onnx-"))
    atexit.register(shutil.rmtree, fresh, ignore_errors=True)
    return fresh
