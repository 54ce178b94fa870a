"""recipes/transfer.py end to end (accelerate launch, offline, 2-4 steps on the shipped Fashion-MNIST tiny),
exact resume (DataLoader workers included), the training flags (gradient accumulation, every learning-rate
schedule, checkpoints kept, torch.compile), and a typed error for each bad input."""

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from _builders import load_script, record_site_layouts
from huggingface_hub import ModelCard
from safetensors.torch import load_file

import mp_hub
from mp_hub import MetaPerturb, zoo
from mp_hub.data import normalize
from mp_hub.errors import AttachError, CheckpointError, ConfigError, DataError, NotCachedError

ROOT = Path(__file__).resolve().parents[2]
RECIPE = ROOT / "recipes" / "transfer.py"
# Tiny everywhere: 32 train / 20 eval images, batch 8, 2 MC passes, the mean-mode calibration without its fit
# (the tests that fit say so).
SMALL = [
    "--max_train_samples", "32", "--max_eval_samples", "20", "--per_device_train_batch_size", "8",
    "--per_device_eval_batch_size", "20", "--eval_mc_samples", "2", "--periodic_eval_mc_samples", "2",
    "--mean_mode_mc_fit_steps", "0",
]  # fmt: skip
RESNET8 = ["--model_type", "cifar_resnet20", "--model_config_overrides", '{"depth": 8}']
TINY_VIT = [
    "--model_type", "vit", "--image_size", "32", "--model_config_overrides",
    '{"hidden_size": 16, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 32, "patch_size": 8}',
]  # fmt: skip


