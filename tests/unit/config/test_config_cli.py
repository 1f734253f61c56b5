"""Config parsing and the settings the CLI generates from it: config_from_dict, apply_overrides, --set,
the flags of `transferkit train`/`compare`, and the keyword check of transferkit.train."""

from __future__ import annotations

import dataclasses

import pytest
import typer
from typer.testing import CliRunner

from transferkit.cli import app
from transferkit.config import (
    FLAT_KEYS,
    FLAT_SETTINGS,
    RunCfg,
    apply_overrides,
    config_from_dict,
    flat_overrides,
    parse_overrides,
)
from transferkit.errors import ConfigError

# Every flat name (keyword of transferkit.train, flag of `transferkit train`) as it was when the list was
# hand-written: the generated one must keep each name with the same meaning.
FLAT_KEYS_BEFORE = {
    "backbone": "model.backbone", "weights": "model.weights", "head": "model.head", "head_fit": "model.head_fit",
    "input_size": "model.input_size", "dropout": "model.dropout", "mean": "model.mean", "std": "model.std",
    "strategy": "strategy.name", "unfreeze": "strategy.unfreeze", "warmup_epochs": "strategy.warmup_epochs",
    "unfreeze_every": "strategy.unfreeze_every", "layer_decay": "strategy.layer_decay",
    "group_lr_scales": "strategy.group_lr_scales", "backbone_lr_scale": "strategy.backbone_lr_scale",
    "bn": "strategy.bn", "l2sp": "strategy.l2sp", "lr": "optim.lr", "weight_decay": "optim.weight_decay",
    "label_smoothing": "optim.label_smoothing", "epochs": "engine.epochs", "batch_size": "engine.batch_size",
    "seed": "engine.seed", "patience": "engine.patience", "device": "engine.device", "cache": "engine.cache",
    "cache_dir": "engine.cache_dir", "cache_views": "engine.cache_views",
    "selection_fraction": "data.selection_fraction", "test_fraction": "data.test_fraction", "select": "engine.select",
    "split_seed": "data.split_seed", "augment": "data.augment", "workers": "data.workers", "out": "out",
}
# Fields deliberately without a flat name: set them in a config file or with --set section.key=value.
SET_ONLY = {"data.path", "data.validate", "model.pretrained", "model.head_hidden", "optim.lr_warmup_epochs",
            "optim.min_lr_ratio", "optim.grad_clip", "engine.monitor", "engine.amp", "engine.channels_last",
            "engine.compile", "engine.sync_bn", "engine.gpu_decode"}
TRAIN_FLAGS_BEFORE = {"--" + name.replace("_", "-") for name in FLAT_KEYS_BEFORE} | {
    "--no-cache", "--config", "--set", "--resume"}
COMPARE_FLAGS_BEFORE = {"--strategies", "--seeds", "--out", "--backbone", "--epochs", "--lr", "--batch-size",
                        "--input-size", "--warmup-epochs", "--unfreeze-every"}


def _config_fields() -> dict[str, dataclasses.Field]:
    sections = {f.name: f.default_factory for f in dataclasses.fields(RunCfg) if f.name != "out"}
    fields = {f"{s}.{f.name}": f for s, cls in sections.items() for f in dataclasses.fields(cls)}
    fields["out"] = next(f for f in dataclasses.fields(RunCfg) if f.name == "out")
    return fields


def _options(command: str) -> dict[str, object]:
    """{flag: click parameter} of one command, every spelling (--cache and --no-cache) as a key."""
    click_command = typer.main.get_command(app).commands[command]
    return {flag: p for p in click_command.params for flag in (*p.opts, *p.secondary_opts)}


# ---- config_from_dict -------------------------------------------------------------------------------------

def test_unknown_key_names_the_key_a_suggestion_and_the_known_keys():
    with pytest.raises(ConfigError) as err:
        config_from_dict({"engine": {"epoch": 3}})
    message = str(err.value)
    assert "engine.epoch" in message and "did you mean 'epochs'" in message
    assert all(f.name in message for f in dataclasses.fields(type(RunCfg().engine)))


