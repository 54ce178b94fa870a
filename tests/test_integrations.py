"""MetaPerturbCallback inside a real transformers Trainer: κ annealing, evaluation mode (mean mode, calibrated
on training images before every evaluation and after training; uncalibrated mean mode warned about), φ left out
and frozen."""

import logging

import pytest
import torch
from _builders import TARGETS, LayerNormNet
from transformers import Trainer, TrainerCallback, TrainingArguments

import mp_hub
from mp_hub import MetaPerturb
from mp_hub.errors import AttachError, ConfigError
from mp_hub.integrations import MetaPerturbCallback
from mp_hub.integrations.trainer import first_training_batches
from mp_hub.models import model_from_type
from mp_hub.site import PerturbSite


class TinyImages(torch.utils.data.Dataset):
    def __init__(self, n: int = 16, size: int = 8, classes: int = 3):
        gen = torch.Generator().manual_seed(0)
        self.x = torch.randn(n, 3, size, size, generator=gen)
        self.y = torch.randint(0, classes, (n,), generator=gen)

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return {"pixel_values": self.x[i], "labels": self.y[i]}


class Recorder(TrainerCallback):
    """Registered after MetaPerturbCallback: sees κ and the mode it set for each step / prediction."""

    def __init__(self, model, handle=None):
        self.model, self.kappas, self.train_modes, self.eval_modes = model, [], [], []
        self.handle, self.calibrated_in_steps, self.calibrated_in_eval = handle, [], []

    def _site(self):
        return next(m for m in self.model.modules() if isinstance(m, PerturbSite))

    def _calibrated(self):
        calibration = self.handle.calibration if self.handle is not None else None
        return calibration is not None and not calibration.stale_norms() and calibration.num_images

    def on_step_begin(self, args, state, control, **kwargs):
        self.kappas.append(float(self._site().noise_coeff))
        self.train_modes.append(self._site().inference_mode)
        self.calibrated_in_steps.append(self._calibrated())

    def on_prediction_step(self, args, state, control, **kwargs):
        self.eval_modes.append(self._site().inference_mode)
        self.calibrated_in_eval.append(self._calibrated())


def _tiny_model():
    torch.manual_seed(0)
    return model_from_type("cifar_resnet", 3, 8, depth=8, hidden_sizes=[4, 4, 4])


def test_callback_anneals_kappa_and_sets_eval_mode_in_trainer(tmp_path):
    model = _tiny_model()
    handle = mp_hub.attach(model, MetaPerturb())
    phi_before = [p.detach().clone() for p in handle.phi_parameters()]
    theta_before = [p.detach().clone() for p in handle.model_parameters()]
    recorder = Recorder(model, handle)
    args = TrainingArguments(
        output_dir=str(tmp_path),
        max_steps=5,
        per_device_train_batch_size=4,
        per_device_eval_batch_size=8,
        learning_rate=1e-2,
        eval_strategy="steps",
        eval_steps=3,
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        logging_steps=100,
        disable_tqdm=True,
        dataloader_num_workers=0,
    )
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=TinyImages(),
        eval_dataset=TinyImages(8),
        callbacks=[MetaPerturbCallback(handle, anneal_fraction=0.4), recorder],
    )
    trainer.train()

    # ramp = 0.4 × 5 = 2 steps: κ = global_step / 2, capped at 1
    assert recorder.kappas == pytest.approx([0.0, 0.5, 1.0, 1.0, 1.0])
    assert recorder.train_modes == ["mc"] * 5
    # the evaluation at step 3: mean mode, calibrated just before on the 16 training images (all there are)
    assert recorder.eval_modes and set(recorder.eval_modes) == {"mean"} and set(recorder.calibrated_in_eval) == {16}
    assert not any(recorder.calibrated_in_steps)  # removed after each evaluation during training
    # after training the sites stay in the evaluation mode with the full φ, calibrated on the final weights
    assert {s.inference_mode for s in handle.site_modules().values()} == {"mean"}
    assert handle.noise_coeff == 1.0 and recorder._calibrated() == 16
    trainer.evaluate()
    assert set(recorder.eval_modes) == {"mean"} and set(recorder.calibrated_in_eval) == {16}

    # φ is frozen: not in the Trainer's optimizer, and unchanged; θ did train
    optimized = {id(p) for group in trainer.optimizer.param_groups for p in group["params"]}
    assert not optimized & {id(p) for p in handle.phi_parameters()}
    assert all(torch.equal(a, b) for a, b in zip(phi_before, handle.phi_parameters()))
    assert any(not torch.equal(a, b) for a, b in zip(theta_before, handle.model_parameters()))


