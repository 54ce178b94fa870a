"""mp_hub.regularizers.choice: a regularizer chosen by name (none, DropBlock, MetaPerturb) and its schedule."""

import pytest
from _builders import resnet8

from mp_hub import MetaPerturb
from mp_hub.errors import ConfigError
from mp_hub.regularizers import apply_regularizer, find_sites


def test_apply_regularizer_by_name_and_its_schedule():
    assert apply_regularizer(resnet8(), "none").set_step(3, 10) == {}
    model = resnet8()
    reg = apply_regularizer(model, "dropblock", dropblock_prob=0.2, dropblock_size=3)
    assert reg.info["sites"] == len(find_sites(model).sites)
    assert reg.set_step(5, 10) == {"drop_prob": pytest.approx(0.1)}
    reg = apply_regularizer(resnet8(), "metaperturb", phi=MetaPerturb(), phi_id="x", noise_anneal_fraction=0.5)
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
            apply_regularizer(resnet8(), kind, **kwargs)