@pytest.fixture(scope="module")
def phi_dir(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    return MetaPerturb().save_pretrained(tmp_path_factory.mktemp("phi") / "phi")


@pytest.fixture(scope="module")
def recipe():
    return load_script(RECIPE, "transfer_recipe")


def launch(args: list[str]) -> subprocess.CompletedProcess:
    """`accelerate launch recipes/transfer.py ARGS` on the CPU, one process, offline."""
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--cpu", "--num_processes", "1"]
    cmd += ["--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", str(RECIPE), *args]
    proc = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


def check_report(out: Path, stdout: str, regularizer: str, mixed_precision: str = "no") -> dict:
    results = json.loads((out / "all_results.json").read_text())
    for key in ("eval_accuracy", "eval_nll", "eval_ece"):
        assert 0.0 <= results[key] < 10.0
    assert results["regularizer"] == regularizer and results["eval_samples"] == 20
    assert results["mixed_precision"] == mixed_precision
    assert "accuracy" in stdout and "ECE" in stdout
    for png in ("reliability_diagram.png", "training_curve.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    card = ModelCard.load(out / "README.md")
    metrics = {m.metric_type: m.metric_value for m in card.data.eval_results}
    assert set(metrics) == {"accuracy", "nll", "ece"}
    assert metrics["accuracy"] == pytest.approx(results["eval_accuracy"], abs=1e-6)
    assert "reliability_diagram.png" in card.text and "training_curve.png" in card.text
    assert "recipes/transfer.py" in card.text and regularizer in card.text
    return results


def test_recipe_metaperturb_resnet20(tmp_path, phi_dir):
    out = tmp_path / "out"
    proc = launch([*SMALL, "--perturb_model_id", str(phi_dir), "--max_train_steps", "2", "--eval_steps", "1",
                   "--mean_mode_mc_fit_steps", "3", "--output_dir", str(out)])  # fmt: skip
    results = check_report(out, proc.stdout, "metaperturb")
    assert results["eval_mc_samples"] == 2 and results["train_steps"] == 2
    assert str(phi_dir) in (out / "README.md").read_text()
    # after training: mean-mode calibration on every training image, and the one-pass result next to MC's
    assert results["mean_mode_calibration_images"] == results["train_samples"]
    assert 0.0 <= results["eval_mean_mode_accuracy"] <= 1.0 and results["eval_mean_mode_nll"] > 0
    model, handle = mp_hub.load_perturbed(out)
    assert handle.calibration is not None and not handle.calibration.stale_norms()
    assert results["mean_mode_mc_fit_steps"] == 3 and handle.calibration.mc_fit["steps"] == 3
    assert type(model).__name__ == "CifarResNetForImageClassification" and len(handle.sites) == 9
    saved_phi = MetaPerturb.from_pretrained(phi_dir)
    for a, b in zip(handle.phi_parameters(), saved_phi.parameters()):
        assert torch.equal(a, b)  # φ was frozen
    model.eval()
    handle.set_inference_mode("mean")
    assert torch.isfinite(model(pixel_values=torch.zeros(2, 3, 32, 32)).logits).all()


def test_recipe_adversarial_evaluation(tmp_path, phi_dir):
    """--eval_adversarial attacks the first --adv_max_samples evaluation images in MC mode and in mean mode; the
    accuracies land in all_results.json, the card and a plot."""
    out = tmp_path / "out"
    launch([*SMALL, "--perturb_model_id", str(phi_dir), "--max_train_steps", "2", "--output_dir", str(out),
            "--eval_adversarial", "linf:8/255,l2:0.5", "--adv_steps", "2", "--adv_eot_samples", "2",
            "--adv_max_samples", "10"])  # fmt: skip
    results = json.loads((out / "all_results.json").read_text())
    for prefix in ("eval_adv_", "eval_mean_mode_adv_"):
        attacked = {k: v for k, v in results.items() if k.startswith(prefix) and k.endswith("_accuracy")}
        assert set(attacked) == {f"{prefix}{name}_accuracy" for name in ("clean", "linf_8_255", "l2_0.5")}
        assert all(0.0 <= v <= 1.0 for v in attacked.values()), attacked
    assert (results["eval_adv_steps"], results["eval_adv_eot_samples"]) == (2, 2)
    assert (out / "adversarial_accuracy.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    card = (out / "README.md").read_text()
    assert "## Adversarial robustness" in card and "adversarial_accuracy.png" in card


@pytest.mark.parametrize("regularizer", ["dropblock", "none"])
def test_recipe_baselines_save_plain_models(tmp_path, regularizer):
    from transformers import AutoModelForImageClassification

    import mp_hub.models  # noqa: F401  (registers cifar_resnet with the Auto classes)

    out = tmp_path / "out"
    proc = launch([*SMALL, *RESNET8, "--regularizer", regularizer, "--max_train_steps", "2", "--output_dir", str(out)])
    check_report(out, proc.stdout, regularizer)
    assert not (out / "metaperturb.safetensors").exists()
    model = AutoModelForImageClassification.from_pretrained(out)
    assert not hasattr(model, "regularizer_sites")
    saved = load_file(str(out / "model.safetensors"))
    assert set(saved) == set(model.state_dict())


def test_recipe_tiny_vit(tmp_path, phi_dir):
    out = tmp_path / "out"
    proc = launch([*SMALL, *TINY_VIT, "--perturb_model_id", str(phi_dir), "--max_train_steps", "2",
                   "--inference_mode", "mean", "--output_dir", str(out)])  # fmt: skip
    results = check_report(out, proc.stdout, "metaperturb")
    assert results["eval_mc_samples"] == 1  # "mean": one deterministic pass
    assert results["mean_mode_calibration_images"] is None  # LayerNorm: nothing to calibrate
    model, handle = mp_hub.load_perturbed(out)
    assert type(model).__name__ == "ViTForImageClassification" and len(handle.sites) == 2
    assert handle.inference_mode == "mean"


def test_recipe_tiny_vit_mc_fit_calibrates_its_layer_norms(tmp_path, phi_dir, recipe):
    out = tmp_path / "out"
    args = [*SMALL, *TINY_VIT, "--perturb_model_id", str(phi_dir), "--max_train_steps", "2",
            "--inference_mode", "mean", "--mean_mode_mc_fit_steps", "3", "--output_dir", str(out)]  # fmt: skip
    assert recipe.main(args) == 0
    results = json.loads((out / "all_results.json").read_text())
    assert results["mean_mode_calibration_images"] == 32 and results["mean_mode_mc_fit_steps"] == 3
    _, handle = mp_hub.load_perturbed(out)
    assert handle.calibration.mc_fit["steps"] == 3
    assert handle.calibration.layer_norm_names == handle.calibration.names and len(handle.calibration.names) == 5


def _resume_base(phi_dir: Path) -> list[str]:
    return [*SMALL, *RESNET8, "--perturb_model_id", str(phi_dir), "--max_train_steps", "4", "--eval_steps", "1"]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, phi_dir, recipe) -> Path:
    """The 4-step run the resumed ones must equal (and the compiled one approach)."""
    full = tmp_path_factory.mktemp("full") / "out"
    assert recipe.main([*_resume_base(phi_dir), "--output_dir", str(full)]) == 0
    return full


def _same_run(full: Path, split: Path) -> None:
    for name in ("model.safetensors", "metaperturb.safetensors"):
        a, b = load_file(str(full / name)), load_file(str(split / name))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
    drop = {"train_runtime_s", "train_steps_per_second", "resumed_from_step"}
    ra, rb = (json.loads((d / "all_results.json").read_text()) for d in (full, split))
    assert ra["resumed_from_step"] is None and rb["resumed_from_step"] == 2
    assert {k: v for k, v in ra.items() if k not in drop} == {k: v for k, v in rb.items() if k not in drop}


def test_stopped_and_resumed_equals_uninterrupted(tmp_path, phi_dir, recipe, uninterrupted):
    base, split = _resume_base(phi_dir), tmp_path / "split"
    assert recipe.main([*base, "--output_dir", str(split), "--stop_after_steps", "2"]) == 0
    assert not (split / "all_results.json").exists()
    assert sorted(p.name for p in (split / "checkpoints").iterdir()) == ["step_2"]  # no temporary folder left
    assert recipe.main([*base, "--output_dir", str(split), "--resume_from_checkpoint", "latest"]) == 0
    _same_run(uninterrupted, split)
    # a checkpoint only resumes the run that wrote it
    step_2 = str(split / "checkpoints" / "step_2")
    argv = [*base, "--output_dir", str(split), "--resume_from_checkpoint", step_2, "--seed", "1"]
    args = recipe.parse_args(argv)
    with pytest.raises(CheckpointError, match="different run"):
        recipe.run(args)


def test_dataloader_workers_change_no_batch_and_resume_exactly(tmp_path, phi_dir, recipe, uninterrupted):
    base, split = [*_resume_base(phi_dir), "--dataloader_num_workers", "2"], tmp_path / "split"
    assert recipe.main([*base, "--output_dir", str(split), "--stop_after_steps", "2"]) == 0
    assert recipe.main([*base, "--output_dir", str(split), "--resume_from_checkpoint", "latest"]) == 0
    _same_run(uninterrupted, split)  # the same bits as the run decoding its batches in the main process


def test_torch_compile_trains_and_evaluates_as_the_uncompiled_model(tmp_path, phi_dir, recipe, uninterrupted):
    out = tmp_path / "out"
    argv = [*_resume_base(phi_dir), "--torch_compile", "--torch_compile_backend", "aot_eager"]
    assert recipe.main([*argv, "--output_dir", str(out)]) == 0
    ra, rb = (json.loads((d / "all_results.json").read_text()) for d in (uninterrupted, out))
    for key in ("train_loss", "eval_nll", "eval_accuracy", "eval_mean_mode_nll"):
        assert rb[key] == pytest.approx(ra[key], rel=1e-4, abs=1e-5), key
    a, b = load_file(str(uninterrupted / "model.safetensors")), load_file(str(out / "model.safetensors"))
    assert a.keys() == b.keys()  # saved as the plain model, not as the compiled wrapper
    assert all(torch.allclose(a[k].float(), b[k].float(), atol=1e-4) for k in a)


def test_channels_last_trains_as_the_nchw_model_resumes_exactly_and_saves_plain_weights(
    tmp_path, phi_dir, recipe, uninterrupted, monkeypatch
):
    """--channels_last: every site call gets channels-last features, the same run to float32 rounding (its
    convolutions round differently), a resumed run bit-identical to an uninterrupted one, the saved model loads."""
    layouts = record_site_layouts(monkeypatch)
    base = [*_resume_base(phi_dir), "--channels_last"]
    full, split = tmp_path / "full", tmp_path / "split"
    assert recipe.main([*base, "--output_dir", str(full)]) == 0
    assert all(layouts) and (layouts or not mp_hub.kernels.fused_available())  # the fused sites saw NHWC
    ra, rb = (json.loads((d / "all_results.json").read_text()) for d in (uninterrupted, full))
    for key in ("train_loss", "eval_nll", "eval_accuracy", "eval_mean_mode_nll"):
        assert rb[key] == pytest.approx(ra[key], rel=1e-4, abs=1e-5), key
    assert recipe.main([*base, "--output_dir", str(split), "--stop_after_steps", "2"]) == 0
    assert recipe.main([*base, "--output_dir", str(split), "--resume_from_checkpoint", "latest"]) == 0
    _same_run(full, split)
    model, handle = mp_hub.load_perturbed(full)
    assert model.config.num_labels == 10 and handle.site_list()


def test_bf16_mixed_precision_trains_in_bf16_and_saves_float32(tmp_path, phi_dir, uninterrupted):
    """--mixed_precision bf16 on CPU: accelerate's autocast changes the run (it is not ignored), which stays close
    to the float32 one; the saved model, φ and the sites' statistics stay float32."""
    out = tmp_path / "out"
    proc = launch([*_resume_base(phi_dir), "--mixed_precision", "bf16", "--output_dir", str(out)])
    results = check_report(out, proc.stdout, "metaperturb", mixed_precision="bf16")
    float32 = json.loads((uninterrupted / "all_results.json").read_text())
    assert results["train_loss"] != float32["train_loss"]
    assert results["train_loss"] == pytest.approx(float32["train_loss"], rel=0.05)
    for name in ("model.safetensors", "metaperturb.safetensors"):
        floats = {t.dtype for t in load_file(str(out / name)).values() if t.is_floating_point()}
        assert floats == {torch.float32}, name


def test_gradient_accumulation_averages_the_batches_of_one_optimizer_step(tmp_path, recipe, monkeypatch):
    import mp_hub.data.batches

    # Without augmentation (its draws are per batch), 2 batches of 4 are the images of 1 batch of 8.
    monkeypatch.setattr(mp_hub.data.batches, "augment_batch", lambda images, gen, **kw: normalize(images))
    base = [*SMALL, *TINY_VIT, "--regularizer", "none", "--max_train_steps", "3", "--eval_steps", "2"]
    one, two = tmp_path / "one", tmp_path / "two"
    recipe.run(recipe.parse_args([*base, "--output_dir", str(one)]))
    accumulated = ["--per_device_train_batch_size", "4", "--gradient_accumulation_steps", "2"]
    results = recipe.run(recipe.parse_args([*base, *accumulated, "--output_dir", str(two)]))
    assert results["train_steps"] == 3  # optimizer steps; each took 2 batches
    a, b = load_file(str(one / "model.safetensors")), load_file(str(two / "model.safetensors"))
    assert all(torch.allclose(a[k], b[k], atol=1e-5) for k in a)
    ra = json.loads((one / "all_results.json").read_text())
    assert results["train_loss"] == pytest.approx(ra["train_loss"], rel=1e-5)
    assert results["eval_nll"] == pytest.approx(ra["eval_nll"], rel=1e-4)


@pytest.fixture(scope="module")
def plateau_run(tmp_path_factory, phi_dir, recipe) -> Path:
    """3 steps, evaluated after steps 1 and 2, checkpointed after each, keeping 2; reduce_lr_on_plateau (patience
    0, no evaluation but the first counting as better) halves the learning rate after the second evaluation."""
    out = tmp_path_factory.mktemp("plateau") / "out"
    kwargs = '{"patience": 0, "factor": 0.5, "threshold": 1e9, "threshold_mode": "abs"}'
    argv = [*SMALL, *RESNET8, "--perturb_model_id", str(phi_dir), "--max_train_steps", "3", "--eval_steps", "1",
            "--lr_scheduler_type", "reduce_lr_on_plateau", "--lr_scheduler_kwargs", kwargs,
            "--checkpointing_steps", "1", "--checkpoints_total_limit", "2", "--output_dir", str(out)]  # fmt: skip
    assert recipe.main(argv) == 0
    return out


def test_a_metric_schedule_is_stepped_with_the_evaluation_loss(plateau_run):
    state = json.loads((plateau_run / "checkpoints" / "step_3" / "trainer_state.json").read_text())
    assert [row["lr"] for row in state["history"]] == pytest.approx([1e-3, 1e-3, 5e-4])
    assert [e["step"] for e in state["evals"]] == [1, 2]


@pytest.mark.parametrize(("steps", "expected"), [(2000, [667, 1334]), (1200, [400, 800]), (4, [2]), (1, [])])
def test_default_periodic_evaluations_are_two_and_none_just_before_the_final_one(recipe, steps, expected):
    every = recipe.periodic_eval_interval(None, steps)
    assert [step for step in range(1, steps) if step % every == 0] == expected
    assert recipe.periodic_eval_interval(5, steps) == 5


def test_checkpoints_total_limit_keeps_the_newest(plateau_run):
    assert sorted(p.name for p in (plateau_run / "checkpoints").iterdir()) == ["step_2", "step_3"]


def _run(recipe, tmp_path, *extra):
    return recipe.run(recipe.parse_args([*SMALL, "--output_dir", str(tmp_path / "out"), *extra]))


def test_error_phi_not_cached(tmp_path, recipe):
    with pytest.raises(NotCachedError, match="mp-hub zoo"):
        _run(recipe, tmp_path, "--perturb_model_id", "nobody/no-such-phi")


def test_a_cpu_run_on_fewer_threads_than_cores_says_how_to_use_them(tmp_path, recipe, monkeypatch, caplog):
    import mp_hub.training.threads

    monkeypatch.setattr(mp_hub.training.threads, "usable_cores", lambda: 64)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with caplog.at_level(logging.INFO, logger="transfer"), pytest.raises(NotCachedError):
            _run(recipe, tmp_path, "--perturb_model_id", "nobody/no-such-phi")  # the hint comes before any work
    finally:
        torch.set_num_threads(threads)
    assert "1 CPU thread(s) while 64 cores" in caplog.text and "--num_cpu_threads_per_process 64" in caplog.text


@pytest.mark.parametrize("malloc_defaults", [False, True])
def test_a_cpu_run_keeps_freed_memory_unless_told_not_to(tmp_path, recipe, monkeypatch, caplog, malloc_defaults):
    calls = []
    monkeypatch.setattr(recipe, "keep_freed_memory", lambda: calls.append(1) or True)
    flags = ["--malloc_defaults"] if malloc_defaults else []
    with caplog.at_level(logging.INFO, logger="transfer"), pytest.raises(NotCachedError):
        _run(recipe, tmp_path, "--perturb_model_id", "nobody/no-such-phi", *flags)  # set before any work
    assert calls == ([] if malloc_defaults else [1])
    assert ("keeps freed memory" in caplog.text) is not malloc_defaults


def test_error_default_phi_missing_says_how_to_get_one(tmp_path, recipe, monkeypatch):
    monkeypatch.setattr(zoo, "BUNDLED_DIR", tmp_path / "no-bundled-folder")  # an installation without it
    with pytest.raises(CheckpointError, match="not bundled") as err:
        _run(recipe, tmp_path)
    assert "--perturb_model_id" in str(err.value) and "meta_train" in str(err.value)


def test_error_missing_column(tmp_path, recipe, phi_dir):
    with pytest.raises(DataError, match="no label column 'fine_label'"):
        _run(recipe, tmp_path, "--perturb_model_id", str(phi_dir), "--label_column_name", "fine_label")


def test_error_samples_per_class_too_large(tmp_path, recipe, phi_dir):
    with pytest.raises(DataError, match="larger than class"):
        recipe.run(recipe.parse_args(["--samples_per_class", "101", "--output_dir", str(tmp_path)]))


def test_error_no_resolvable_sites(tmp_path, recipe, phi_dir):
    overrides = '{"hidden_sizes": [8, 8, 8, 8], "depths": [1, 1, 1, 1]}'
    with pytest.raises(AttachError, match="no resolver"):
        _run(recipe, tmp_path, "--perturb_model_id", str(phi_dir), "--model_type", "poolformer",
             "--model_config_overrides", overrides)  # fmt: skip


def test_main_prints_typed_error(tmp_path, recipe, capsys):
    assert recipe.main([*SMALL, "--perturb_model_id", "nobody/no-such-phi", "--output_dir", str(tmp_path)]) == 2
    assert "error (NotCachedError)" in capsys.readouterr().err


@pytest.fixture(scope="module")
def local_hub_resnet(tmp_path_factory) -> Path:
    """A tiny transformers ResNet (5 labels) with an image processor, saved like a Hub repo."""
    from transformers import ConvNextImageProcessor, ResNetConfig, ResNetForImageClassification

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("hub") / "tiny-resnet"
    config = ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], layer_type="basic", num_labels=5)
    ResNetForImageClassification(config).save_pretrained(folder)
    processor = ConvNextImageProcessor(size={"shortest_edge": 32}, image_mean=[0.4, 0.4, 0.4], image_std=[0.3] * 3)
    processor.save_pretrained(folder)
    return folder


