"""MetaPerturbCallback inside a real transformers Trainer: κ annealing, evaluation mode, φ left out and frozen."""

import pytest
import torch
from transformers import Trainer, TrainerCallback, TrainingArguments

import mp_hub
from mp_hub import MetaPerturb
from mp_hub.errors import AttachError, ConfigError
from mp_hub.integrations import MetaPerturbCallback
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

    def __init__(self, model):
        self.model, self.kappas, self.train_modes, self.eval_modes = model, [], [], []

    def _site(self):
        return next(m for m in self.model.modules() if isinstance(m, PerturbSite))

    def on_step_begin(self, args, state, control, **kwargs):
        self.kappas.append(float(self._site().noise_coeff))
        self.train_modes.append(self._site().inference_mode)

    def on_prediction_step(self, args, state, control, **kwargs):
        self.eval_modes.append(self._site().inference_mode)


def _tiny_model():
    torch.manual_seed(0)
    return model_from_type("cifar_resnet", 3, 8, depth=8, hidden_sizes=[4, 4, 4])


def test_callback_anneals_kappa_and_sets_eval_mode_in_trainer(tmp_path):
    model = _tiny_model()
    handle = mp_hub.attach(model, MetaPerturb())
    phi_before = [p.detach().clone() for p in handle.phi_parameters()]
    theta_before = [p.detach().clone() for p in handle.model_parameters()]
    recorder = Recorder(model)
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
        callbacks=[MetaPerturbCallback(handle, anneal_fraction=0.4, eval_inference_mode="mean"), recorder],
    )
    trainer.train()

    # ramp = 0.4 × 5 = 2 steps: κ = global_step / 2, capped at 1
    assert recorder.kappas == pytest.approx([0.0, 0.5, 1.0, 1.0, 1.0])
    assert recorder.train_modes == ["mc"] * 5
    assert recorder.eval_modes and set(recorder.eval_modes) == {"mean"}
    # after training the sites stay in the evaluation mode with the full φ
    assert {s.inference_mode for s in handle.site_modules().values()} == {"mean"}
    assert handle.noise_coeff == 1.0
    trainer.evaluate()
    assert set(recorder.eval_modes) == {"mean"}

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


def test_callback_errors():
    with pytest.raises(AttachError, match="no perturbation sites"):
        MetaPerturbCallback(_tiny_model())
    model = _tiny_model()
    handle = mp_hub.attach(model, MetaPerturb())
    with pytest.raises(ConfigError, match="eval_inference_mode"):
        MetaPerturbCallback(handle, eval_inference_mode="sometimes")
    with pytest.raises(ConfigError, match="anneal_fraction"):
        MetaPerturbCallback(handle, anneal_fraction=1.5)
    with pytest.raises(AttachError, match="expected an mp_hub.attach handle"):
        MetaPerturbCallback(object())