def test_unknown_section_names_the_known_sections():
    with pytest.raises(ConfigError) as err:
        config_from_dict({"optimizer": {"lr": 0.1}})
    message = str(err.value)
    assert "'optimizer'" in message and "did you mean 'optim'" in message
    assert all(section in message for section in ("data", "model", "strategy", "optim", "engine", "out"))


@pytest.mark.parametrize(("dotted", "text", "expected"), [
    ("engine.epochs", "3", 3), ("engine.epochs", 3.0, 3), ("optim.lr", "0.01", 0.01), ("optim.lr", 1, 1.0),
    ("engine.cache", "no", False), ("engine.cache", "TRUE", True), ("engine.cache", 0, False),
    ("model.mean", "0.5, 0.4,0.3", (0.5, 0.4, 0.3)), ("model.std", [1, 2, 3], (1.0, 2.0, 3.0)),
    ("strategy.group_lr_scales", "0.1,1", (0.1, 1.0)), ("model.input_size", None, None),
    ("optim.grad_clip", None, None), ("model.backbone", "resnet18", "resnet18"), ("data.augment", "none", "none"),
])
def test_values_are_coerced_to_the_field_type(dotted, text, expected):
    section, _, key = dotted.partition(".")
    value = getattr(getattr(config_from_dict({section: {key: text}}), section), key)
    assert value == expected and type(value) is type(expected)


@pytest.mark.parametrize(("dotted", "text", "needle"), [
    ("engine.epochs", "three", "engine.epochs: cannot read 'three'"), ("engine.epochs", 2.5, "cannot read 2.5"),
    ("engine.cache", "maybe", "engine.cache"), ("optim.lr", "fast", "optim.lr"), ("model.mean", "a,b,c", "model.mean"),
    ("engine.epochs", None, "engine.epochs may not be empty"),
])
def test_unreadable_values_name_the_key(dotted, text, needle):
    section, _, key = dotted.partition(".")
    with pytest.raises(ConfigError) as err:
        config_from_dict({section: {key: text}})
    assert needle in str(err.value)


def test_out_and_empty_sections():
    cfg = config_from_dict({"out": "runs/x", "data": None})
    assert cfg.out == "runs/x" and cfg.data == RunCfg().data


# ---- apply_overrides and --set ----------------------------------------------------------------------------

def test_apply_overrides_merges_dotted_keys_without_touching_the_input():
    raw = {"engine": {"epochs": 5, "seed": 1}, "out": "a"}
    merged = apply_overrides(raw, {"engine.epochs": 7, "optim.lr": 0.1, "out": "b", "engine.seed": None})
    assert merged == {"engine": {"epochs": 7, "seed": 1}, "optim": {"lr": 0.1}, "out": "b"}
    assert raw == {"engine": {"epochs": 5, "seed": 1}, "out": "a"}


def test_apply_overrides_refuses_keys_without_a_section():
    with pytest.raises(ConfigError, match="section.key=value"):
        apply_overrides({}, {"epochs": 3})
    with pytest.raises(ConfigError, match="must be a mapping"):
        apply_overrides({"engine": 3}, {"engine.epochs": 3})


def test_parse_overrides_reads_section_key_value():
    assert parse_overrides(["optim.weight_decay=0.05", " engine.epochs = 3 ", "data.path=a=b", "out="]) == {
        "optim.weight_decay": "0.05", "engine.epochs": "3", "data.path": "a=b", "out": ""}
    for bad in ("engine.epochs", "=3"):
        with pytest.raises(ConfigError, match="--set .* must look like section.key=value"):
            parse_overrides([bad])


def test_set_values_go_through_the_same_coercion_as_config_files():
    cfg = config_from_dict(apply_overrides({"engine": {"epochs": 2}}, parse_overrides(
        ["engine.epochs=4", "optim.grad_clip=1.5", "engine.amp=false", "model.mean=0.1,0.2,0.3"])))
    assert (cfg.engine.epochs, cfg.optim.grad_clip, cfg.engine.amp, cfg.model.mean) == (4, 1.5, False, (0.1, 0.2, 0.3))


