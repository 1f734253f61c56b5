"""int8 export: ONNX Runtime static quantisation, accepted or refused on the selection split, measured on test.

The split that decides is the one that chooses everything else in a run: the selection split. Quantisation is
accepted when it loses at most ``max_drop`` of the selection split's accuracy (counted in images); the test
split decides nothing, but the int8 model's own test figures are measured and written into its metadata,
labelled as the int8 model's (the fp32 run's figures are kept beside them under ``fp32_``).

A run without a selection split (``--select last``) cannot be checked honestly: the test split must not
decide, and a carve of the training images would understate the loss (the model was fitted on them, so their
margins are wider than those of unseen images). Such an export is refused unless ``--force``; forced, its test
figures are still measured and recorded.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from transferkit.errors import TransferKitError
from transferkit.export.onnx import META_KEY
from transferkit.metrics.classification import detailed_metrics

__all__ = ["PRECISION", "quantise_static", "decide", "int8_metadata", "write_metadata"]

PRECISION = "int8 (ONNX Runtime static QDQ)"


def quantise_static(fp32: Path, out: Path, calibration: np.ndarray, batch_size: int = 32) -> None:
    """QDQ static quantisation of ``fp32`` into ``out`` (per-channel int8 weights, uint8 activations), calibrated on
    ``calibration`` (uint8 NHWC images), after ONNX Runtime's pre-processing (shape inference, graph clean-up)."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter([calibration[i:i + batch_size] for i in range(0, len(calibration), batch_size)])

        def get_next(self) -> dict[str, np.ndarray] | None:
            batch = next(self.batches, None)
            return None if batch is None else {"images": batch}

    prepared = out.with_name("prepared.onnx")
    quant_pre_process(str(fp32), str(prepared), skip_symbolic_shape=True)
    quantize_static(str(prepared), str(out), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)


def decide(check: Mapping[str, Any] | None, max_drop: float, force: bool) -> dict[str, Any]:
    """Accept or refuse the int8 model from ``check`` (``_parity`` of int8 against fp32 on the selection split;
    None: the run has none). Raises TransferKitError when refused and not ``force``; returns the record."""
    if check is None:
        if not force:
            raise TransferKitError(
                "int8: the run has no selection split (it was trained with --select last), so the accuracy that "
                "quantising costs cannot be measured on images that may choose (the test split decides nothing, and "
                "training images would understate the loss); nothing was written. Export fp32 (drop --int8), or "
                "pass --force to write it unchecked (its test figures are still measured and recorded)")
        return {"split": None, "accepted": False, "forced": True,
                "reason": "no selection split (--select last): written unchecked with --force"}
    n = int(check["n"])
    drop = float(check["accuracy_torch"] - check["accuracy_exported"])
    lost = int(round(drop * n))  # in images, not floats: 0.93 - 0.92 > 0.01 is True in binary floating point
    refused = lost > max_drop * n + 1e-9
    record = {"split": "selection", "n": n, "accuracy_fp32": float(check["accuracy_torch"]),
              "accuracy_int8": float(check["accuracy_exported"]), "accuracy_drop": drop, "images_lost": lost,
              "max_drop": max_drop, "top1_agreement_with_fp32": float(check["top1_agreement"]),
              "accepted": not refused, "forced": bool(refused and force)}
    if refused and not force:
        raise TransferKitError(
            f"int8 quantisation costs {drop * 100:.1f} accuracy points on the selection split ({lost} of {n} images; "
            f"more than {max_drop * 100:g}); nothing was written. Export fp32 (drop --int8), or pass --force to "
            "write it anyway")
    return record


def _softmax(logits: np.ndarray, temperature: float) -> np.ndarray:
    z = np.asarray(logits, dtype=np.float64) / temperature
    z -= z.max(axis=1, keepdims=True)
    p = np.exp(z)
    return p / p.sum(axis=1, keepdims=True)


def int8_metadata(meta: Mapping[str, Any], test_logits: np.ndarray, test_labels: np.ndarray, classes: Sequence[str],
                  temperature: float, decision: Mapping[str, Any]) -> dict[str, Any]:
    """The int8 file's metadata: the fp32 export's, with the test figures replaced by the int8 model's own
    (measured here on the run's test split, at the run's temperature) and the fp32 run's kept as ``fp32_*``."""
    details = detailed_metrics(np.asarray(test_labels), _softmax(test_logits, temperature), list(classes))
    return {**meta, "precision": PRECISION,
            "test_metrics": details["metrics"], "test_ci95": details["ci95"], "test_n": int(len(test_labels)),
            "test_metrics_of": "this int8 model (ONNX Runtime), measured at export on the run's test split",
            "fp32_test_metrics": meta.get("test_metrics", {}), "fp32_test_ci95": meta.get("test_ci95", {}),
            "fp32_test_metrics_of": "the run's fp32 model (summary.json)", "int8_decision": dict(decision)}


def write_metadata(path: Path, metadata: Mapping[str, Any]) -> None:
    """Replace the model's transferkit metadata entry (the format :class:`~transferkit.export.onnx.OnnxModel` reads)."""
    import onnx

    model = onnx.load(str(path))
    del model.metadata_props[:]
    entry = model.metadata_props.add()
    entry.key, entry.value = META_KEY, json.dumps(dict(metadata), sort_keys=True)
    onnx.save(model, str(path))
