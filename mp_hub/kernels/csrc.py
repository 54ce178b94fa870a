"""C source of the fused site kernels, compiled on first use by `mp_hub.kernels.build` and cached on disk.

Kept in .py modules so that it ships with the package whatever the package-data settings; split in four
parts only to keep files short (they form one translation unit, in this order).
"""

from .csrc_common import SOURCE as _COMMON
from .csrc_features import SOURCE as _FEATURES
from .csrc_site import SOURCE as _SITE
from .csrc_stacked import SOURCE as _STACKED

SOURCE = _COMMON + "\n" + _FEATURES + "\n" + _SITE + "\n" + _STACKED
