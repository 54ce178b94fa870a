"""mp_hub.cli_args: `launch_command`, the command line that reproduces a run (for its card)."""

from mp_hub.cli_args import launch_command


def test_launch_command_names_the_launcher_and_masks_the_token():
    argv = ["--seed", "1", "--hub_token", "hf_x", "--hub_token=hf_y"]
    assert launch_command("recipes/x.py", argv, environ={}) == (
        "python recipes/x.py --seed 1 --hub_token '<HUB_TOKEN>' '--hub_token=<HUB_TOKEN>'"
    )
    assert launch_command("r.py", [], 2, environ={}) == "accelerate launch --num_processes 2 r.py"
    assert launch_command("r.py", [], environ={"ACCELERATE_MIXED_PRECISION": "no"}) == "accelerate launch r.py"
    torchrun = {"TORCHELASTIC_RUN_ID": "1", "LOCAL_WORLD_SIZE": "2"}
    assert launch_command("r.py", [], 2, environ=torchrun) == "torchrun --nproc_per_node 2 r.py"
