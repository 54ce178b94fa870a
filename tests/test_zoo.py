"""The zoo: the bundled φ loads offline by name, entries list, unbundled entries explain how to get them."""

import json
import logging
from pathlib import Path

import pytest

from mp_hub import CheckpointError, MetaPerturb, zoo
from mp_hub.cli import main as cli_main


def test_default_phi_is_bundled_and_loads_offline_by_name():
    phi = MetaPerturb.from_pretrained(zoo.DEFAULT_PHI)
    assert phi.num_parameters() == 82 and not phi.training
    prov = phi.config.provenance
    assert prov["source_dataset"] == "glyphs10" and prov["architecture"] == "cifar_resnet20"
    assert prov["selection"]["selected"].endswith(f"seed{prov['seed']}")
    assert prov["site_channels"] == [16, 64]


def test_bundled_folder_is_hub_ready():
    folder = zoo.bundled_path(zoo.DEFAULT_PHI)
    names = {p.name for p in folder.iterdir()}
    assert {"model.safetensors", "config.json", "README.md", "meta_train_curves.png"} <= names
    card = (folder / "README.md").read_text()
    assert "library_name: mp_hub" in card and "glyphs10" in card
    assert "selection" in json.loads((folder / "config.json").read_text())["provenance"]


def test_unbundled_entry_without_hub_id_explains_how_to_get_it():
    with pytest.raises(CheckpointError, match="convert-official"):
        MetaPerturb.from_pretrained("metaperturb-official-tinyimagenet")


def test_a_zoo_name_wins_over_a_same_named_folder_unless_a_path_is_given(tmp_path, monkeypatch, caplog):
    MetaPerturb().save_pretrained(tmp_path / zoo.DEFAULT_PHI)
    monkeypatch.chdir(tmp_path)
    with caplog.at_level(logging.WARNING, logger="mp_hub.hub"):
        loaded = MetaPerturb.from_pretrained(zoo.DEFAULT_PHI)
    assert "selection" in loaded.config.provenance  # the bundled φ
    assert f"./{zoo.DEFAULT_PHI}" in caplog.text and "zoo name" in caplog.text
    for explicit in (f"./{zoo.DEFAULT_PHI}", Path(zoo.DEFAULT_PHI), tmp_path / zoo.DEFAULT_PHI):
        assert "selection" not in MetaPerturb.from_pretrained(explicit).config.provenance  # the folder


def test_cli_zoo_lists_both_entries_with_figures_from_the_bundled_card(capsys):
    assert cli_main(["zoo"]) == 0
    out = capsys.readouterr().out
    assert f"{zoo.DEFAULT_PHI}\n" in out and "bundled (offline)" in out
    assert "metaperturb-official-tinyimagenet" in out and "not downloadable" in out
    # no figure is written in mp_hub/zoo: the bundled φ's come from its config.json, the others' are pointed to
    provenance = zoo.bundled_provenance(zoo.DEFAULT_PHI)
    assert f"; {provenance['steps']} meta-training steps\n" in out
    assert str(zoo.bundled_path(zoo.DEFAULT_PHI) / "README.md") in out
    first = provenance["results"][0]
    assert f"    {first['dataset_name']}: {first['metric_name']} {first['metric_value']}" in out
    assert "results: the `metaperturb:official` rows of benchmarks/transfer_gain.py's records" in out
    assert zoo.bundled_provenance("metaperturb-official-tinyimagenet") is None
