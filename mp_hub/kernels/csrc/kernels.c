// The fused site kernels: one translation unit made of the parts below, in this order (each part uses the static
// helpers of those before it), so gcc sees every helper where it inlines it. Built by mp_hub/kernels/build.py:
//   cc -O3 ... -DMP_ABI_VERSION=<n> -I <folder with the generated esp_table.h> kernels.c
#include "common.c"
#include "channels_last.c"
#include "masks.c"
#include "features.c"
#include "site.c"
#include "stacked.c"
