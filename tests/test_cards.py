"""mp_hub.cards: the model card of a transfer run, rendered from typed arguments; one library_name for every
card of a model with φ, with its base model and their relation."""

import pytest
from huggingface_hub import ModelCard

import mp_hub
from mp_hub.cards import LIBRARY_NAME, render_transfer_card
from mp_hub.models import model_from_type

TRANSFER_CARD = dict(
    model_name="cifar_resnet20", model_class="CifarResNetForImageClassification", base_model=None,
    dataset_id="/x/fashion_mnist_tiny", hub_dataset=None, eval_split="test", num_train=10, num_eval=5, num_labels=2,
    regularizer="metaperturb", metrics={"accuracy": 0.5, "nll": 0.7, "ece": 0.1}, steps=3, batch_size=4,
    learning_rate=1e-3, lr_scheduler="step", image_size=32, repo_id="me/m", command="python recipes/transfer.py",
    arguments={"seed": 0}, phi_id="phi-x", num_sites=9,
)  # fmt: skip


def transfer_card(**overrides) -> str:
    return render_transfer_card(**(TRANSFER_CARD | overrides))


def test_render_transfer_card_takes_typed_arguments(tmp_path):
    text = transfer_card()
    (tmp_path / "README.md").write_text(text)
    card = ModelCard.load(tmp_path / "README.md")
    assert card.data.datasets == ["zalando-datasets/fashion_mnist"] and "metaperturb" in card.data.tags
    assert {m.metric_type: m.metric_value for m in card.data.eval_results}["accuracy"] == 0.5
    assert "`phi-x` (frozen) at 9 sites" in text and 'load_perturbed("me/m")' in text


def _metadata(text: str, folder) -> dict:
    (folder / "README.md").write_text(text)
    return ModelCard.load(folder / "README.md").data.to_dict()


@pytest.mark.parametrize("base_model", ["org/tiny-conv4", None])
def test_every_card_of_a_model_with_phi_says_mp_hub_with_its_base_model(tmp_path, base_model):
    model = model_from_type("cifar_conv4", 3, 16, hidden_size=4)
    model.config._name_or_path = base_model or str(tmp_path)  # a local folder is no Hub id
    saved = mp_hub.attach(model, mp_hub.MetaPerturb()).save_pretrained(tmp_path / "saved")
    handle_card = ModelCard.load(saved / "README.md").data.to_dict()
    recipe_card = _metadata(transfer_card(base_model=base_model or str(tmp_path)), tmp_path)
    baseline_card = _metadata(transfer_card(base_model=base_model, regularizer="none"), tmp_path)
    assert handle_card["library_name"] == recipe_card["library_name"] == LIBRARY_NAME == "mp_hub"
    assert baseline_card["library_name"] == "transformers"  # no φ: plain transformers loads it
    for card in (handle_card, recipe_card, baseline_card):
        assert card.get("base_model") == base_model
        assert card.get("base_model_relation") == ("finetune" if base_model else None)
