"""PerturbSite under torch.compile(fullgraph=True), both backends: a training step (forward + backward) and eval
steps of an attached model are one graph each and give the uncompiled results (aot_eager: bit for bit; inductor:
to float32 rounding); a non-finite training input still fails the step. The fused kernels run in the compiled
graph as the custom ops of `mp_hub.kernels.ops`."""

import copy
import logging
import time

import pytest
import torch
import torch._dynamo.testing
import torch.nn.functional as F
from _builders import ConvNet, make_phi, record_site_layouts, resnet8

import mp_hub
from mp_hub import InvalidInputError, PerturbSite, kernels
from mp_hub.kernels import fused

BACKENDS = ["fused", "eager"]


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    """Each test compiles its own models: no cache entries (or recompile counts) carried over between tests."""
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _needs(backend: str) -> None:
    if backend == "fused" and not kernels.fused_available():
        pytest.skip(f"fused kernels unavailable here: {kernels.build.load_error()}")


def attached(backend: str, model=None):
    model = resnet8(size=8) if model is None else model
    handle = mp_hub.attach(model, make_phi(), spatial_norm=8, trainable_phi=True)
    handle.set_noise_coeff(0.7)
    for site in handle.site_list():
        site.set_backend(backend)
    return model, handle


def train_step(model, x, labels):
    logits = model(pixel_values=x).logits if hasattr(model, "config") else model(x)
    loss = F.cross_entropy(logits, labels)
    loss.backward()
    return loss.detach()


def set_mode(model, mode: str) -> None:
    for site in model.metaperturb_sites.values():
        site.set_inference_mode(mode)


@pytest.mark.parametrize("backend", BACKENDS)
def test_compiled_training_and_eval_steps_are_one_graph_each_and_match_eager(backend):
    """Two training steps (the second on the running statistics the first wrote), then an eval step in "mc" and
    in "mean" mode: losses, logits, every gradient (θ and φ) and every buffer equal to the uncompiled twin's."""
    _needs(backend)
    model, _ = attached(backend)
    twin = copy.deepcopy(model)
    counter = torch._dynamo.testing.CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(model, fullgraph=True, backend=counter)
    x, labels = torch.randn(4, 3, 8, 8), torch.tensor([0, 1, 2, 0])
    for step in range(2):
        torch.manual_seed(step)
        loss = train_step(compiled, x, labels)
        torch.manual_seed(step)
        assert torch.equal(loss, train_step(twin, x, labels)), step
    assert counter.frame_count == 1  # fullgraph: one graph, no break, no recompilation
    pairs = list(zip(model.parameters(), twin.parameters()))
    assert all(a.grad is not None for a, _ in pairs[-len(list(model.metaperturb_phi.parameters())) :])
    assert all(torch.equal(a.grad, b.grad) for a, b in pairs if a.grad is not None)
    assert all(torch.equal(a, b) for a, b in zip(model.buffers(), twin.buffers()))
    model.eval(), twin.eval()
    for mode in ("mc", "mean"):
        set_mode(model, mode), set_mode(twin, mode)
        with torch.no_grad():
            torch.manual_seed(5)
            logits = compiled(pixel_values=x).logits
            torch.manual_seed(5)
            assert torch.equal(logits, twin(pixel_values=x).logits), mode
    assert counter.frame_count == 3  # one more graph per inference mode


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_non_finite_training_input_fails_the_compiled_step(backend):
    """Fused: the kernels' check raises the typed error from inside the graph. Eager: an asynchronous assert in
    the graph (no host sync) fails the step with the same message."""
    _needs(backend)
    site = PerturbSite(make_phi(), 3, spatial_norm=8, backend=backend).train()
    compiled = torch.compile(site, fullgraph=True, backend="aot_eager")
    x = torch.randn(4, 3, 5, 5)
    compiled(x)
    before = site.running_mean.clone()
    x[2, 1, 0, 4] = float("nan")
    error = InvalidInputError if backend == "fused" else RuntimeError
    with pytest.raises(error, match="non-finite values"):
        compiled(x)
    assert torch.equal(site.running_mean, before)  # the statistics never saw the batch


def test_a_fused_site_the_kernels_cannot_serve_warns_once_under_compile_too(caplog):
    """backend="fused" with a float64 x: the eager path, in one graph, and the fallback's warning logged once
    (while dynamo traces: no logging call in the graph)."""
    fused._warned.clear()
    site = PerturbSite(make_phi().double(), 3, spatial_norm=8, backend="fused").double().train()
    compiled = torch.compile(site, fullgraph=True, backend="aot_eager")
    with caplog.at_level(logging.WARNING, logger="mp_hub.kernels.fused"):
        for _ in range(2):
            compiled(torch.randn(4, 3, 5, 5, dtype=torch.float64))
    assert [r.message for r in caplog.records].count(
        "PerturbSite backend 'fused' falls back to the eager path: x is torch.float64 on cpu (the kernels take "
        "float32 CPU tensors)"
    ) == 1


# fused sites draw one generator key with torch.randint, which inductor keeps as it is (fallback_random): the same
# noise as uncompiled. Eager sites' torch.randn_like draws differ under inductor even so: they run in "mean" mode.
@pytest.mark.parametrize(
    ("backend", "mode"), [("fused", "mc"), pytest.param("eager", "mean", marks=pytest.mark.slow)]
)  # the eager sites' graph is the larger one to generate code for: with the slow tests
def test_inductor_compiles_a_training_step(backend, mode, monkeypatch):
    """The inductor test (C++ code generation: the slowest here): a two-block ConvNet, a training step and an eval
    step, to float32 rounding (inductor fuses and reorders the float operations). Fused sites take x as inductor
    has it (the ops' flexible layout): channels-last where its CPU convolutions left it so, not copied to NCHW."""
    _needs(backend)
    layouts = record_site_layouts(monkeypatch)
    targets = dict(targets=r"blocks\.\d+\.2", placement="input", spatial_norm=8)
    model = ConvNet(widths=(4, 4), seed=0)
    handle = mp_hub.attach(model, make_phi(), trainable_phi=True, inference_mode=mode, **targets)
    for site in handle.site_list():
        site.set_backend(backend)
    twin = copy.deepcopy(model)
    x, labels = torch.randn(4, 3, 8, 8), torch.tensor([0, 1, 2, 0])
    started = time.perf_counter()
    # no FX graph cache: a graph cached by an earlier mp_hub, whose ops took NCHW only, would be reused
    with torch._inductor.config.patch(fallback_random=True, force_disable_caches=True):
        compiled = torch.compile(model, fullgraph=True, backend="inductor")
        torch.manual_seed(0)
        loss = train_step(compiled, x, labels)
        model.eval()
        with torch.no_grad():
            torch.manual_seed(1)
            logits = compiled(x)
    print(f"inductor, {backend} sites: compiled and ran in {time.perf_counter() - started:.1f} s")
    if backend == "fused":  # 2 sites, a training step and an eval step; inductor picks each input's layout
        assert len(layouts) == 4 and any(layouts), layouts
    torch.manual_seed(0)
    assert torch.allclose(loss, train_step(twin, x, labels), rtol=1e-5, atol=1e-6)
    for a, b in zip(model.parameters(), twin.parameters()):
        assert torch.allclose(a.grad, b.grad, rtol=1e-4, atol=1e-6)
    for a, b in zip(model.buffers(), twin.buffers()):
        assert torch.allclose(a.float(), b.float(), rtol=1e-5, atol=1e-6)
    twin.eval()
    with torch.no_grad():
        torch.manual_seed(1)
        assert torch.allclose(logits, twin(x), rtol=1e-5, atol=1e-6)
