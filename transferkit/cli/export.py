"""``transferkit export RUN --format onnx|torchscript --out FILE [--int8]``: a file that runs without transferkit.

The ONNX graph takes uint8 RGB images [N, H, W, 3] and holds the preprocessing; its metadata names the
classes, input size and resize policy. The parity check against PyTorch on the run's test split is run
every time; its result is printed and written beside the file (``<name>.parity.json``). ``--int8`` is accepted
or refused on the run's selection split; its test accuracy is measured and recorded, and decides nothing.
"""

from __future__ import annotations

from pathlib import Path

import typer

from transferkit.cli.common import guarded

__all__ = ["register"]


def export(
    run: Path = typer.Argument(..., help="A run folder (the --out of `transferkit train`)."),
    out: Path = typer.Option(..., "--out", help="The file to write, e.g. model.onnx or model.pt."),
    format: str = typer.Option("onnx", "--format", help="onnx | torchscript"),
    int8: bool = typer.Option(False, "--int8", help="ONNX Runtime static int8 quantisation, calibrated on training "
                                                    "images; refused if it loses more than 1 point of the selection "
                                                    "split's accuracy, or if the run has none (--select last). Its test "
                                                    "accuracy is measured and recorded, and decides nothing."),
    force: bool = typer.Option(False, "--force", help="Write the int8 model even if it loses more than 1 point "
                                                      "(or could not be checked)."),
    calibration_images: int = typer.Option(256, help="Training images to calibrate --int8 on."),
) -> None:
    """Export a trained run to ONNX or TorchScript, with preprocessing inside and a parity check."""

    def go() -> dict:
        from transferkit.export.deploy import export_run

        return export_run(run, format, out, int8=int8, force=force, calibration_images=calibration_images,
                          say=lambda line: typer.echo(line, err=True))

    record = guarded(go)
    parity = record["parity"]
    typer.echo(f"{record['format']} -> {record['file']} ({record['bytes'] / 1e6:.1f} MB); parity on {parity['n']} test "
               f"images: max |logit diff| {parity['max_abs_logit_diff']:.2e}, top-1 agreement "
               f"{parity['top1_agreement']:.3f}")
    if "int8" in record:
        q, d = record["int8"], record["int8"]["decision"]
        checked = (f"selection split {d['accuracy_int8']:.3f} vs fp32 {d['accuracy_fp32']:.3f} (n={d['n']}, decided)"
                   if d["split"] else "not checked (no selection split, --force)")
        typer.echo(f"int8: {checked}; test accuracy {q['accuracy_int8']:.3f} vs fp32 {q['accuracy_fp32']:.3f} "
                   f"(n={q['n']}, reported); {q['speed_ratio']:.2f}x the fp32 speed")


def register(app: typer.Typer) -> None:
    app.command()(export)
