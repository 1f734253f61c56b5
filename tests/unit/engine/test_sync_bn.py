"""SyncBatchNorm conversion keeps the backbone's function: same features before and after (issue 12)."""

from __future__ import annotations

import pytest
import torch
import yaml

from transferkit.config import config_from_dict, config_to_dict
from transferkit.engine import distributed as ddp
from transferkit.errors import ConfigError
from transferkit.models.backbones import resolve_spec
from transferkit.models.transfer import build_model


def test_sync_bn_conversion_keeps_features_and_parameters() -> None:
    # timm's BatchNormAct2d fuses BN with its activation (ReLU6 in Lite0); a conversion that knows only
    # plain BatchNorm drops the activation and changes every feature
    torch.manual_seed(0)
    model = build_model(resolve_spec("efficientnet_lite0").with_input_size(32), 3).eval()
    images = torch.randn(4, 3, 32, 32)
    params_before = {name: p for name, p in model.named_parameters()}
    with torch.no_grad():
        before = model.features(images)
    converted = ddp.convert_sync_batchnorm(model).eval()  # no process group needed to convert or to run in eval
    with torch.no_grad():
        after = converted.features(images)
    assert any(isinstance(m, torch.nn.SyncBatchNorm) for m in converted.modules())
    assert not any(type(m).__name__ == "BatchNormAct2d" for m in converted.modules())
    assert torch.equal(before, after), f"features changed by up to {float((before - after).abs().max())}"
    # the optimizer is built from these parameters afterwards: the conversion must keep them, not copy them
    assert {name: p for name, p in converted.named_parameters()}.keys() == params_before.keys()
    assert all(p is params_before[name] for name, p in converted.named_parameters())


def test_sync_bn_setting_resolves_per_device_and_plan() -> None:
    one, two = ddp.DistInfo(), ddp.DistInfo(rank=0, world_size=2)
    cuda, cpu = torch.device("cuda", 0), torch.device("cpu")
    assert ddp.use_sync_bn("auto", two, cuda, batchnorm_trains=True)
    assert ddp.use_sync_bn("true", two, cuda, batchnorm_trains=True)
    assert not ddp.use_sync_bn("false", two, cuda, batchnorm_trains=True)
    assert not ddp.use_sync_bn("auto", two, cuda, batchnorm_trains=False)  # pinned BatchNorm: nothing to sync
    assert not ddp.use_sync_bn("auto", one, cuda, batchnorm_trains=True)  # one process: its batch is global
    assert not ddp.use_sync_bn("auto", two, cpu, batchnorm_trains=True)  # torch's SyncBatchNorm trains on GPUs only
    with pytest.raises(ConfigError, match="engine.sync_bn=true needs CUDA"):
        ddp.use_sync_bn("true", two, cpu, batchnorm_trains=True)


@pytest.mark.parametrize("value, expected", [(True, "true"), (False, "false"), ("yes", "true"), ("auto", "auto"),
                                             ("TRUE", "true"), (None, None)])
def test_sync_bn_reads_old_bool_configs(value, expected) -> None:
    raw = {"data": {"path": "x"}, "engine": {} if value is None else {"sync_bn": value}}
    cfg = config_from_dict(raw)
    assert cfg.engine.sync_bn == (expected or "auto")
    assert config_from_dict(yaml.safe_load(yaml.safe_dump(config_to_dict(cfg)))).engine.sync_bn == cfg.engine.sync_bn


def test_sync_bn_refuses_other_words() -> None:
    with pytest.raises(ConfigError, match="engine.sync_bn 'sometimes' must be auto, true or false"):
        config_from_dict({"engine": {"sync_bn": "sometimes"}})