# ---- flag generation --------------------------------------------------------------------------------------

def test_every_config_field_has_help_and_a_flat_name_or_is_deliberately_set_only():
    fields = _config_fields()
    for dotted, f in fields.items():
        assert f.metadata.get("help", "").strip(), f"{dotted} has no help text"
        assert "flag" in f.metadata, f"{dotted}: declare it with _setting(default, help, flag=...)"
    with_flag = {s.key for s in FLAT_SETTINGS.values()}
    assert with_flag | SET_ONLY == set(fields) and not with_flag & SET_ONLY


def test_flat_names_are_unchanged():
    """Every name keeps its meaning; new settings only add names."""
    assert FLAT_KEYS_BEFORE.items() <= FLAT_KEYS.items(), sorted(FLAT_KEYS_BEFORE.items() - FLAT_KEYS.items())


def test_defaults_come_from_the_dataclasses():
    defaults = config_from_dict({})
    for setting in FLAT_SETTINGS.values():
        section, _, key = setting.key.rpartition(".")
        owner = getattr(defaults, section) if section else defaults
        assert getattr(owner, key) == setting.default, setting.name


def test_train_has_one_option_per_setting_defaulting_to_none_with_help():
    options = _options("train")
    assert TRAIN_FLAGS_BEFORE <= set(options), sorted(TRAIN_FLAGS_BEFORE - set(options))
    for setting in FLAT_SETTINGS.values():
        param = options["--" + setting.name.replace("_", "-")]
        assert param.name == setting.name and param.default is None, setting.name
        assert param.help and param.help.startswith(setting.help.rstrip(".")), setting.name
    assert options["--cache"] is options["--no-cache"]


def test_compare_keeps_its_options():
    assert COMPARE_FLAGS_BEFORE <= set(_options("compare"))


def test_train_passes_only_the_given_flags_to_the_api(monkeypatch, tmp_path):
    import transferkit.api as api

    calls = []
    monkeypatch.setattr(api, "train", lambda data, **kwargs: calls.append((data, kwargs)))
    result = CliRunner().invoke(app, ["train", str(tmp_path), "--epochs", "3", "--no-cache", "--mean", "0.5,0.5,0.5",
                                      "--backbone-lr-scale", "0.2", "--strategy", "lp-ft", "--out", "runs/x",
                                      "--set", "optim.grad_clip=1"])
    assert result.exit_code == 0, result.output
    (data, kwargs), = calls
    assert str(data) == str(tmp_path) and kwargs.pop("config") is None
    assert kwargs.pop("overrides") == {"optim.grad_clip": "1"}
    assert kwargs == {"epochs": 3, "cache": False, "mean": "0.5,0.5,0.5", "backbone_lr_scale": 0.2,
                      "strategy": "lp-ft", "out": "runs/x"}
    assert type(kwargs["epochs"]) is int and type(kwargs["backbone_lr_scale"]) is float


def test_cli_errors_are_one_line_with_exit_code_2(tmp_path):
    runner = CliRunner()
    bad_set = runner.invoke(app, ["train", str(tmp_path), "--set", "engine.epochs"])
    assert bad_set.exit_code == 2 and "must look like section.key=value" in bad_set.output
    typo = runner.invoke(app, ["train", str(tmp_path), "--set", "engine.epoch=3"])
    assert typo.exit_code == 2 and "did you mean 'epochs'" in typo.output
    assert runner.invoke(app, ["train", str(tmp_path), "--epochs", "three"]).exit_code == 2  # click's usage error


# ---- keyword arguments of the API -------------------------------------------------------------------------

def test_flat_overrides_maps_names_to_dotted_keys():
    assert flat_overrides({"epochs": 3, "strategy": "finetune", "out": "x"}) == {
        "engine.epochs": 3, "strategy.name": "finetune", "out": "x"}


