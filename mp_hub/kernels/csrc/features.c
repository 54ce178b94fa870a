// Part of kernels.c: the scale features and their backward, on the padded layout of common.c, with the ReLU masks
// of masks.c where the CPU has them.
// ---- scale features f[b, c, j] = mean_hw relu(K_j * x_bc) and their backward ----
#define KW(j) const float *kw##j = K + 9 * (j);
#define KT(j, p, k, s)                                                                                           \
  (kw##j[0] * p[k - s - 1] + kw##j[1] * p[k - s] + kw##j[2] * p[k - s + 1] + kw##j[3] * p[k - 1] +              \
   kw##j[4] * p[k] + kw##j[5] * p[k + 1] + kw##j[6] * p[k + s - 1] + kw##j[7] * p[k + s] + kw##j[8] * p[k + s + 1])
#define KTF(j, p, k, s)                                                                                          \
  (kw##j[8] * p[k - s - 1] + kw##j[7] * p[k - s] + kw##j[6] * p[k - s + 1] + kw##j[5] * p[k - 1] +              \
   kw##j[4] * p[k] + kw##j[3] * p[k + 1] + kw##j[2] * p[k + s - 1] + kw##j[1] * p[k + s] + kw##j[0] * p[k + s + 1])
#define RELU(v) ((v) > 0.0f ? (v) : 0.0f)

static long mask_words(const Geom *g) { return (g->hi - g->lo + 15) / 16; }

// f[b, c, j] = mean_hw relu(K_j * x_bc) of one padded plane xp into fo (h values), with its ReLU masks into mk
// when given; cm: the column mask. Returns 1 if the plane has a non-finite value.
static int features_padded(const float *restrict xp, const float *K, long h, const Geom *g, const float *restrict cm,
                           float *fo, uint64_t *mk) {
  const long s = g->Wp;
  const float inv = 1.0f / (float)g->n;
  int nf = 0;
#pragma omp simd reduction(| : nf)
  for (long k = g->lo; k < g->hi; k++) nf |= !(fabsf(xp[k]) <= 3.4028234e38f);  // (the pads are zeros)
  if (mk) {
    feat4_masks(xp, cm, K, g, fo, mk);
    for (int j = 0; j < 4; j++) fo[j] *= inv;
  } else if (h == 4) {
    KW(0) KW(1) KW(2) KW(3)
    float a0 = 0.0f, a1 = 0.0f, a2 = 0.0f, a3 = 0.0f;
#pragma omp simd reduction(+ : a0, a1, a2, a3)
    for (long k = g->lo; k < g->hi; k++) {
      float u0 = KT(0, xp, k, s), u1 = KT(1, xp, k, s), u2 = KT(2, xp, k, s), u3 = KT(3, xp, k, s);
      a0 += RELU(u0) * cm[k]; a1 += RELU(u1) * cm[k]; a2 += RELU(u2) * cm[k]; a3 += RELU(u3) * cm[k];
    }
    fo[0] = a0 * inv; fo[1] = a1 * inv; fo[2] = a2 * inv; fo[3] = a3 * inv;
  } else {
    for (long j = 0; j < h; j++) {
      const float *kw0 = K + 9 * j;
      float a = 0.0f;
#pragma omp simd reduction(+ : a)
      for (long k = g->lo; k < g->hi; k++) {
        float u = KT(0, xp, k, s);
        a += RELU(u) * cm[k];
      }
      fo[j] = a * inv;
    }
  }
  return nf;
}
// The same from a dense plane xs, through the thread's padded plane xp.
static int features_plane(const float *restrict xs, const float *K, long h, const Geom *g, float *restrict xp,
                          const float *restrict cm, float *fo, uint64_t *mk) {
  load_plane(xp, xs, g);
  return features_padded(xp, K, h, g, cm, fo, mk);
}

// f[b, c, j] = mean_hw relu(K_j * x_bc); masks (optional; only where mp_has_masks() and h == 4) keep the ReLU
// masks for mp_features_backward, mask_words(g) uint64 per plane. Returns 1 if x has a non-finite value: the
// training-time check rides on this pass, which reads x anyway. nhwc: x is channels-last (an image at a time,
// straight into C padded planes).
int mp_features(const float *x, long B, long C, long H, long W, const float *K, long h, float *f, uint64_t *masks,
                int nhwc, int nt) {
  Geom g = geom(H, W);
  const long n = g.n, mw = mask_words(&g);
  int bad = 0;
#pragma omp parallel num_threads(nt) reduction(| : bad)
  {
    float *ws = scratch((2 + (nhwc ? (size_t)C : 0)) * g.PS);
    float *restrict xp = plane(ws, &g, 0), *restrict cm = plane(ws, &g, 1);
    colmask(cm, &g);
    if (nhwc) {
      memset(ws + 2 * g.PS, 0, sizeof(float) * (size_t)(C * g.PS));  // the planes' borders, never written below
#pragma omp for schedule(dynamic, 1)
      for (long b = 0; b < B; b++) {
        image_to_padded(plane(ws, &g, 2), g.PS, g.Wp, x + b * C * n, C, H, W);
        for (long c = 0; c < C; c++) {
          const long bc = b * C + c;
          bad |= features_padded(plane(ws, &g, 2 + c), K, h, &g, cm, f + bc * h, masks ? masks + bc * mw : NULL);
        }
      }
    } else {
// guided, not dynamic with small chunks: at 8x8 planes a chunk of 4 is ~256 values, about what fetching the
// next chunk costs; guided hands each thread long runs of planes (memory in order) and small ones at the end
#pragma omp for schedule(guided)
      for (long bc = 0; bc < B * C; bc++)
        bad |= features_plane(x + bc * n, K, h, &g, xp, cm, f + bc * h, masks ? masks + bc * mw : NULL);
    }
  }
  return bad;
}

// gx_bc += sum_j K_j^T [cf[b, c, j] (K_j * x_bc > 0)] (cf = dL/df / (H W)), the (K_j * x > 0) from masks when
// given, else recomputed from x; gk (h*9, optional) gets the kernels' gradient.
// The scale kernels' gradient from the bit masks (h == 4), an image at a time: gk_out (36) = sum over images.
static void masked_kernel_grad(const float *x, const uint64_t *masks, long B, long C, long H, long W, const float *cf,
                               float *gk_out, int nhwc, int nt) {
  Geom g = geom(H, W);
  const long n = g.n, mw = mask_words(&g);
  float *gk = (float *)malloc(sizeof(float) * (size_t)(B * 36));
#pragma omp parallel num_threads(nt)
  {
    const long ps = nhwc ? nhwc_plane_stride(n) : n;
    float *ws = scratch((size_t)C * g.PS + (nhwc ? (size_t)(C * ps) : 0));
    float *xs = plane(ws, &g, 0), *xi = ws + C * g.PS;
#pragma omp for schedule(dynamic, 1)
    for (long b = 0; b < B; b++) {
      double acc[36];
      const float *xb = x + b * C * n;
      if (nhwc) {
        image_to_planes(xi, ps, xb, C, n, NULL);
        xb = xi;
      }
      for (long c = 0; c < C; c++) load_plane(xs + c * g.PS, xb + c * ps, &g);
      masked_wgrad4(masks + b * C * mw, mw, cf + b * C * 4, xs, C, &g, acc);
      for (int i = 0; i < 36; i++) gk[b * 36 + i] = (float)acc[i];
    }
  }
  sum_rows(gk_out, gk, B, 36);
  free(gk);
}

// One plane of mp_features_backward: o (a padded plane) = its dL/dx, and gk (h * 9, optional) its kernels'
// gradient; xs: the plane of x (not read with masks), xp, cm, pat, m: the thread's planes.
static void features_grad_plane(const float *restrict xs, const uint64_t *mk, const float *c, const float *K, long h,
                                const Geom *g, float *restrict xp, const float *restrict cm, int32_t *pat,
                                float *m, float *restrict o, float *gk) {
  const long s = g->Wp;
  if (mk) {
    masked_transpose4(mk, c, K, pat, o, g);
  } else if (h == 4) {
    load_plane(xp, xs, g);
    KW(0) KW(1) KW(2) KW(3)
    float *restrict m0 = m, *restrict m1 = m + g->PS, *restrict m2 = m + 2 * g->PS, *restrict m3 = m + 3 * g->PS;
    const float c0 = c[0], c1 = c[1], c2 = c[2], c3 = c[3];
#pragma omp simd
    for (long k = g->lo; k < g->hi; k++) {
      float u0 = KT(0, xp, k, s), u1 = KT(1, xp, k, s), u2 = KT(2, xp, k, s), u3 = KT(3, xp, k, s);
      m0[k] = u0 > 0.0f ? c0 * cm[k] : 0.0f; m1[k] = u1 > 0.0f ? c1 * cm[k] : 0.0f;
      m2[k] = u2 > 0.0f ? c2 * cm[k] : 0.0f; m3[k] = u3 > 0.0f ? c3 * cm[k] : 0.0f;
    }
#pragma omp simd
    for (long k = g->lo; k < g->hi; k++)
      o[k] = KTF(0, m0, k, s) + KTF(1, m1, k, s) + KTF(2, m2, k, s) + KTF(3, m3, k, s);
  } else {
    load_plane(xp, xs, g);
    for (long j = 0; j < h; j++) {
      const float *kw0 = K + 9 * j;
      float *restrict mj = m + j * g->PS;
      const float cj = c[j];
#pragma omp simd
      for (long k = g->lo; k < g->hi; k++) {
        float u = KT(0, xp, k, s);
        mj[k] = u > 0.0f ? cj * cm[k] : 0.0f;
      }
      corr3(o, mj, kw0, 1, j > 0, 1.0f, g);
    }
  }
  if (gk)
    for (long j = 0; j < h; j++) {
      double acc[9] = {0};
      wgrad3(acc, m + j * g->PS, xp, g);
      for (int d = 0; d < 9; d++) gk[j * 9 + d] = (float)acc[d];
    }
}

void mp_features_backward(const float *x, const uint64_t *masks, float *gx, long B, long C, long H, long W,
                          const float *K, long h, const float *cf, float *gk_out, int nhwc, int nt) {
  if (masks && gk_out) {  // the kernels' gradient an image at a time; dL/dx below needs no x then
    masked_kernel_grad(x, masks, B, C, H, W, cf, gk_out, nhwc, nt);
    gk_out = NULL;
  }
  float *gk = gk_out ? (float *)malloc(sizeof(float) * (size_t)(B * C * h * 9)) : NULL;
  Geom g = geom(H, W);
  const long n = g.n, mw = mask_words(&g);
#pragma omp parallel num_threads(nt)
  {
    // channels-last: C padded planes of dL/dx, and (without masks) C dense planes of x
    const long ps = nhwc_plane_stride(n);
    const size_t image = nhwc ? (size_t)(C * g.PS) + (masks ? 0 : (size_t)(C * ps)) : 0;
    float *ws = scratch((4 + h) * g.PS + image);
    float *restrict xp = plane(ws, &g, 0), *restrict cm = plane(ws, &g, 1), *restrict o = plane(ws, &g, 2);
    int32_t *pat = (int32_t *)plane(ws, &g, 3);
    float *m = plane(ws, &g, 4), *gp = ws + (4 + h) * g.PS, *xi = gp + C * g.PS;
    colmask(cm, &g);
    for (long j = 0; j < h; j++) zero_plane(m + j * g.PS, &g);
    memset(pat - GUARD, 0, sizeof(float) * g.PS);
    if (nhwc) {
#pragma omp for schedule(dynamic, 1)
      for (long b = 0; b < B; b++) {
        if (!masks) image_to_planes(xi, ps, x + b * C * n, C, n, NULL);  // with masks, masked_kernel_grad read x
        for (long c = 0; c < C; c++) {
          const long bc = b * C + c;
          features_grad_plane(xi + c * ps, masks ? masks + bc * mw : NULL, cf + bc * h, K, h, &g, xp, cm, pat, m,
                              plane(gp, &g, c), gk ? gk + bc * h * 9 : NULL);
        }
        padded_to_image_add(gx + b * C * n, plane(gp, &g, 0), g.PS, g.Wp, C, H, W);
      }
    } else {
#pragma omp for schedule(guided)  // as in mp_features
      for (long bc = 0; bc < B * C; bc++) {
        features_grad_plane(x + bc * n, masks ? masks + bc * mw : NULL, cf + bc * h, K, h, &g, xp, cm, pat, m, o,
                            gk ? gk + bc * h * 9 : NULL);
        expand_add(gx + bc * n, o, &g);
      }
    }
  }
  if (gk) {
    sum_rows(gk_out, gk, B * C, h * 9);
    free(gk);
  }
}