def test_fine_tune_pretrained_model_and_push(tmp_path, recipe, phi_dir, local_hub_resnet, monkeypatch):
    from huggingface_hub import RepoUrl

    import mp_hub.hub

    calls = []

    class FakeApi:
        def __init__(self, token=None):
            calls.append(("init", token))

        def create_repo(self, repo_id, **kwargs):
            calls.append(("create_repo", repo_id))
            return RepoUrl(f"https://huggingface.co/{repo_id}")

        def upload_folder(self, **kwargs):
            calls.append(("upload_folder", kwargs))
            assert (Path(kwargs["folder_path"]) / "README.md").is_file()  # everything is written before the push

    monkeypatch.setattr(mp_hub.hub, "HfApi", FakeApi)
    out = tmp_path / "out"
    base = [*SMALL, "--perturb_model_id", str(phi_dir), "--model_name_or_path", str(local_hub_resnet)]
    with pytest.raises(ConfigError, match="ignore_mismatched_sizes"):  # 5 pretrained labels, 10 classes here
        recipe.run(recipe.parse_args([*base, "--output_dir", str(out)]))
    argv = [*base, "--ignore_mismatched_sizes", "--max_train_steps", "2", "--output_dir", str(out)]
    assert recipe.main([*argv, "--push_to_hub", "--hub_model_id", "me/tiny", "--hub_token", "hf_secret"]) == 0
    assert [c[0] for c in calls] == ["init", "create_repo", "upload_folder"] and calls[1][1] == "me/tiny"
    upload = calls[2][1]
    assert upload["repo_id"] == "me/tiny" and Path(upload["folder_path"]) == out
    assert "checkpoints/*" in upload["ignore_patterns"]
    card = (out / "README.md").read_text()
    assert "hf_secret" not in card and "<HUB_TOKEN>" in card  # the token never reaches the card
    assert "base_model" not in ModelCard.load(out / "README.md").data.to_dict()  # a local folder is no Hub id
    assert (out / "preprocessor_config.json").is_file()
    model, handle = mp_hub.load_perturbed(out)
    assert type(model).__name__ == "ResNetForImageClassification" and model.config.num_labels == 10
    assert len(handle.sites) == 2 and handle.spatial_norm == 32  # H0 from the image processor's size


