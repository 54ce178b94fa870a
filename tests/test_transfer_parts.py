"""Pieces of the transfer recipe: the shipped dataset, schedules, MC evaluation, regularizer placement,
arguments / YAML config, step-indexed batches."""

import hashlib
from pathlib import Path

import pytest
import torch
from datasets import ClassLabel, Image, load_dataset

import mp_hub
from mp_hub import MetaPerturb
from mp_hub.data import ImageTensors
from mp_hub.datasets import FASHION_MNIST_TINY
from mp_hub.errors import AttachError, ConfigError
from mp_hub.evaluation import compute_metrics, is_stochastic, predict_proba
from mp_hub.metrics import expected_calibration_error
from mp_hub.models import model_from_type
from mp_hub.regularizers import DropBlock2d, attach_regularizer, find_sites, set_drop_prob
from mp_hub.schedules import linear_noise_coeff, step_lr_lambda
from mp_hub.transfer.arguments import parse_args
from mp_hub.transfer.data import TrainBatches, TransferData
from mp_hub.zoo import DEFAULT_PHI


def _resnet8(classes: int = 3, size: int = 8):
    torch.manual_seed(0)
    return model_from_type("cifar_resnet", classes, size, depth=8, hidden_sizes=[4, 4, 4])


def _tiny_vit():
    torch.manual_seed(0)
    return model_from_type(
        "vit", 3, 16, hidden_size=8, num_hidden_layers=2, num_attention_heads=2, intermediate_size=16, patch_size=4
    )


# --- the shipped dataset -------------------------------------------------------------------------------------------


def test_fashion_mnist_tiny_loads_offline_balanced():
    ds = load_dataset(str(FASHION_MNIST_TINY))
    assert {k: len(v) for k, v in ds.items()} == {"train": 1000, "test": 1000}
    assert isinstance(ds["train"].features["image"], Image)
    assert isinstance(ds["train"].features["label"], ClassLabel) and ds["train"].features["label"].num_classes == 10
    for split in ds.values():
        assert torch.bincount(torch.as_tensor(split["label"])).tolist() == [100] * 10
    size = sum(p.stat().st_size for p in (FASHION_MNIST_TINY / "data").glob("*.parquet"))
    assert size < 3_000_000
    card = (FASHION_MNIST_TINY / "README.md").read_text()
    assert "license: mit" in card and "Zalando" in card and "zalandoresearch/fashion-mnist" in card
    assert DEFAULT_PHI == "metaperturb-glyphs10-resnet20"


def test_fashion_mnist_tiny_rebuilds_identically(tmp_path, data_dir):
    from mp_hub.datasets.build_fashion_mnist_tiny import build

    build(data_dir / "fashion_mnist", tmp_path)
    for rel in ("README.md", "data/train-00000-of-00001.parquet", "data/test-00000-of-00001.parquet"):
        digest = [hashlib.sha256(Path(root, rel).read_bytes()).hexdigest() for root in (tmp_path, FASHION_MNIST_TINY)]
        assert digest[0] == digest[1], rel


# --- schedules -----------------------------------------------------------------------------------------------------


def test_noise_coeff_and_step_lr_schedules():
    assert [linear_noise_coeff(t, 10, 0.4) for t in range(6)] == [0.0, 0.25, 0.5, 0.75, 1.0, 1.0]
    assert linear_noise_coeff(0, 10, 0.0) == 1.0
    with pytest.raises(ConfigError):
        linear_noise_coeff(0, 10, 1.5)
    factor = step_lr_lambda(100)
    assert [factor(t) for t in (0, 39, 40, 69, 70, 89, 90, 99)] == pytest.approx(
        [1, 1, 0.3, 0.3, 0.09, 0.09, 0.027, 0.027]
    )


# --- MC evaluation -------------------------------------------------------------------------------------------------


def _batches(n: int = 12, size: int = 8):
    gen = torch.Generator().manual_seed(1)
    x, y = torch.randn(n, 3, size, size, generator=gen), torch.randint(0, 3, (n,), generator=gen)
    return [(x[:8], y[:8]), {"pixel_values": x[8:], "labels": y[8:]}], x, y


def test_predict_proba_modes_and_reproducibility():
    model = _resnet8()
    handle = mp_hub.attach(model, MetaPerturb())
    model.train()
    batches, x, y = _batches()
    probs, labels = predict_proba(model, batches, 4, inference_mode="mean")
    assert model.training and handle.inference_mode == "mc"  # training flag and site modes are restored
    model.eval()
    handle.set_inference_mode("mean")
    with torch.no_grad():
        direct = torch.softmax(model(pixel_values=x).logits, -1)
    assert torch.allclose(probs, direct, atol=1e-6) and torch.equal(labels, y)
    handle.set_inference_mode("mc")
    rng = torch.get_rng_state()
    a, _ = predict_proba(model, batches, 3, seed=7)
    assert torch.equal(rng, torch.get_rng_state())  # a seeded evaluation leaves the caller's RNG alone
    b, _ = predict_proba(model, batches, 3, seed=7)
    c, _ = predict_proba(model, batches, 1, seed=7)
    assert torch.equal(a, b) and not torch.allclose(a, c)
    assert torch.allclose(a.sum(-1), torch.ones(12))


def test_predict_proba_deterministic_model_makes_one_pass_and_gathers():
    model = _resnet8()
    calls = []
    model.register_forward_hook(lambda *args: calls.append(1))
    assert not is_stochastic(model)
    batches, _, _ = _batches()
    gathered = []
    probs, _ = predict_proba(model, batches, 50, gather=lambda t: gathered.append(t.shape) or t)
    assert len(calls) == 2 and len(gathered) == 4 and probs.shape == (12, 3)
    with pytest.raises(ConfigError):
        predict_proba(model, batches, 0)


