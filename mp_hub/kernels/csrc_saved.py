"""C source of the site's backward from saved state: no recomputation of the noise generator or the noise.

Used where the site fuses the ReLU that follows it and φ is frozen (transfer on a ResNet): the forward keeps
a = μ + ε (μ in "mean" mode) and the CEO1 ReLU masks as bits; the site's output o = relu(min(x ⊙ m, clip)) is
kept anyway by the next layer, and x is recovered from it where the gradient passes (x = o / m there, to a
rounding). The saved state then costs what saving x did, and the backward skips both stencils of the noise
generator and the normal draws.
"""

SOURCE = r"""// ---- backward from (o, a, CEO1 masks): dL/dx, dL/ds ----
// Where o == clip the clamp is taken as active (the reference passes the gradient at p == clip exactly: a
// measure-zero difference); with relu, the gradient passes where o > 0, as torch's ReLU.
#define SAVED_ELEM(ZEXPR)                                                                                         \
  for (long i = 0; i < n; i++) {                                                                                  \
    float dz, z = ZEXPR;                                                                                          \
    float mult = (sc * z - 1.0f) * kappa + 1.0f, ov = os[i];                                                     \
    float gp = ov < clip && (!relu || ov > 0.0f) ? gys[i] : 0.0f;                                                 \
    float gm = gp * (mult != 0.0f ? ov / mult : 0.0f);                                                            \
    gxs[i] = gp * mult;                                                                                           \
    gsum += gm * z;                                                                                               \
    gmu[i] = gm * kappa * sc * dz;                                                                                \
  }

// On the stacked layout of csrc_stacked (dL/dmu and dL/dCEO1 as C stacked planes each, their channel sums as one):
// no copies into padded planes, and dL/dx is added straight into gx. The taps are added in the order of the
// padded layout's corr3 / TAPS: the result was checked bitwise against this function's padded version when it
// moved; the tests hold it to the eager path (tests/test_site_fast.py).
void mp_backward_saved(const float *out, const float *gy, const float *a, const uint16_t *rbits, float *gx, long B,
                       long C, long H, long W, const float *l1, const float *g1, const float *l2, const float *g2,
                       const float *scale, float kappa, float clip, int relu, int mode, float *gs_out, int nt) {
  float ng[36];
  gather_ng(ng, l1, g1, l2, g2);
  float *gs = (float *)malloc(sizeof(float) * (size_t)(B * C));
  const long n = H * W, sp = n + W, nb = (n + 15) / 16;
#pragma omp parallel num_threads(nt)
  {
    Stack s = stack_layout(C, H, W, 1);
#pragma omp for schedule(dynamic, 1)
    for (long b = 0; b < B; b++) {
      float *restrict s2 = s.s2;
      memset(s2, 0, sizeof(float) * (size_t)n);
      for (long c = 0; c < C; c++) {
        const long off = (b * C + c) * n;
        const float *restrict os = out + off, *restrict gys = gy + off, *restrict as = a + off;
        float *restrict gxs = gx + off, *restrict gmu = s.gm + c * sp;
        const float sc = scale[c];
        float gsum = 0.0f;
        if (mode == 2) {
#pragma omp simd reduction(+ : gsum)
          SAVED_ELEM(esp(as[i], &dz))
        } else {
#pragma omp simd reduction(+ : gsum)
          SAVED_ELEM(softplus_d(as[i], &dz))
        }
#pragma omp simd
        for (long k = 0; k < n; k++) s2[k] += gmu[k];
        gs[b * C + c] = gsum * kappa;
      }
      stacked_ceo1_grad(ng, &s, C, n, W, rbits + b * C * nb);
      stacked_ceo1_transpose_add(gx + b * C * n, ng, &s, C, n, W);
    }
  }
  for (long c = 0; c < C; c++) {
    double acc = 0.0;
    for (long b = 0; b < B; b++) acc += gs[b * C + c];
    gs_out[c] = (float)acc;
  }
  free(gs);
}
"""
