"""tools/initial_phi.py: the recipe's seeded init of φ, bit for bit, optionally with the scale's start moved; bad
arguments refused."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from _builders import load_script

from mp_hub import MetaPerturb
from mp_hub import functional as MF
from mp_hub.training import phi_sha256, seeded_phi

SCRIPT = Path(__file__).resolve().parents[2] / "tools" / "initial_phi.py"


@pytest.fixture(scope="module")
def tool():
    return load_script(SCRIPT, "initial_phi")


def test_without_a_scale_weight_it_is_the_recipes_init(tool, tmp_path, capsys):
    out = tmp_path / "start"
    assert tool.main(["--seed", "3", "--output_dir", str(out)]) == 0
    written = MetaPerturb.from_pretrained(out)
    expected = seeded_phi(3)
    for (name, got), want in zip(written.state_dict().items(), expected.state_dict().values(), strict=True):
        assert torch.equal(got, want), name
    printed = capsys.readouterr().out
    assert phi_sha256(expected) in printed
    assert "s starts at 0.50" in printed  # the authors' init halves every site's output


def test_scale_size_weight_moves_the_scales_start(tool, tmp_path, capsys):
    out = tmp_path / "start"
    assert tool.main(["--seed", "1", "--scale_size_weight", "2.4", "--output_dir", str(out)]) == 0
    phi = MetaPerturb.from_pretrained(out)
    seeded = seeded_phi(1)
    changed = [n for n, p in phi.named_parameters() if not torch.equal(p, seeded.state_dict()[n])]
    assert changed == ["channel_scale.fc.weight"]
    assert torch.equal(phi.channel_scale.fc.weight[0, :-2], seeded.channel_scale.fc.weight[0, :-2])
    assert phi.config.provenance["initial_phi"] == {"seed": 1, "scale_size_weight": 2.4}
    # the weights set are the ones the scale gives the site's size: φ's own scale function agrees with the tool
    for channels, height in [(16, 32), (32, 16), (64, 8)]:
        zeros = torch.zeros(channels, phi.config.h_dim)
        with torch.no_grad():
            s = MF.channel_scale(
                zeros, zeros, phi.channel_scale.fc.weight, height=height, channel_norm=64, spatial_norm=32
            )
        assert s.allclose(torch.full_like(s, tool.initial_scale(phi, channels, height, 32.0)))
        assert math.isclose(float(s[0]), 1 / (1 + math.exp(-2.4 * (channels / 64 + height / 32))), rel_tol=1e-6)
    printed = capsys.readouterr().out
    assert "site 16x32: s starts at 0.953" in printed and "site 32x16: s starts at 0.917" in printed
    assert phi_sha256(phi) in printed


def test_refuses_a_folder_in_use_and_bad_arguments(tool, tmp_path, capsys):
    used = tmp_path / "used"
    used.mkdir()
    (used / "model.safetensors").write_bytes(b"x")
    with pytest.raises(SystemExit, match="exists and is not an empty folder"):
        tool.main(["--output_dir", str(used)])
    assert (used / "model.safetensors").read_bytes() == b"x"
    bad_arguments = {
        ("--site_shapes", "16by32"): "a site shape is CxH",
        ("--site_shapes", "0x8"): "a site shape is CxH",
        ("--scale_size_weight", "nan"): "must be a finite number",
        ("--spatial_norm", "0"): "must be > 0",
    }
    for bad, message in bad_arguments.items():
        with pytest.raises(SystemExit):
            tool.main(["--output_dir", str(tmp_path / "new"), *bad])
        assert message in capsys.readouterr().err
    assert not (tmp_path / "new").exists()