def test_a_misspelt_keyword_fails_up_front_with_a_suggestion(tmp_path):
    import transferkit.api as api

    with pytest.raises(ConfigError) as err:
        api.train(tmp_path / "does-not-exist", epoch=3)  # the keyword is checked before the folder is read
    message = str(err.value)
    assert "'epoch'" in message and "did you mean 'epochs'" in message and "overrides=" in message
    with pytest.raises(ConfigError, match=r"overrides=\{'optim.grad_clip': \.\.\.\}"):
        api.build_config(grad_clip=1.0)  # a set-only field: the error says how to reach it
    assert api.build_config(tmp_path, epochs=3, mean=[0.5, 0.5, 0.5]).model.mean == (0.5, 0.5, 0.5)


# ---- the adaptation settings: generated the same way ------------------------------------------------------

def test_text_for_no_value_reads_as_none_where_the_field_allows_it():
    assert config_from_dict(apply_overrides({}, parse_overrides(["optim.grad_clip=null"]))).optim.grad_clip is None
    with pytest.raises(ConfigError, match="engine.epochs: cannot read 'none' as int"):
        config_from_dict({"engine": {"epochs": "none"}})


def test_adapt_options_come_from_the_adapt_dataclass_and_pass_only_given_values(monkeypatch, tmp_path):
    import transferkit.adapt as ta
    from transferkit.adapt.config import ADAPT_SETTINGS, AdaptCfg

    options = _options("adapt")
    fields = {f.name: f for f in dataclasses.fields(AdaptCfg)}
    for setting in ADAPT_SETTINGS.values():  # one option per adaptation setting, help from the field, default None
        param = options["--" + setting.name.replace("_", "-")]
        assert param.default is None and param.help.startswith(setting.help.rstrip(".")), setting.name
        assert setting.help == fields[setting.key.partition(".")[2]].metadata["help"]
    assert {"--adapt-epochs", "--lambda-max", "--coral-weight", "--no-warm-start", "--epochs", "--resume"} <= set(options)
    assert "(default 3)" in options["--epochs"].help  # adapt's own baseline budget, not train's 10

    calls = []
    monkeypatch.setattr(ta, "adapt", lambda source, target, **kwargs: calls.append(kwargs) or ta_result())
    ta_result = lambda: type("R", (), {"summary": {}})()  # noqa: E731
    result = CliRunner().invoke(app, ["adapt", "--source", str(tmp_path), "--target", str(tmp_path), "--method",
                                      "coral", "--coral-weight", "3", "--no-warm-start", "--epochs", "2",
                                      "--set", "adapt.lambda_max=0.5"])
    assert result.exit_code == 0, result.output
    (kwargs,) = calls
    assert kwargs["method"] == "coral" and kwargs["adapt_options"] == {"lambda_max": "0.5"}
    assert {k: kwargs[k] for k in ("coral_weight", "warm_start", "epochs")} == {"coral_weight": 3.0,
                                                                               "warm_start": False, "epochs": 2}
    assert "adapt_epochs" not in kwargs and "lr" not in kwargs  # options left out are not passed


def test_adapt_keywords_are_checked_up_front_with_a_suggestion(tmp_path):
    import transferkit.adapt as ta

    with pytest.raises(ConfigError, match="did you mean 'lambda_max'"):
        ta.adapt(tmp_path / "missing", tmp_path / "missing", lamda_max=0.3)
    with pytest.raises(ConfigError, match="did you mean 'coral_weight'"):
        ta.adapt(tmp_path / "missing", tmp_path / "missing", adapt_options={"coral_wieght": 3})


def test_adapt_without_folders_or_resume_is_one_line():
    result = CliRunner().invoke(app, ["adapt", "--method", "coral"])
    assert result.exit_code == 2 and "--source" in result.output and "--resume" in result.output


def test_adapt_resume_refuses_other_options_and_train_runs(tmp_path):
    result = CliRunner().invoke(app, ["adapt", "--resume", str(tmp_path), "--method", "coral", "--epochs", "2"])
    assert result.exit_code == 2 and "drop" in result.output and "--epochs" in result.output and "--method" in result.output
    (tmp_path / "config.yaml").write_text("engine: {epochs: 1}\n")
    result = CliRunner().invoke(app, ["adapt", "--resume", str(tmp_path)])
    assert result.exit_code == 2 and "train --resume" in result.output
