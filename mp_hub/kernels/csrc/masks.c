// Part of kernels.c: the scale features' ReLU masks kept as bits (one uint64 per 16 flat positions of a padded
// plane, 16 bits per kernel: an eighth of x), so that their backward does not recompute the 4 stencils:
// feat4_masks makes the features and the masks, masked_wgrad4 and masked_transpose4 use them. With AVX-512 or
// AVX2; elsewhere mp_has_masks() is 0 and features.c recomputes the masks instead.
#ifdef __AVX512F__
// AVX-512: a mask register per kernel and 16 positions, the FMAs of the kernels' gradient masked by it.
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
  const long off[9] = {-s - 1, -s, -s + 1, -1, 0, 1, s - 1, s, s + 1};
  const __m256 zero = _mm256_setzero_ps();
  __m256 acc[4] = {zero, zero, zero, zero};
  for (long b = 0; b < nb; b++) {
    const long k = g->lo + 16 * b;
    // both halves' 4 kernels, tap by tap (a weight broadcast serves 16 positions); each kernel's sum keeps the
    // order w0 p0, then d = 1..8, so the features and masks are those of a kernel at a time
    __m256 u[2][4];
    for (int h = 0; h < 2; h++) {
      const __m256 p0 = _mm256_loadu_ps(xp + k + 8 * h + off[0]);
      for (int j = 0; j < 4; j++) u[h][j] = _mm256_mul_ps(_mm256_set1_ps(K[9 * j]), p0);
    }
    for (int d = 1; d < 9; d++) {
      const __m256 pa = _mm256_loadu_ps(xp + k + off[d]), pb = _mm256_loadu_ps(xp + k + 8 + off[d]);
      for (int j = 0; j < 4; j++) {
        const __m256 w = _mm256_set1_ps(K[9 * j + d]);
        u[0][j] = _mm256_fmadd_ps(w, pa, u[0][j]);
        u[1][j] = _mm256_fmadd_ps(w, pb, u[1][j]);
      }
    }
    uint64_t bits = 0;
    for (int h = 0; h < 2; h++) {
      const __m256 real = _mm256_cmp_ps(_mm256_loadu_ps(cm + k + 8 * h), zero, _CMP_NEQ_OQ);
      for (int j = 0; j < 4; j++) {
        const __m256 pos = _mm256_and_ps(_mm256_cmp_ps(u[h][j], zero, _CMP_GT_OQ), real);
        acc[j] = _mm256_add_ps(acc[j], _mm256_and_ps(pos, u[h][j]));
        bits |= (uint64_t)(uint32_t)_mm256_movemask_ps(pos) << (16 * j + 8 * h);
      }
    }
    mk[b] = bits;
  }
  for (int j = 0; j < 4; j++) out[j] = sum8(acc[j]);
}
// One kernel at a time (9 accumulators: AVX2 has 16 registers, not the 32 that hold two kernels' 18); outside a
// mask the coefficient is zeroed, where the AVX-512 masked FMAs skip the position: the same terms, since x is
// finite wherever masks were kept (mp_features refuses a non-finite x in training, the only time it keeps them).
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
// As the AVX-512 version: the same table, built by the same FMAs, and the same sum over d, the float operations
// of that path; a lookup is a permute of each half of the table and a blend on bit 3 of the pattern.
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
