"""φ Hub I/O: save/load strictness, cards, forward compatibility, the HF cache, push (φ and a perturbed model),
the CLI."""

import json
import logging
import shutil
import sys
from pathlib import Path
from unittest import mock

import pytest
import torch
import yaml
from huggingface_hub import RepoUrl
from safetensors.torch import load_file, save_file

import mp_hub
from mp_hub import CheckpointError, MetaPerturb, MetaPerturbConfig, NotCachedError
from mp_hub.cli import main as cli_main
from mp_hub.hub import upload_to_hub
from mp_hub.models import model_from_type


@pytest.fixture
def phi():
    torch.manual_seed(0)
    return MetaPerturb(MetaPerturbConfig(provenance={"source_dataset": "toy", "steps": 3, "seed": 0}))


def card_metadata(path: Path) -> dict:
    text = (path / "README.md").read_text()
    return yaml.safe_load(text.split("---")[1])


def test_save_writes_three_files_and_loads_bit_exact(phi, tmp_path):
    phi.save_pretrained(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    loaded = MetaPerturb.from_pretrained(tmp_path)
    assert not loaded.training
    for (name, a), (_, b) in zip(phi.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), name
    assert json.loads((tmp_path / "config.json").read_text())["mp_hub_version"] == "0.1.0"


def test_card_has_metadata_provenance_and_usage(phi, tmp_path):
    phi.save_pretrained(tmp_path)
    meta = card_metadata(tmp_path)
    assert meta["library_name"] == "mp_hub"
    assert {"metaperturb", "regularization", "image-classification"} <= set(meta["tags"])
    assert "license" in meta
    text = (tmp_path / "README.md").read_text()
    assert "**82 parameters**" in text and "| source_dataset | toy |" in text
    assert 'MetaPerturb.from_pretrained("' in text


def test_card_is_regenerated_on_every_save_with_model_index(phi, tmp_path):
    phi.save_pretrained(tmp_path)
    assert "model-index" not in card_metadata(tmp_path)
    phi.config.provenance["results"] = [
        dict(dataset_name="mnist", dataset_type="mnist", metric_type="accuracy", metric_value=0.91)
    ]
    phi.config.provenance["datasets"] = ["glyphs10"]
    phi.save_pretrained(tmp_path)
    meta = card_metadata(tmp_path)
    result = meta["model-index"][0]["results"][0]
    assert result["metrics"][0] == {"type": "accuracy", "value": 0.91}
    assert meta["datasets"] == ["glyphs10"]


def test_newer_config_keys_are_dropped_with_a_warning_naming_them(phi, tmp_path, caplog):
    phi.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config.update(future_knob=3, mp_hub_version="9.0.0")
    (tmp_path / "config.json").write_text(json.dumps(config))
    with caplog.at_level(logging.WARNING, logger="mp_hub.config"):
        MetaPerturb.from_pretrained(tmp_path)
    assert "future_knob" in caplog.text and "9.0.0" in caplog.text


def test_missing_and_unexpected_keys_are_named(phi, tmp_path):
    phi.save_pretrained(tmp_path)
    state = load_file(tmp_path / "model.safetensors")
    state["extra.weight"] = state.pop("channel_scale.kernels")
    save_file(state, tmp_path / "model.safetensors")
    with pytest.raises(CheckpointError, match=r"missing keys \['channel_scale.kernels'\].*unexpected keys \['extra"):
        MetaPerturb.from_pretrained(tmp_path)


def test_wrong_shape_is_named(phi, tmp_path):
    phi.save_pretrained(tmp_path)
    state = load_file(tmp_path / "model.safetensors")
    state["channel_scale.fc.weight"] = torch.zeros(1, 12)
    save_file(state, tmp_path / "model.safetensors")
    with pytest.raises(CheckpointError, match=r"channel_scale.fc.weight: expected \(1, 10\), got \(1, 12\)"):
        MetaPerturb.from_pretrained(tmp_path)


@pytest.mark.parametrize("damage", ["truncate", "garbage"])
def test_corrupted_safetensors_raise(phi, tmp_path, damage):
    phi.save_pretrained(tmp_path)
    weights = tmp_path / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2] if damage == "truncate" else b"\x00" * 8 + b"not json")
    with pytest.raises(CheckpointError, match="corrupted, truncated or not a safetensors file"):
        MetaPerturb.from_pretrained(tmp_path)


