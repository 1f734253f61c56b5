"""Grad-CAM heat maps for any registry backbone, via the `grad-cam` package (pytorch-grad-cam).

The target layer is the backbone spec's ``gradcam_layer`` (the last convolution, found from the
timm model when the spec is built), addressed inside :class:`TransferModel` as ``backbone.<layer>``.
The model is put in eval mode first, so frozen BatchNorm statistics are used exactly as in inference.
"""

from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch
from torch import nn

from transferkit.data.decode import load_rgb
from transferkit.data.transforms import eval_transform, resize_size
from transferkit.errors import ConfigError, DataError
from transferkit.models.backbones import BackboneSpec

__all__ = ["Explanation", "target_layer", "gradcam_maps", "explain_images", "explain_run", "write_explanations", "overlay",
           "to_display"]

BATCH = 16
log = logging.getLogger(__name__)


@dataclass
class Explanation:
    """One image: the centre crop the model sees, its heat map, overlay and prediction."""

    path: str
    image: np.ndarray | None = None  # uint8 HxWx3 (the crop, de-normalised)
    cam: np.ndarray | None = None  # float HxW in [0, 1]
    overlay: np.ndarray | None = None  # uint8 HxWx3
    probs: np.ndarray | None = None
    target: int = -1  # class the map explains
    error: str | None = None


def target_layer(model: nn.Module, spec: BackboneSpec) -> nn.Module:
    """The module Grad-CAM hooks: ``backbone.<spec.gradcam_layer>`` of a TransferModel."""
    if spec.gradcam_layer:
        try:
            return model.get_submodule(f"backbone.{spec.gradcam_layer}")
        except AttributeError:
            pass
    raise ConfigError(
        f"backbone {spec.name!r} names Grad-CAM layer {spec.gradcam_layer!r}, which is not a module of the model; "
        "set BackboneSpec.gradcam_layer to the name of its last convolution (see model.named_modules())"
    )


@contextlib.contextmanager
def _explainable(model: nn.Module, layer: nn.Module) -> Iterator[None]:
    """Eval mode and gradients at ``layer`` for the duration; everything restored afterwards.

    A frozen backbone has requires_grad=False, so the layer's output would carry no gradient and
    Grad-CAM would have nothing to weight. Gradients on the target layer's own weights are enough, and
    only those: the backward pass then stops at the layer instead of running through the whole backbone.
    """
    training = model.training
    flags = [(p, p.requires_grad) for p in model.parameters()]
    own = {id(p) for p in layer.parameters()}
    try:
        for p, _ in flags:
            p.requires_grad_(id(p) in own)
        model.eval()
        with torch.enable_grad():
            yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
        model.zero_grad(set_to_none=True)
        model.train(training)


class _Predicted:
    """Grad-CAM target "whatever class the model predicts" (the score of the top logit)."""

    def __call__(self, output: torch.Tensor) -> torch.Tensor:
        return output.max(dim=-1).values


