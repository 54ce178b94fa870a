"""Pieces of the transfer recipe: schedules, MC evaluation, the regularizer choice and its placement, the
arguments / YAML config, the command line and the model card."""

import importlib.util
from pathlib import Path

import pytest
import torch
from huggingface_hub import ModelCard

import mp_hub
from mp_hub import MetaPerturb
from mp_hub.cards import render_transfer_card
from mp_hub.cli_args import launch_command
from mp_hub.errors import AttachError, ConfigError
from mp_hub.evaluation import compute_metrics, is_stochastic, predict_proba
from mp_hub.metrics import expected_calibration_error
from mp_hub.models import model_from_type
from mp_hub.regularizers import DropBlock2d, apply_regularizer, attach_regularizer, find_sites, set_drop_prob
from mp_hub.schedules import linear_noise_coeff, step_lr_lambda

ROOT = Path(__file__).resolve().parents[1]


def _recipe():
    spec = importlib.util.spec_from_file_location("transfer_recipe_parts", ROOT / "recipes" / "transfer.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


parse_args = _recipe().parse_args


def _resnet8(classes: int = 3, size: int = 8):
    torch.manual_seed(0)
    return model_from_type("cifar_resnet", classes, size, depth=8, hidden_sizes=[4, 4, 4])


def _tiny_vit():
    torch.manual_seed(0)
    return model_from_type(
        "vit", 3, 16, hidden_size=8, num_hidden_layers=2, num_attention_heads=2, intermediate_size=16, patch_size=4
    )


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


# --- the regularizer choice ----------------------------------------------------------------------------------------


def test_apply_regularizer_by_name_and_its_schedule():
    assert apply_regularizer(_resnet8(), "none").set_step(3, 10) == {}
    model = _resnet8()
    reg = apply_regularizer(model, "dropblock", dropblock_prob=0.2, dropblock_size=3)
    assert reg.info["sites"] == len(find_sites(model).sites)
    assert reg.set_step(5, 10) == {"drop_prob": pytest.approx(0.1)}
    reg = apply_regularizer(_resnet8(), "metaperturb", phi=MetaPerturb(), phi_id="x", noise_anneal_fraction=0.5)
    assert reg.set_step(1, 10) == {"noise_coeff": pytest.approx(0.2)} and reg.phi_id == "x"
    reg.finish()
    assert reg.handle.noise_coeff == 1.0
    phi_ids = {id(p) for p in reg.handle.phi_parameters()}
    assert not any(id(p) in phi_ids for p in reg.trainable_parameters(reg.handle.model))
    for kind, kwargs, match in [
        ("metaperturb", {}, "needs a φ"),
        ("mixup", {}, "not one of"),
        ("dropblock", {"dropblock_prob": 1.0}, "dropblock_prob"),
    ]:
        with pytest.raises(ConfigError, match=match):
            apply_regularizer(_resnet8(), kind, **kwargs)


# --- the command line and the card ---------------------------------------------------------------------------------


def test_launch_command_names_the_launcher_and_masks_the_token():
    argv = ["--seed", "1", "--hub_token", "hf_x", "--hub_token=hf_y"]
    assert launch_command("recipes/x.py", argv, environ={}) == (
        "python recipes/x.py --seed 1 --hub_token '<HUB_TOKEN>' '--hub_token=<HUB_TOKEN>'"
    )
    assert launch_command("r.py", [], 2, environ={}) == "accelerate launch --num_processes 2 r.py"
    assert launch_command("r.py", [], environ={"ACCELERATE_MIXED_PRECISION": "no"}) == "accelerate launch r.py"
    torchrun = {"TORCHELASTIC_RUN_ID": "1", "LOCAL_WORLD_SIZE": "2"}
    assert launch_command("r.py", [], 2, environ=torchrun) == "torchrun --nproc_per_node 2 r.py"


def test_render_transfer_card_takes_typed_arguments(tmp_path):
    text = render_transfer_card(
        model_name="cifar_resnet20", model_class="CifarResNetForImageClassification", base_model=None,
        dataset_id="/x/fashion_mnist_tiny", hub_dataset=None, eval_split="test", num_train=10, num_eval=5,
        num_labels=2, regularizer="metaperturb", metrics={"accuracy": 0.5, "nll": 0.7, "ece": 0.1}, steps=3,
        batch_size=4, learning_rate=1e-3, lr_scheduler="step", image_size=32, repo_id="me/m",
        command="python recipes/transfer.py", arguments={"seed": 0}, phi_id="phi-x", num_sites=9,
    )  # fmt: skip
    (tmp_path / "README.md").write_text(text)
    card = ModelCard.load(tmp_path / "README.md")
    assert card.data.datasets == ["zalando-datasets/fashion_mnist"] and "metaperturb" in card.data.tags
    assert {m.metric_type: m.metric_value for m in card.data.eval_results}["accuracy"] == 0.5
    assert "`phi-x` (frozen) at 9 sites" in text and 'load_perturbed("me/m")' in text
