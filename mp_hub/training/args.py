"""`--config FILE.yaml` for the recipes: kept under this name for imports; the code is in `mp_hub.cli_args`."""

from ..cli_args import parse_args_with_config

__all__ = ["parse_args_with_config"]