def test_push_with_a_bare_repo_name_goes_to_the_namespace_the_hub_resolves(tmp_path, recipe, phi_dir, monkeypatch):
    """Without --hub_model_id the repo is the output folder's name, a bare name: the Hub creates it in the token's
    namespace, and the upload and the card's usage must name that full id, not the bare name (no such repo)."""
    import huggingface_hub
    from huggingface_hub import RepoUrl

    import mp_hub.hub

    calls = []

    class FakeApi:  # the Hub's answer to a bare name: the repo in the token's namespace
        def __init__(self, token=None):
            pass

        def create_repo(self, repo_id, *, private=None, **kwargs):
            calls.append(("create_repo", repo_id, private))
            return RepoUrl(f"https://huggingface.co/{repo_id if '/' in repo_id else f'me/{repo_id}'}")

        def upload_folder(self, *, repo_id, folder_path, **kwargs):
            calls.append(("upload_folder", repo_id, kwargs.get("ignore_patterns")))

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    monkeypatch.setattr(mp_hub.hub, "HfApi", FakeApi)
    out = tmp_path / "my-run"
    argv = [*SMALL, *RESNET8, "--perturb_model_id", str(phi_dir), "--max_train_steps", "1", "--output_dir", str(out)]
    assert recipe.main([*argv, "--push_to_hub", "--hub_private_repo"]) == 0
    assert calls == [("create_repo", "my-run", True), ("upload_folder", "me/my-run", ["checkpoints/*", ".*"])]
    assert 'load_perturbed("me/my-run")' in (out / "README.md").read_text()


