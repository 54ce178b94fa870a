// Fused CPU kernels of a MetaPerturb site: float32, NCHW contiguous or channels-last (nhwc), 3x3 kernels, zero
// padding.
// The functions the library exports, i.e. its ABI: mp_hub/kernels/build.py binds them with ctypes (_SIGNATURES
// there mirrors these prototypes) and passes -DMP_ABI_VERSION, the version it expects back from mp_abi_version.
#ifndef MP_KERNELS_H
#define MP_KERNELS_H

#include <stdint.h>

#ifndef MP_ABI_VERSION
#error "MP_ABI_VERSION is not defined: mp_hub.kernels.build passes it with -DMP_ABI_VERSION=<n>"
#endif

int mp_abi_version(void);
int mp_has_masks(void);
void mp_normal(float *out, long n, uint32_t plane_idx, uint32_t k1, uint32_t k2);
int mp_features(const float *x, long B, long C, long H, long W, const float *K, long h, float *f, uint64_t *masks,
                int nhwc, int nt);
void mp_features_backward(const float *x, const uint64_t *masks, float *gx, long B, long C, long H, long W,
                          const float *K, long h, const float *cf, float *gk_out, int nhwc, int nt);
void mp_scale_forward(const float *f, long B, long C, long h, const float *w, float *rmean, float *rvar,
                      float momentum, float size_c, float size_h, float *scale, float *mean, float *var);
void mp_scale_backward(const float *gs, long B, long C, long h, const float *scale, const float *mean,
                       const float *var, const float *f, const float *w, float size_c, float size_h, long hw,
                       float *gw, float *cf);
void mp_forward_stacked(const float *x, float *y, long B, long C, long H, long W, const float *l1, const float *g1,
                        const float *l2, const float *g2, const float *scale, float kappa, float clip, int relu,
                        int mode, const float *eps, uint32_t k1, uint32_t k2, int nhwc, int nt);
void mp_backward(const float *x, const float *gy, float *gx, long B, long C, long H, long W, const float *l1,
                 const float *g1, const float *l2, const float *g2, const float *scale, float kappa, float clip,
                 int relu, int mode, const float *eps, uint32_t k1, uint32_t k2, float *gs_out, float *gng_out,
                 int nhwc, int nt);

#endif
