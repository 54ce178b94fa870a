"""mp_hub.cards: the model card of a transfer run, rendered from typed arguments."""

from huggingface_hub import ModelCard

from mp_hub.cards import render_transfer_card


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