def test_directory_without_config_raises(phi, tmp_path):
    phi.save_pretrained(tmp_path)
    (tmp_path / "config.json").unlink()
    with pytest.raises(CheckpointError, match="has no config.json"):
        MetaPerturb.from_pretrained(tmp_path)


def test_a_pickle_is_refused(phi, tmp_path):
    torch.save(phi.state_dict(), tmp_path / "phi.pth")
    with pytest.raises(CheckpointError, match="pickle"):
        MetaPerturb.from_pretrained(tmp_path / "phi.pth")
    phi.config.save(tmp_path)
    with pytest.raises(CheckpointError, match=r"safetensors only.*convert-official"):
        MetaPerturb.from_pretrained(tmp_path)


def hand_built_cache(phi, cache_dir: Path, repo_id: str) -> None:
    """The HF cache layout: models--org--name/{refs/main, snapshots/<commit>/<files>}."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = cache_dir / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / commit
    phi.save_pretrained(snapshot)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)


def test_repo_id_resolves_through_a_local_hf_cache(phi, tmp_path):
    hand_built_cache(phi, tmp_path, "org/metaperturb-toy")
    loaded = MetaPerturb.from_pretrained("org/metaperturb-toy", cache_dir=tmp_path)
    assert torch.equal(loaded.channel_scale.kernels, phi.channel_scale.kernels)
    assert loaded.source_id == "org/metaperturb-toy"


def test_offline_uncached_repo_id_says_so(tmp_path):
    with pytest.raises(NotCachedError, match=r"'org/not-cached'.*HF_HUB_OFFLINE"):
        MetaPerturb.from_pretrained("org/not-cached", cache_dir=tmp_path)


def fake_hub_api(namespace: str = "me"):
    """A mocked HfApi whose create_repo resolves a bare name into `namespace`, as the Hub does for the token's user,
    and whose upload_folder records the files it is given."""
    api = mock.MagicMock()
    api.create_repo.side_effect = lambda repo_id, **kwargs: RepoUrl(
        f"https://huggingface.co/{repo_id if '/' in repo_id else f'{namespace}/{repo_id}'}"
    )
    api.uploaded = {}

    def upload_folder(**kwargs):
        folder = Path(kwargs["folder_path"])
        api.uploaded.update(files=sorted(p.name for p in folder.iterdir()), card=(folder / "README.md").read_text())
        return "commit-info"

    api.upload_folder.side_effect = upload_folder
    return api


def test_push_is_one_commit_with_the_three_files(phi):
    api = fake_hub_api()
    assert phi.push_to_hub("org/phi", private=True, api=api) == "commit-info"
    api.create_repo.assert_called_once_with("org/phi", private=True, token=None, exist_ok=True)
    api.upload_folder.assert_called_once()
    assert api.upload_folder.call_args.kwargs["repo_id"] == "org/phi"
    assert api.uploaded["files"] == ["README.md", "config.json", "model.safetensors"]
    api.create_branch.assert_not_called()


def test_push_resolves_a_bare_name_and_takes_branch_and_create_pr(phi):
    api = fake_hub_api("alice")
    phi.push_to_hub("my-phi", token="hf_tok", branch="v2", commit_message="φ v2", card_extra={"title": "My φ"}, api=api)
    api.create_repo.assert_called_once_with("my-phi", private=None, token="hf_tok", exist_ok=True)
    api.create_branch.assert_called_once_with("alice/my-phi", branch="v2", token="hf_tok", exist_ok=True)
    upload = api.upload_folder.call_args.kwargs
    assert (upload["repo_id"], upload["revision"], upload["create_pr"]) == ("alice/my-phi", "v2", False)
    assert (upload["commit_message"], upload["token"]) == ("φ v2", "hf_tok")
    assert 'from_pretrained("alice/my-phi")' in api.uploaded["card"] and "# My φ" in api.uploaded["card"]
    api = fake_hub_api("alice")
    phi.push_to_hub("my-phi", create_pr=True, api=api)  # a pull request against the default branch
    api.create_branch.assert_not_called()
    upload = api.upload_folder.call_args.kwargs
    assert (upload["repo_id"], upload["revision"], upload["create_pr"]) == ("alice/my-phi", None, True)


def test_a_perturbed_model_pushes_the_same_way(phi):
    model = model_from_type("cifar_conv4", 3, 16, hidden_size=4)
    handle = mp_hub.attach(model, phi)
    api = fake_hub_api("alice")
    handle.push_to_hub("net", private=True, token="hf_tok", branch="exp", create_pr=True, api=api)
    api.create_repo.assert_called_once_with("net", private=True, token="hf_tok", exist_ok=True)
    upload = api.upload_folder.call_args.kwargs
    assert (upload["repo_id"], upload["revision"], upload["create_pr"]) == ("alice/net", "exp", True)
    assert "metaperturb.safetensors" in api.uploaded["files"] and 'load_perturbed("alice/net")' in api.uploaded["card"]


def test_upload_to_hub_uploads_a_folder_as_it_is(tmp_path):
    api = mock.MagicMock()
    upload_to_hub(tmp_path, "me/run", commit_message="m", ignore_patterns=["checkpoints/*"], branch="b", api=api)
    api.create_branch.assert_called_once_with("me/run", branch="b", token=None, exist_ok=True)
    api.upload_folder.assert_called_once_with(
        repo_id="me/run", folder_path=str(tmp_path), commit_message="m", token=None, revision="b", create_pr=False,
        ignore_patterns=["checkpoints/*"],
    )  # fmt: skip


def test_push_uses_hfapi_by_default(phi):
    with mock.patch("mp_hub.hub.HfApi") as api_class:
        api_class.return_value.create_repo.return_value = RepoUrl("https://huggingface.co/org/phi")
        phi.push_to_hub("org/phi", token="tok")
    api_class.assert_called_once_with(token="tok")
    assert api_class.return_value.upload_folder.call_count == 1


def test_cli_convert_official_and_info(tmp_path, capsys, reference_dir):
    out = tmp_path / "official"
    assert cli_main(["convert-official", str(reference_dir / "perturb_750.pth"), str(out)]) == 0
    meta = card_metadata(out)
    text = (out / "README.md").read_text()
    assert meta["license"] == "other" and "states no licence" in text
    assert "JWoong148/MetaPerturb" in text and "c08314a" in text and "Tiny ImageNet" in text and "750" in text
    capsys.readouterr()
    assert cli_main(["info", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "parameters: 82" in printed and "source_commit: c08314a" in printed


def test_cli_convert_official_push_uses_one_commit(tmp_path, reference_dir):
    with mock.patch("mp_hub.hub.HfApi") as api_class:
        code = cli_main(["convert-official", str(reference_dir / "perturb_750.pth"), str(tmp_path), "--push", "org/x"])
    assert code == 0 and api_class.return_value.upload_folder.call_count == 1


def test_converter_checks_keys_shapes_and_file(tmp_path, reference_dir):
    state = torch.load(reference_dir / "perturb_750.pth", map_location="cpu", weights_only=True)
    bad = dict(state)
    bad["fc.weight"] = torch.zeros(1, 9)
    torch.save(bad, tmp_path / "shape.pth")
    with pytest.raises(CheckpointError, match=r"'fc.weight' should have shape \(1, 10\)"):
        MetaPerturb.from_official(tmp_path / "shape.pth")
    bad = dict(state)
    del bad["kernel"]
    torch.save(bad, tmp_path / "keys.pth")
    with pytest.raises(CheckpointError, match=r"missing keys \['kernel'\]"):
        MetaPerturb.from_official(tmp_path / "keys.pth")
    (tmp_path / "junk.pth").write_bytes(b"junk")
    with pytest.raises(CheckpointError, match="not a readable weights-only"):
        MetaPerturb.from_official(tmp_path / "junk.pth")


def test_cli_reports_errors_with_exit_code_2(tmp_path, capsys):
    assert cli_main(["info", str(tmp_path)]) == 2
    assert "has no config.json" in capsys.readouterr().err


def test_cli_zoo_lists_the_official_entry(capsys):
    assert cli_main(["zoo"]) == 0
    assert "metaperturb-official-tinyimagenet" in capsys.readouterr().out


def test_console_script_is_installed():
    # Beside this interpreter: the environment under test need not be activated (on PATH).
    assert shutil.which("mp-hub", path=str(Path(sys.executable).parent)) is not None
