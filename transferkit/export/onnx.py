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

import contextlib
import io
import json
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
from transferkit.fileio import atomic_write
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
    "preprocess_image",
    "uint8_pipeline",
    "session_options",
]

INPUT = "images"
OPSET = 18
META_KEY = "transferkit"  # one metadata_props entry holding the JSON metadata


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


class OnnxModel:
    """An exported transferkit graph in an ONNX Runtime session on the CPU.

    ``metadata`` is the JSON written at export (classes, input size, resize policy, ...); ``run`` takes
    uint8 ``[N, H, W, 3]`` and returns ``{output name: array}``.
    """

    def __init__(self, path: str | Path, threads: int | None = None, providers: Sequence[str] = ("CPUExecutionProvider",)) -> None:
        require_onnx("running an ONNX model")
        import onnxruntime as ort

        self.path = Path(path)
        if not self.path.is_file():
            raise ConfigError(f"ONNX model {self.path} does not exist; write one with `transferkit export RUN --format onnx`")
        try:
            self.session = ort.InferenceSession(str(self.path), sess_options=session_options(threads), providers=list(providers))
        except Exception as exc:  # onnxruntime raises its own exception types for unreadable files
            raise TransferKitError(f"{self.path} is not a loadable ONNX model ({str(exc).splitlines()[0]})") from None
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