def test_callback_accepts_a_model_and_mc_eval(tmp_path):
    model = _tiny_model()
    mp_hub.attach(model, MetaPerturb())
    callback = MetaPerturbCallback(model, anneal_fraction=0.0, eval_inference_mode="mc")
    callback.on_init_end(None, None, None)
    sites = [m for m in model.modules() if isinstance(m, PerturbSite)]
    assert {s.inference_mode for s in sites} == {"mc"}

    class State:
        global_step, max_steps = 0, 10

    callback.on_step_begin(None, State(), None)
    assert {float(s.noise_coeff) for s in sites} == {1.0}  # no annealing with fraction 0


class Steps:
    global_step, max_steps = 10, 10


def _mean_mode_warnings(caplog, event, args, **kwargs) -> list[str]:
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="mp_hub.integrations.trainer"):
        event(args, Steps(), None, **kwargs)
    return [r.getMessage() for r in caplog.records if "uncalibrated mean mode" in r.getMessage()]


def test_uncalibrated_mean_mode_is_opt_in_and_warned_about(caplog):
    model = _tiny_model()
    handle = mp_hub.attach(model, MetaPerturb())
    default = MetaPerturbCallback(handle)
    assert (default.eval_inference_mode, default.calibration_images) == ("mean", 2048)
    evaluating, not_evaluating = TrainingArguments("x", eval_strategy="steps"), TrainingArguments("x")
    assert not _mean_mode_warnings(caplog, default.on_train_begin, evaluating)  # calibrated before evaluations
    uncalibrated = MetaPerturbCallback(handle, calibration_images=0)
    assert _mean_mode_warnings(caplog, uncalibrated.on_train_begin, evaluating)
    assert not _mean_mode_warnings(caplog, uncalibrated.on_train_begin, not_evaluating)
    assert _mean_mode_warnings(caplog, uncalibrated.on_train_end, not_evaluating)
    handle.calibrate_mean_mode([torch.randn(8, 3, 8, 8)])  # the user's own calibration, after training
    assert not _mean_mode_warnings(caplog, uncalibrated.on_train_end, not_evaluating)
    with torch.no_grad():
        model.train()(torch.randn(8, 3, 8, 8))  # the BatchNorms move on: that calibration is stale
    assert _mean_mode_warnings(caplog, uncalibrated.on_train_end, not_evaluating)
    assert not _mean_mode_warnings(
        caplog, MetaPerturbCallback(handle, eval_inference_mode="mc").on_train_end, evaluating
    )


def test_a_model_without_batchnorm_runs_mean_mode_as_it_is(caplog):
    model = LayerNormNet()
    handle = mp_hub.attach(model, MetaPerturb(), **TARGETS)
    callback = MetaPerturbCallback(handle)
    assert not _mean_mode_warnings(caplog, callback.on_train_end, TrainingArguments("x"), train_dataloader=None)
    assert handle.calibration is None and {s.inference_mode for s in handle.site_list()} == {"mean"}


def test_first_training_batches_are_the_first_images_in_dataset_order():
    images = TinyImages()
    shuffled = torch.utils.data.DataLoader(images, batch_size=4, shuffle=True)
    batches = list(first_training_batches(shuffled, 6, batch_size=4))
    assert [len(b["labels"]) for b in batches] == [4, 2]
    assert torch.equal(torch.cat([b["pixel_values"] for b in batches]), images.x[:6])


def test_callback_errors():
    with pytest.raises(AttachError, match="no perturbation sites"):
        MetaPerturbCallback(_tiny_model())
    model = _tiny_model()
    handle = mp_hub.attach(model, MetaPerturb())
    with pytest.raises(ConfigError, match="eval_inference_mode"):
        MetaPerturbCallback(handle, eval_inference_mode="sometimes")
    with pytest.raises(ConfigError, match="anneal_fraction"):
        MetaPerturbCallback(handle, anneal_fraction=1.5)
    for bad in ("0.4", None, True, float("nan")):  # a string or None was a bare TypeError; True passed as 1.0
        with pytest.raises(ConfigError, match=r"anneal_fraction must be a number in \[0, 1\], got"):
            MetaPerturbCallback(handle, anneal_fraction=bad)
    with pytest.raises(AttachError, match="expected an mp_hub.attach handle"):
        MetaPerturbCallback(object())
    for bad in (1, -2, True, 2.5):
        with pytest.raises(ConfigError, match="calibration_images must be 0"):
            MetaPerturbCallback(handle, calibration_images=bad)
    holder = torch.nn.Module()
    holder.site = PerturbSite(MetaPerturb(), 4, spatial_norm=8)  # sites without an mp_hub.attach handle
    with pytest.raises(AttachError, match="calibrating mean mode needs the handle"):
        MetaPerturbCallback(holder)
    assert MetaPerturbCallback(holder, calibration_images=0)
