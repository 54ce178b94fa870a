// Part of kernels.c: the scale features and their backward (ReLU masks kept as bits with AVX-512 or AVX2), on the
// padded layout of common.c.
// ---- scale features f[b, c, j] = mean_hw relu(K_j * x_bc) and their backward ----
#define KW(j) const float *kw##j = K + 9 * (j);
#define KT(j, p, k, s)                                                                                           \
  (kw##j[0] * p[k - s - 1] + kw##j[1] * p[k - s] + kw##j[2] * p[k - s + 1] + kw##j[3] * p[k - 1] +              \
   kw##j[4] * p[k] + kw##j[5] * p[k + 1] + kw##j[6] * p[k + s - 1] + kw##j[7] * p[k + s] + kw##j[8] * p[k + s + 1])
#define KTF(j, p, k, s)                                                                                          \
  (kw##j[8] * p[k - s - 1] + kw##j[7] * p[k - s] + kw##j[6] * p[k - s + 1] + kw##j[5] * p[k - 1] +              \
   kw##j[4] * p[k] + kw##j[3] * p[k + 1] + kw##j[2] * p[k + s - 1] + kw##j[1] * p[k + s] + kw##j[0] * p[k + s + 1])
#define RELU(v) ((v) > 0.0f ? (v) : 0.0f)

#ifdef __AVX512F__
// With AVX-512 (or AVX2, below) the features pass can keep the ReLU masks of the 4 kernels as bits (one uint64 per 16 flat
// positions, 16 bits per kernel: an eighth of x), so the backward does not recompute the 4 stencils.
int mp_has_masks(void) { return 1; }
static void feat4_masks(const float *restrict xp, const float *restrict cm, const float *restrict K, const Geom *g,
                        float *out, uint64_t *restrict mk) {
  const long s = g->Wp, nb = (g->hi - g->lo + 15) / 16;
  const __m512 zero = _mm512_setzero_ps();
  __m512 acc[4] = {zero, zero, zero, zero};
  for (long b = 0; b < nb; b++) {
    const long k = g->lo + 16 * b;
    const __m512 p[9] = {_mm512_loadu_ps(xp + k - s - 1), _mm512_loadu_ps(xp + k - s), _mm512_loadu_ps(xp + k - s + 1),
                         _mm512_loadu_ps(xp + k - 1),     _mm512_loadu_ps(xp + k),     _mm512_loadu_ps(xp + k + 1),
                         _mm512_loadu_ps(xp + k + s - 1), _mm512_loadu_ps(xp + k + s), _mm512_loadu_ps(xp + k + s + 1)};
    const __mmask16 real = _mm512_cmp_ps_mask(_mm512_loadu_ps(cm + k), zero, _CMP_NEQ_OQ);
    uint64_t bits = 0;
    for (int j = 0; j < 4; j++) {
      const float *w = K + 9 * j;
      __m512 u = _mm512_mul_ps(_mm512_set1_ps(w[0]), p[0]);
      for (int d = 1; d < 9; d++) u = _mm512_fmadd_ps(_mm512_set1_ps(w[d]), p[d], u);
      const __mmask16 pos = _mm512_mask_cmp_ps_mask(real, u, zero, _CMP_GT_OQ);
      acc[j] = _mm512_mask_add_ps(acc[j], pos, acc[j], u);
      bits |= (uint64_t)pos << (16 * j);
    }
    mk[b] = bits;
  }
  for (int j = 0; j < 4; j++) out[j] = _mm512_reduce_add_ps(acc[j]);
}
// The 4 kernels' weight gradient of one image from the bit masks: acc[9 j + d] = sum_c sum_k c_cj bit_cj(k)
// x_c[k + off_d] over its C planes (xs: C padded planes), the sums wgrad3 forms from the masked planes
// c_j bit_j (the same products; float per image, not per plane). One pass per 2 kernels loads x's 9 shifted
// vectors once for both, and its 18 accumulators stay in registers across the image's planes: C times fewer
// horizontal sums than a plane at a time, which at 8x8 planes cost more than the products.
static void masked_wgrad4(const uint64_t *restrict mk, long mw, const float *cf, const float *restrict xs, long C,
                          const Geom *g, double *acc) {
  const long s = g->Wp, nb = (g->hi - g->lo + 15) / 16;
  const long off[9] = {-s - 1, -s, -s + 1, -1, 0, 1, s - 1, s, s + 1};
  for (int j = 0; j < 4; j += 2) {  // 18 accumulators and 2 weights in registers
    __m512 a0[9], a1[9];
    for (int d = 0; d < 9; d++) a0[d] = a1[d] = _mm512_setzero_ps();
    for (long c = 0; c < C; c++) {
      const float *restrict xp = xs + c * g->PS;
      const uint64_t *restrict m = mk + c * mw;
      const __m512 c0 = _mm512_set1_ps(cf[4 * c + j]), c1 = _mm512_set1_ps(cf[4 * c + j + 1]);
      for (long b = 0; b < nb; b++) {
        const long k = g->lo + 16 * b;
        const __mmask16 m0 = (__mmask16)(m[b] >> (16 * j)), m1 = (__mmask16)(m[b] >> (16 * (j + 1)));
        for (int d = 0; d < 9; d++) {
          const __m512 xv = _mm512_loadu_ps(xp + k + off[d]);
          a0[d] = _mm512_mask3_fmadd_ps(c0, xv, a0[d], m0);
          a1[d] = _mm512_mask3_fmadd_ps(c1, xv, a1[d], m1);
        }
      }
    }
    for (int d = 0; d < 9; d++) {
      acc[9 * j + d] = _mm512_reduce_add_ps(a0[d]);
      acc[9 * (j + 1) + d] = _mm512_reduce_add_ps(a1[d]);
    }
  }
}
// dL/dx of the features from the bit masks: o[k] = sum_d T_d[pattern[k - delta_d]], where pattern is the 4-bit
// mask of the 4 kernels at a position and T_d[m] = sum_j c_j K_j[d] bit_j(m), a 16-entry table that fits one
// register: 9 permutes instead of the 36 FMAs of the 4 transposed stencils.
static void masked_transpose4(const uint64_t *restrict mk, const float *c, const float *K, int32_t *restrict pat,
                              float *restrict o, const Geom *g) {
  const long s = g->Wp, nb = (g->hi - g->lo + 15) / 16;
  const long off[9] = {-s - 1, -s, -s + 1, -1, 0, 1, s - 1, s, s + 1};
  const __m512i one = _mm512_set1_epi32(1), lanes = _mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2,
                                                                     1, 0);
  for (long b = 0; b < nb; b++) {
    const uint64_t w = mk[b];
    __m512i p = _mm512_maskz_mov_epi32((__mmask16)w, one);
    for (int j = 1; j < 4; j++)
      p = _mm512_or_si512(p, _mm512_maskz_mov_epi32((__mmask16)(w >> (16 * j)), _mm512_set1_epi32(1 << j)));
    _mm512_storeu_si512(pat + g->lo + 16 * b, p);
  }
  __m512 table[9];
  for (int d = 0; d < 9; d++) table[d] = _mm512_setzero_ps();
  for (int j = 0; j < 4; j++) {
    const __m512 bit = _mm512_cvtepi32_ps(_mm512_and_si512(_mm512_srli_epi32(lanes, (unsigned)j), one));
    for (int d = 0; d < 9; d++) table[d] = _mm512_fmadd_ps(_mm512_set1_ps(c[j] * K[9 * j + d]), bit, table[d]);
  }
  for (long b = 0; b < nb; b++) {
    const long k = g->lo + 16 * b;
    __m512 acc = _mm512_permutexvar_ps(_mm512_loadu_si512(pat + k - off[0]), table[0]);
    for (int d = 1; d < 9; d++)
      acc = _mm512_add_ps(acc, _mm512_permutexvar_ps(_mm512_loadu_si512(pat + k - off[d]), table[d]));
    _mm512_storeu_ps(o + k, acc);
  }
}
#elif defined(__AVX2__) && defined(__FMA__)
// With AVX2 the same bit masks, used the same way 8 positions to a register: a word's 16 positions are two
// halves h (bit 16 j + 8 h + i), and masked_transpose4's 16-entry table is two registers (entries 0-7 and 8-15).
int mp_has_masks(void) { return 1; }
static inline __m256i bits_to_lanes(uint32_t byte) {  // lane i all ones where bit i of byte is set
  const __m256i sel = _mm256_setr_epi32(1, 2, 4, 8, 16, 32, 64, 128);
  return _mm256_cmpeq_epi32(_mm256_and_si256(_mm256_set1_epi32((int)byte), sel), sel);
}
static inline float sum8(__m256 v) {
  __m128 t = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  t = _mm_add_ps(t, _mm_movehl_ps(t, t));
  return _mm_cvtss_f32(_mm_add_ss(t, _mm_movehdup_ps(t)));
}
static void feat4_masks(const float *restrict xp, const float *restrict cm, const float *restrict K, const Geom *g,
                        float *out, uint64_t *restrict mk) {
  const long s = g->Wp, nb = (g->hi - g->lo + 15) / 16;
  const __m256 zero = _mm256_setzero_ps();
  __m256 acc[4] = {zero, zero, zero, zero};
  for (long b = 0; b < nb; b++) {
    uint64_t bits = 0;
    for (int h = 0; h < 2; h++) {
      const long k = g->lo + 16 * b + 8 * h;
      const __m256 p[9] = {_mm256_loadu_ps(xp + k - s - 1), _mm256_loadu_ps(xp + k - s), _mm256_loadu_ps(xp + k - s + 1),
                           _mm256_loadu_ps(xp + k - 1),     _mm256_loadu_ps(xp + k),     _mm256_loadu_ps(xp + k + 1),
                           _mm256_loadu_ps(xp + k + s - 1), _mm256_loadu_ps(xp + k + s), _mm256_loadu_ps(xp + k + s + 1)};
      const __m256 real = _mm256_cmp_ps(_mm256_loadu_ps(cm + k), zero, _CMP_NEQ_OQ);
      for (int j = 0; j < 4; j++) {
        const float *w = K + 9 * j;
        __m256 u = _mm256_mul_ps(_mm256_set1_ps(w[0]), p[0]);
        for (int d = 1; d < 9; d++) u = _mm256_fmadd_ps(_mm256_set1_ps(w[d]), p[d], u);
        const __m256 pos = _mm256_and_ps(_mm256_cmp_ps(u, zero, _CMP_GT_OQ), real);
        acc[j] = _mm256_add_ps(acc[j], _mm256_and_ps(pos, u));
        bits |= (uint64_t)(uint32_t)_mm256_movemask_ps(pos) << (16 * j + 8 * h);
      }
    }
    mk[b] = bits;
  }
  for (int j = 0; j < 4; j++) out[j] = sum8(acc[j]);
}
// One kernel at a time (9 accumulators: AVX2 has 16 registers, not the 32 that hold two kernels' 18); outside a
// mask the coefficient is zeroed, where the AVX-512 masked FMAs skip the position: the same sums, since x is finite
// wherever masks were kept (mp_features refuses a non-finite x in training, the only time it keeps them).
static void masked_wgrad4(const uint64_t *restrict mk, long mw, const float *cf, const float *restrict xs, long C,
                          const Geom *g, double *acc) {
  const long s = g->Wp, nb = (g->hi - g->lo + 15) / 16;
  const long off[9] = {-s - 1, -s, -s + 1, -1, 0, 1, s - 1, s, s + 1};
  for (int j = 0; j < 4; j++) {
    __m256 a[9];
    for (int d = 0; d < 9; d++) a[d] = _mm256_setzero_ps();
    for (long c = 0; c < C; c++) {
      const float *restrict xp = xs + c * g->PS;
      const uint64_t *restrict m = mk + c * mw;
      const __m256 cj = _mm256_set1_ps(cf[4 * c + j]);
      for (long b = 0; b < nb; b++)
        for (int h = 0; h < 2; h++) {
          const long k = g->lo + 16 * b + 8 * h;
          const __m256 on = _mm256_castsi256_ps(bits_to_lanes((uint32_t)(m[b] >> (16 * j + 8 * h)) & 0xffu));
          const __m256 cv = _mm256_and_ps(on, cj);
          for (int d = 0; d < 9; d++) a[d] = _mm256_fmadd_ps(cv, _mm256_loadu_ps(xp + k + off[d]), a[d]);
        }
    }
    for (int d = 0; d < 9; d++) acc[9 * j + d] = sum8(a[d]);
  }
}
// Entries pattern[i] of a 16-entry table held as lo (0-7) and hi (8-15).
static inline __m256 table_lookup(__m256 lo, __m256 hi, const int32_t *pattern) {
  const __m256i idx = _mm256_loadu_si256((const __m256i *)pattern);
  return _mm256_blendv_ps(_mm256_permutevar8x32_ps(lo, idx), _mm256_permutevar8x32_ps(hi, idx),
                          _mm256_castsi256_ps(_mm256_slli_epi32(idx, 28)));  // bit 3 of the index to the sign
}
// As the AVX-512 version: the same table, built by the same FMAs, and the same sum over d, so dL/dx comes out
// bit for bit as there; a lookup is a permute of each half of the table and a blend on bit 3 of the pattern.
static void masked_transpose4(const uint64_t *restrict mk, const float *c, const float *K, int32_t *restrict pat,
                              float *restrict o, const Geom *g) {
  const long s = g->Wp, nb = (g->hi - g->lo + 15) / 16;
  const long off[9] = {-s - 1, -s, -s + 1, -1, 0, 1, s - 1, s, s + 1};
  for (long b = 0; b < nb; b++)
    for (int h = 0; h < 2; h++) {
      __m256i p = _mm256_setzero_si256();
      for (int j = 0; j < 4; j++)
        p = _mm256_or_si256(p, _mm256_and_si256(bits_to_lanes((uint32_t)(mk[b] >> (16 * j + 8 * h)) & 0xffu),
                                                _mm256_set1_epi32(1 << j)));
      _mm256_storeu_si256((__m256i *)(pat + g->lo + 16 * b + 8 * h), p);
    }
  const __m256i one = _mm256_set1_epi32(1), lanes = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  __m256 lo[9], hi[9];
  for (int d = 0; d < 9; d++) lo[d] = hi[d] = _mm256_setzero_ps();
  for (int j = 0; j < 4; j++) {
    const __m256 bit_lo = _mm256_cvtepi32_ps(_mm256_and_si256(_mm256_srli_epi32(lanes, j), one));
    const __m256 bit_hi = _mm256_cvtepi32_ps(
        _mm256_and_si256(_mm256_srli_epi32(_mm256_add_epi32(lanes, _mm256_set1_epi32(8)), j), one));
    for (int d = 0; d < 9; d++) {
      const __m256 w = _mm256_set1_ps(c[j] * K[9 * j + d]);
      lo[d] = _mm256_fmadd_ps(w, bit_lo, lo[d]);
      hi[d] = _mm256_fmadd_ps(w, bit_hi, hi[d]);
    }
  }
  for (long b = 0; b < 2 * nb; b++) {
    const long k = g->lo + 8 * b;
    __m256 acc = table_lookup(lo[0], hi[0], pat + k - off[0]);
    for (int d = 1; d < 9; d++) acc = _mm256_add_ps(acc, table_lookup(lo[d], hi[d], pat + k - off[d]));
    _mm256_storeu_ps(o + k, acc);
  }
}
#else
int mp_has_masks(void) { return 0; }
static void masked_transpose4(const uint64_t *mk, const float *c, const float *K, int32_t *pat, float *o,
                              const Geom *g) {
  (void)mk; (void)c; (void)K; (void)pat; (void)o; (void)g;
}
static void feat4_masks(const float *xp, const float *cm, const float *K, const Geom *g, float *out, uint64_t *mk) {
  (void)xp; (void)cm; (void)K; (void)g; (void)out; (void)mk;
}
static void masked_wgrad4(const uint64_t *mk, long mw, const float *cf, const float *xs, long C, const Geom *g,
                          double *acc) {
  (void)mk; (void)mw; (void)cf; (void)xs; (void)C; (void)g; (void)acc;
}
#endif
static long mask_words(const Geom *g) { return (g->hi - g->lo + 15) / 16; }

// f[b, c, j] = mean_hw relu(K_j * x_bc) of one plane xs into fo (h values), with its ReLU masks into mk when
// given; xp and cm: the thread's padded plane and column mask. Returns 1 if the plane has a non-finite value.
static int features_plane(const float *restrict xs, const float *K, long h, const Geom *g, float *restrict xp,
                          const float *restrict cm, float *fo, uint64_t *mk) {
  const long n = g->n, s = g->Wp;
  const float inv = 1.0f / (float)n;
  int nf = 0;
#pragma omp simd reduction(| : nf)
  for (long i = 0; i < n; i++) nf |= !(fabsf(xs[i]) <= 3.4028234e38f);
  load_plane(xp, xs, g);
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

// f[b, c, j] = mean_hw relu(K_j * x_bc); masks (optional; only where mp_has_masks() and h == 4) keep the ReLU
// masks for mp_features_backward, mask_words(g) uint64 per plane. Returns 1 if x has a non-finite value: the
// training-time check rides on this pass, which reads x anyway. nhwc: x is channels-last (an image at a time,
// through C dense planes).
int mp_features(const float *x, long B, long C, long H, long W, const float *K, long h, float *f, uint64_t *masks,
                int nhwc, int nt) {
  Geom g = geom(H, W);
  const long n = g.n, mw = mask_words(&g);
  int bad = 0;
#pragma omp parallel num_threads(nt) reduction(| : bad)
  {
    float *ws = scratch(2 * g.PS + (nhwc ? (size_t)(C * n) : 0));
    float *restrict xp = plane(ws, &g, 0), *restrict cm = plane(ws, &g, 1), *restrict xi = ws + 2 * g.PS;
    colmask(cm, &g);
    if (nhwc) {
#pragma omp for schedule(dynamic, 1)
      for (long b = 0; b < B; b++) {
        image_to_planes(xi, n, x + b * C * n, C, n, NULL);
        for (long c = 0; c < C; c++) {
          const long bc = b * C + c;
          bad |= features_plane(xi + c * n, K, h, &g, xp, cm, f + bc * h, masks ? masks + bc * mw : NULL);
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
    float *ws = scratch((size_t)C * g.PS + (nhwc ? (size_t)(C * n) : 0));
    float *xs = plane(ws, &g, 0), *xi = ws + C * g.PS;
#pragma omp for schedule(dynamic, 1)
    for (long b = 0; b < B; b++) {
      double acc[36];
      const float *xb = x + b * C * n;
      if (nhwc) {
        image_to_planes(xi, n, xb, C, n, NULL);
        xb = xi;
      }
      for (long c = 0; c < C; c++) load_plane(xs + c * g.PS, xb + c * n, &g);
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
    const size_t image = nhwc ? (size_t)(2 * C * n) : 0;  // channels-last: C planes of x and C of dL/dx
    float *ws = scratch((4 + h) * g.PS + image);
    float *restrict xp = plane(ws, &g, 0), *restrict cm = plane(ws, &g, 1), *restrict o = plane(ws, &g, 2);
    int32_t *pat = (int32_t *)plane(ws, &g, 3);
    float *m = plane(ws, &g, 4), *xi = ws + (4 + h) * g.PS, *gi = xi + C * n;
    colmask(cm, &g);
    for (long j = 0; j < h; j++) zero_plane(m + j * g.PS, &g);
    memset(pat - GUARD, 0, sizeof(float) * g.PS);
    if (nhwc) {
#pragma omp for schedule(dynamic, 1)
      for (long b = 0; b < B; b++) {
        if (!masks) image_to_planes(xi, n, x + b * C * n, C, n, NULL);  // with masks, masked_kernel_grad read x
        for (long c = 0; c < C; c++) {
          const long bc = b * C + c;
          features_grad_plane(xi + c * n, masks ? masks + bc * mw : NULL, cf + bc * h, K, h, &g, xp, cm, pat, m, o,
                              gk ? gk + bc * h * 9 : NULL);
          expand(gi + c * n, o, &g);
        }
        planes_to_image(gx + b * C * n, gi, n, C, n, 1);
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
