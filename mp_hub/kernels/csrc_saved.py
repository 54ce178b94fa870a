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

void mp_backward_saved(const float *out, const float *gy, const float *a, const uint16_t *rbits, float *gx, long B,
                       long C, long H, long W, const float *l1, const float *g1, const float *l2, const float *g2,
                       const float *scale, float kappa, float clip, int relu, int mode, float *gs_out, int nt) {
  float ng[36];
  gather_ng(ng, l1, g1, l2, g2);
  float *gs = (float *)malloc(sizeof(float) * (size_t)(B * C));
  Geom g = geom(H, W);
  const long n = g.n, st = g.Wp, nb = (g.hi - g.lo + 15) / 16;
  const float ic = 1.0f / (float)C;
#pragma omp parallel num_threads(nt)
  {
    Img s = img_layout(&g, C, 1);
    float *restrict s1 = s.s1, *restrict s2 = s.s2, *restrict t = s.t, *restrict mk = s.mr;
#pragma omp for schedule(dynamic, 1)
    for (long b = 0; b < B; b++) {
      zero_plane(s2, &g);
      for (long c = 0; c < C; c++) {
        const long off = (b * C + c) * n;
        const float *restrict os = out + off, *restrict gys = gy + off, *restrict as = a + off;
        float *restrict gxs = gx + off, *restrict gmu = s.gmu, *restrict gmp = s.gm + c * g.PS;
        const float sc = scale[c];
        float gsum = 0.0f;
        if (mode == 2) {
#pragma omp simd reduction(+ : gsum)
          SAVED_ELEM(esp(as[i], &dz))
        } else {
#pragma omp simd reduction(+ : gsum)
          SAVED_ELEM(softplus_d(as[i], &dz))
        }
        load_plane(gmp, gmu, &g);
#pragma omp simd
        for (long k = g.lo; k < g.hi; k++) s2[k] += gmp[k];
        gs[b * C + c] = gsum * kappa;
      }
      corr3(t, s2, ng + 27, 1, 0, ic, &g);  // dL/d mean_c(r), divided by C
      zero_plane(s1, &g);
      zero_plane(mk, &g);
      {
        LOADW(ng + 18, 1, 1.0f)
        for (long c = 0; c < C; c++) {  // dL/d CEO1, through the saved ReLU masks
          const float *restrict gmp = s.gm + c * g.PS;
          float *restrict ga = s.ga + c * g.PS;
          unpack_positive(rbits + (b * C + c) * nb, mk, &g);
          zero_pads(ga, &g);
#pragma omp simd
          for (long k = g.lo; k < g.hi; k++) {
            float v = mk[k] > 0.0f ? t[k] + TAPS(gmp, k, st) : 0.0f;
            ga[k] = v;
            s1[k] += v;
          }
        }
      }
      ceo1_transpose_add(gx + b * C * n, ng, &s, &g, C);
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