@pytest.mark.slow
def test_two_processes_stopped_and_resumed_equals_uninterrupted(tmp_path, phi_dir):
    """torchrun with 2 CPU processes (gloo): sharded batches, gathered evaluation, per-rank RNG files, exact resume."""
    env = {**os.environ, "ACCELERATE_USE_CPU": "1"}
    base = [*SMALL, *RESNET8, "--perturb_model_id", str(phi_dir), "--max_train_steps", "4", "--eval_steps", "1"]

    def torchrun(*args):
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", str(RECIPE), *base, *args]
        proc = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-4000:]

    full, split = tmp_path / "full", tmp_path / "split"
    torchrun("--output_dir", str(full))
    torchrun("--output_dir", str(split), "--stop_after_steps", "2")
    assert {p.name for p in (split / "checkpoints" / "step_2").glob("random_states_*")} == {
        "random_states_0.pkl",
        "random_states_1.pkl",
    }
    torchrun("--output_dir", str(split), "--resume_from_checkpoint", "latest")
    for name in ("model.safetensors", "metaperturb.safetensors"):
        a, b = load_file(str(full / name)), load_file(str(split / name))
        assert all(torch.equal(a[k], b[k]) for k in a), name
    assert json.loads((full / "all_results.json").read_text())["eval_samples"] == 20  # no duplicates gathered


@pytest.mark.slow
def test_the_no_flag_run_trains_with_the_bundled_phi_offline(tmp_path):
    """The README's main job, exactly as a new user runs it (a few minutes on 2 CPU cores)."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", HF_EVALUATE_OFFLINE="1")
    done = subprocess.run(
        [sys.executable, "-m", "accelerate.commands.launch", str(RECIPE)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "accuracy" in done.stdout and "ECE" in done.stdout
    results = json.loads((tmp_path / "outputs" / "transfer" / "all_results.json").read_text())
    assert results["perturb_model_id"] == zoo.DEFAULT_PHI and results["eval_mc_samples"] == 20
    assert results["eval_accuracy"] > 0.75 and results["train_steps"] == 2000  # 10 classes; chance is 0.1