def gradcam_maps(
    model: nn.Module, spec: BackboneSpec, images: torch.Tensor, targets: Sequence[int | None] | None = None,
    temperature: float = 1.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Heat maps (N, H, W) in [0, 1] and class probabilities (N, C) for normalised ``images``.

    The probabilities are softmax(logits / ``temperature``): the run's calibrated answer, as ``predict`` gives it.

    ``targets[i]`` is the class to explain for image i; None (or no ``targets``) explains the predicted
    class. One forward pass serves both the probabilities and the map.
    """
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    layer = target_layer(model, spec)
    wanted = list(targets) if targets is not None else [None] * len(images)
    no_params = not any(True for _ in layer.parameters())
    maps, probs = [], []
    with _explainable(model, layer):
        cam = GradCAM(model=model, target_layers=[layer])
        # a parameter-free layer (an activation) only carries a gradient if the input does
        images = images.detach().requires_grad_(no_params)
        try:  # not `with cam:` - its __exit__ swallows IndexError
            for i in range(0, len(images), BATCH):
                chosen = [_Predicted() if t is None else ClassifierOutputTarget(int(t)) for t in wanted[i : i + BATCH]]
                maps.append(cam(input_tensor=images[i : i + BATCH], targets=chosen))
                probs.append((cam.outputs.detach().float() / temperature).softmax(dim=1).cpu().numpy())
        finally:
            cam.activations_and_grads.release()
    if not maps:
        return np.zeros((0,) + tuple(images.shape[-2:]), np.float32), np.zeros((0, 0), np.float32)
    return np.concatenate(maps).astype(np.float32), np.concatenate(probs)


def to_display(tensor: torch.Tensor, spec: BackboneSpec) -> np.ndarray:
    """Undo the spec's normalisation: a (3, H, W) model input back to a uint8 HxWx3 picture."""
    mean = torch.tensor(spec.mean).view(3, 1, 1)
    std = torch.tensor(spec.std).view(3, 1, 1)
    pixels = (tensor.detach().cpu().float() * std + mean).clamp(0, 1)
    return (pixels.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)


def overlay(image: np.ndarray, cam: np.ndarray, image_weight: float = 0.55) -> np.ndarray:
    """The heat map (jet colours, red = most important) blended over the picture."""
    from pytorch_grad_cam.utils.image import show_cam_on_image

    return show_cam_on_image(image.astype(np.float32) / 255.0, cam, use_rgb=True, image_weight=image_weight)


def explain_images(
    model: nn.Module, spec: BackboneSpec, paths: Sequence[str | os.PathLike], targets: Sequence[int | None] | None = None,
    temperature: float = 1.0,
) -> list[Explanation]:
    """Grad-CAM for image files. ``targets[i]`` None (default) explains the predicted class.

    An unreadable file gets an Explanation with ``error`` set; the others are still explained.
    """
    transform = eval_transform(spec)
    items = [Explanation(str(p)) for p in paths]
    tensors, good = [], []
    for i, item in enumerate(items):
        try:
            tensors.append(transform(load_rgb(item.path, draft_size=resize_size(spec))))
            good.append(i)
        except DataError as exc:
            item.error = str(exc)
    if not good:
        return items
    device = next(model.parameters()).device
    wanted = [targets[i] if targets is not None else None for i in good]
    maps, probs = gradcam_maps(model, spec, torch.stack(tensors).to(device), wanted, temperature)
    chosen = [int(probs[j].argmax()) if t is None else int(t) for j, t in enumerate(wanted)]
    for j, i in enumerate(good):
        picture = to_display(tensors[j], spec)
        items[i].image, items[i].cam, items[i].probs, items[i].target = picture, maps[j], probs[j], chosen[j]
        items[i].overlay = overlay(picture, maps[j])
    return items


def write_explanations(items: Sequence[Explanation], classes: Sequence[str], out_dir: str | Path) -> list[Path]:
    """One PNG per explained image: the crop, the overlay, and what the model predicted."""
    from transferkit.report.style import figure

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    used: set[str] = set()
    for item in items:
        if item.error or item.image is None:
            continue
        stem = Path(item.path).stem
        name = stem if stem not in used else f"{stem}-{len(used)}"
        used.add(name)
        pred = int(item.probs.argmax())
        with figure(ncols=2, width=3.4, height=3.6) as (fig, axes):
            axes[0, 0].imshow(item.image)
            axes[0, 0].set_title("input (centre crop)")
            axes[0, 1].imshow(item.overlay)
            axes[0, 1].set_title(f"Grad-CAM: {classes[item.target]}")
            for ax in axes[0]:
                ax.axis("off")
            fig.suptitle(f"{Path(item.path).name}\npredicted {classes[pred]} ({item.probs[pred]:.0%})", fontsize=10)
            target = out / f"{name}_gradcam.png"
            fig.savefig(target, bbox_inches="tight", facecolor="white")
        written.append(target)
    return written


def explain_run(run: Any, images: Sequence[str | os.PathLike], out_dir: str | Path, target: str | None = None) -> list[Path]:
    """Load a run (folder or LoadedRun), explain ``images`` (files or folders), write one PNG per image."""
    from transferkit.data.scan import list_image_files  # the same file/folder expansion as `predict`
    from transferkit.export.runfiles import LoadedRun, load_run

    loaded = run if isinstance(run, LoadedRun) else load_run(run)
    if target is not None and target not in loaded.classes:
        raise ConfigError(f"--target {target!r} is not a class of the model; use one of {', '.join(loaded.classes)}")
    files = list_image_files(images)
    if not files:
        raise DataError(f"no image files found in {', '.join(map(str, images))}; pass image files or folders of images")
    wanted = None if target is None else [loaded.classes.index(target)] * len(files)
    items = explain_images(loaded.model, loaded.spec, files, wanted, loaded.temperature)
    for item in items:
        if item.error:
            log.warning("skipped %s: %s", item.path, item.error)
    if all(item.error for item in items):
        raise DataError(f"none of the {len(items)} image(s) could be read; first error: {items[0].error}")
    return write_explanations(items, loaded.classes, out_dir)