def test_compute_metrics_matches_direct():
    probs = torch.softmax(torch.randn(50, 4, generator=torch.Generator().manual_seed(0)), -1)
    labels = torch.arange(50) % 4
    metrics = compute_metrics(probs, labels)
    assert metrics["accuracy"] == pytest.approx(float((probs.argmax(-1) == labels).double().mean()))
    assert metrics["nll"] == pytest.approx(float(-probs[torch.arange(50), labels].double().log().mean()))
    assert metrics["ece"] == pytest.approx(expected_calibration_error(probs, labels, 15))


# --- DropBlock at the sites ----------------------------------------------------------------------------------------


def test_find_sites_are_attach_sites():
    model = _resnet8()
    names = [s.name for s in find_sites(model).sites]
    handle = mp_hub.attach(model, MetaPerturb())
    assert names == [r.name for r in handle.sites]


@pytest.mark.parametrize("build, size", [(_resnet8, 8), (_tiny_vit, 16)])
def test_attach_regularizer_dropblock(build, size):
    model = build()
    keys = set(model.state_dict())
    x = torch.randn(4, 3, size, size)
    model.eval()
    with torch.no_grad():
        before = model(pixel_values=x).logits
    placed = attach_regularizer(model, lambda spec: DropBlock2d(0.0, block_size=7))
    assert len(placed) == len(find_sites(model).sites) and set(model.state_dict()) == keys
    assert set_drop_prob(model, 0.5) == len(placed)
    with torch.no_grad():
        assert torch.equal(model(pixel_values=x).logits, before)  # DropBlock is the identity in eval mode
        model.train()
        torch.manual_seed(0)
        dropped = model(pixel_values=x).logits
        model.eval()
    with pytest.raises(AttachError, match="already placed"):
        attach_regularizer(model, lambda spec: DropBlock2d(0.1))
    placed.remove()
    model.train()
    with torch.no_grad():
        torch.manual_seed(0)
        plain = model(pixel_values=x).logits
    assert not torch.equal(dropped, plain)  # it did drop blocks in training mode
    assert not hasattr(model, "regularizer_sites")


def test_attach_regularizer_needs_sites():
    model = model_from_type("poolformer", 3, 16, hidden_sizes=[8, 8, 8, 8], depths=[1, 1, 1, 1])
    with pytest.raises(AttachError, match="no resolver"):
        attach_regularizer(model, lambda spec: DropBlock2d(0.1))


# --- arguments -----------------------------------------------------------------------------------------------------


def test_yaml_config_gives_defaults_and_cli_overrides(tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text("learning_rate: 0.01\nmax_train_steps: 7\nregularizer: dropblock\nno_flip: true\n")
    args = parse_args(["--config", str(config), "--max_train_steps", "9"])
    assert (args.learning_rate, args.max_train_steps, args.regularizer, args.no_flip) == (0.01, 9, "dropblock", True)
    assert args.model_type == "cifar_resnet20" and args.lr_scheduler_type == "step"
    # by default mean mode is calibrated and fitted to MC (within 0.3 points of MC-100 on the zoo benchmark)
    assert (args.mean_mode_calibration_images, args.mean_mode_mc_fit_steps) == (2048, 200)
    config.write_text("model_config_overrides:\n  depth: 8\n")
    assert parse_args(["--config", str(config)]).model_config_overrides == {"depth": 8}
    config.write_text("learning_rat: 0.01\n")
    with pytest.raises(ConfigError, match="unknown keys"):
        parse_args(["--config", str(config)])


@pytest.mark.parametrize(
    "argv, match",
    [
        (["--model_type", "vit", "--model_name_or_path", "google/vit-base-patch16-224"], "not both"),
        (["--model_config_overrides", "{depth: 8}"], "not valid JSON"),
        (["--checkpointing_steps", "often"], "checkpointing_steps"),
        (["--noise_anneal_fraction", "2"], "noise_anneal_fraction"),
        (["--eval_mc_samples", "0"], "eval_mc_samples"),
        (["--mean_mode_mc_fit_steps", "-1"], "mean_mode_mc_fit_steps"),
    ],
)
def test_bad_arguments(argv, match):
    with pytest.raises(ConfigError, match=match):
        parse_args(argv)


# --- batches -------------------------------------------------------------------------------------------------------


def test_train_batches_are_a_function_of_the_step():
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 255, (20, 3, 8, 8), dtype=torch.uint8, generator=gen)
    data = TransferData(ImageTensors(images, torch.arange(20)), ImageTensors(images, torch.arange(20)),
                        [str(i) for i in range(20)], "test", "x", 8)  # fmt: skip
    one = TrainBatches(data, 4, seed=0, rank=0, world_size=2)
    other = TrainBatches(data, 4, seed=0, rank=1, world_size=2)
    assert one.steps_per_epoch == 2
    x5, y5 = one(5)
    one(0)  # visiting another epoch first changes nothing
    assert all(torch.equal(a, b) for a, b in zip(one(5), (x5, y5)))
    seen = torch.cat([b(s)[1] for s in (0, 1) for b in (one, other)])
    assert sorted(seen.tolist()) == sorted(set(seen.tolist())) and len(seen) == 16  # no image twice in an epoch
    assert not torch.equal(one(0)[1], one(2)[1])  # each epoch reshuffles
