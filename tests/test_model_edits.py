"""mp_hub.model_edits: the one mechanism by which mp_hub changes a module's computation."""

import copy

import torch
from torch import nn

from mp_hub.model_edits import edited_forward, replace_forward, wrap_forward


class AddInput:
    def __init__(self, value):
        self.value = value

    def __call__(self, call_next, x):
        return call_next(x + self.value)


class ScaleOutput:
    def __init__(self, factor):
        self.factor = factor

    def __call__(self, call_next, x):
        return call_next(x) * self.factor


class Constant:
    def __init__(self, value):
        self.value = value

    def __call__(self, own_forward, x):
        return torch.full_like(x, self.value) if self.value is not None else own_forward(x)


def test_wrappers_nest_first_added_innermost_and_undo_in_any_order():
    relu, x = nn.ReLU(), torch.tensor([-1.0, 2.0])
    first, second = wrap_forward(relu, ScaleOutput(10.0)), wrap_forward(relu, AddInput(1.0))
    assert torch.equal(relu(x), torch.tensor([0.0, 30.0]))  # (x + 1) then relu then * 10
    first.remove()
    assert torch.equal(relu(x), torch.tensor([0.0, 3.0]))
    first.remove()  # twice: nothing
    second.remove()
    assert "forward" not in relu.__dict__ and edited_forward(relu) is None
    assert torch.equal(relu(x), torch.tensor([0.0, 2.0]))


def test_the_latest_replacement_computes_inside_the_wrappers_and_removing_it_brings_back_the_one_before():
    relu, x = nn.ReLU(), torch.tensor([-1.0, 2.0])
    wrap = wrap_forward(relu, ScaleOutput(2.0))
    older = replace_forward(relu, Constant(5.0))
    newer = replace_forward(relu, Constant(None))  # falls back to the module's own forward
    assert torch.equal(relu(x), torch.tensor([0.0, 4.0]))
    newer.remove()
    assert torch.equal(relu(x), torch.tensor([10.0, 10.0]))
    older.remove()
    wrap.remove()
    assert "forward" not in relu.__dict__


def test_torch_hooks_run_around_the_edits():
    relu, seen = nn.ReLU(), []
    relu.register_forward_pre_hook(lambda m, args: seen.append(("pre", args[0].tolist())))
    relu.register_forward_hook(lambda m, args, out: seen.append(("post", out.tolist())))
    wrap_forward(relu, AddInput(1.0))
    relu(torch.tensor([-3.0]))
    assert seen == [("pre", [-3.0]), ("post", [0.0])]


def test_a_forward_set_by_another_library_is_kept_as_the_modules_own():
    relu = nn.ReLU()
    relu.forward = lambda x: x * 3  # e.g. accelerate's device hooks
    own = relu.forward
    handle = replace_forward(relu, Constant(None))
    assert torch.equal(relu(torch.tensor([-1.0])), torch.tensor([-3.0]))
    handle.remove()
    assert relu.forward is own


def test_an_edit_does_not_take_away_a_forward_set_on_top_of_it():
    relu = nn.ReLU()
    handle = wrap_forward(relu, ScaleOutput(2.0))
    chain = relu.forward
    relu.forward = lambda x: chain(x) + 1  # another library wraps after us
    handle.remove()
    assert torch.equal(relu(torch.tensor([3.0])), torch.tensor([4.0]))  # our chain passes through, theirs stays


def test_a_deep_copy_has_its_own_edits():
    model = nn.Sequential(nn.ReLU())
    wrap_forward(model[0], ScaleOutput(2.0))
    clone = copy.deepcopy(model)
    assert edited_forward(clone[0]).module is clone[0]
    edited_forward(clone[0]).wrappers[0].factor = 7.0
    x = torch.tensor([1.0])
    assert torch.equal(model(x), torch.tensor([2.0])) and torch.equal(clone(x), torch.tensor([7.0]))
