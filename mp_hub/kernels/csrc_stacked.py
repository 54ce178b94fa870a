"""C source of the site's forward on the "stacked" layout: every site forward, in inference and in training.

The padded layout of `csrc_common` gives each (H, W) plane its own zero border (row stride W + 2). For the
forward alone that costs, per plane: a row-by-row copy into the padded layout, clearing its border, and a
compaction of μ back to (H, W), all loops of W elements, which at ResNet-20's third stage (8×8 planes) cost as
much as the arithmetic. Here one image's C planes lie one after another in their own layout (row stride W),
with a zero row between two planes and around them; a 3×3 stencil reads the zero rows at the top and bottom
of a plane, and its left and right taps are masked at the first and last column. Every loop then runs over a
whole plane (H·W elements), μ comes out in the layout of x and y, and the copy of x is one contiguous loop
that also sums the mean over channels.

The stencils add the taps in the padded layout's order, the masked taps reading an exact zero, so both layouts
give the same output bit for bit (tests/test_site_fast.py). `benchmarks/inference.py` times the two side by
side at ResNet-20's three stage shapes. `mp_backward_saved` (csrc_saved) runs on this layout too, from what
this forward saves for it: μ + ε and the CEO1 ReLU masks as bits in flat plane order. The backward that
recomputes from x (`mp_backward`, φ trainable) and the scale features keep the padded layout.
"""

SOURCE = r"""// ---- forward, stacked layout: plane c of an image at c * (n + W), zero rows between and around ----
static inline float and_f(float v, uint32_t m) { return f_as(u_as(v) & m); }
// The 3x3 stencil at flat k of a stacked plane p (row stride w): the taps left of column 0 and right of column
// W - 1 fall on the neighbouring row and are masked to zero (ml, mr: all ones or zero per position; an AND, not a
// product, so a non-finite value next door cannot leak in as 0 * inf). The sum runs in the order of TAPS, tap
// by tap, so the result is bitwise that of the padded layout (where those taps read a zero pad).
#define TAPS_M(p, k, w, ml, mr)                                                                                  \
  (v0 * and_f(p[k - w - 1], ml[k]) + v1 * p[k - w] + v2 * and_f(p[k - w + 1], mr[k]) + v3 * and_f(p[k - 1], ml[k]) + \
   v4 * p[k] + v5 * and_f(p[k + 1], mr[k]) + v6 * and_f(p[k + w - 1], ml[k]) + v7 * p[k + w] +                    \
   v8 * and_f(p[k + w + 1], mr[k]))

typedef struct {
  float *xs, *rs, *mx, *mr;  // C stacked planes of x and of r = relu(CEO1(x)); the two channel means (1 plane)
  float *t, *mu, *eps;       // t = gamma * mean_c(.), mu of one channel, the normals of one plane
  uint32_t *words, *ml, *mrk;
} Stack;
static Stack stack_layout(long C, long H, long W) {
  const long n = H * W, lead = round16(W + 1), sp = n + W;  // lead: room for the taps above the first row
  const size_t planes = (size_t)(lead + C * sp + W + 16), single = (size_t)(lead + sp + W + 16);
  const size_t total = 2 * planes + 2 * single + 3 * (size_t)round16(n) + (size_t)round16(n + 1) + 32 +
                       2 * (size_t)round16(n);
  float *ws = scratch(total);
  memset(ws, 0, sizeof(float) * total);  // the zero rows: only plane interiors are written below
  Stack s;
  s.xs = ws + lead; s.rs = ws + planes + lead;
  s.mx = ws + 2 * planes + lead; s.mr = ws + 2 * planes + single + lead;
  s.t = ws + 2 * planes + 2 * single; s.mu = s.t + round16(n); s.eps = s.mu + round16(n);
  s.words = (uint32_t *)(s.eps + round16(n));
  s.ml = s.words + round16(n + 1) + 32; s.mrk = s.ml + round16(n);
  for (long k = 0; k < n; k++) {
    s.ml[k] = k % W != 0 ? 0xffffffffu : 0u;
    s.mrk[k] = k % W != W - 1 ? 0xffffffffu : 0u;
  }
  return s;
}
// t = gamma * m, with m (one stacked plane) first divided by C: the CEO's mean over channels.
static void mean_term(float *restrict t, float *restrict m, const float *w, float ic, const Stack *s, long n,
                      long W) {
  const uint32_t *restrict ml = s->ml, *restrict mrk = s->mrk;
#pragma omp simd
  for (long k = 0; k < n; k++) m[k] *= ic;
  LOADW(w, 0, 1.0f)
#pragma omp simd
  for (long k = 0; k < n; k++) t[k] = TAPS_M(m, k, W, ml, mrk);
}

#if defined(__AVX512F__)
// The CEO1 ReLU masks rp > 0 of one stacked plane (n values) as bits, 16 positions a word, in flat order; the bits
// past n in the last word are 0. mp_backward_saved unpacks them with unpack_plane_mask.
static void pack_plane_positive(const float *restrict rp, long n, uint16_t *restrict out) {
  for (long j = 0; 16 * j < n; j++) {
    const __mmask16 live = n - 16 * j >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (n - 16 * j)) - 1u);
    out[j] = (uint16_t)_mm512_mask_cmp_ps_mask(live, _mm512_maskz_loadu_ps(live, rp + 16 * j), _mm512_setzero_ps(),
                                               _CMP_GT_OQ);
  }
}
static void unpack_plane_mask(const uint16_t *restrict in, long n, float *restrict m) {  // m: round16(n) floats
  const __m512 one = _mm512_set1_ps(1.0f);
  for (long j = 0; 16 * j < n; j++) _mm512_storeu_ps(m + 16 * j, _mm512_maskz_mov_ps((__mmask16)in[j], one));
}
#else
static void pack_plane_positive(const float *rp, long n, uint16_t *out) { (void)rp; (void)n; (void)out; }
static void unpack_plane_mask(const uint16_t *in, long n, float *m) { (void)in; (void)n; (void)m; }
#endif

// One image: xs, rs and t = gamma2 * mean_c(r), ready for stacked_mu (as ng_phase1 for the padded layout);
// rbits (optional, AVX-512): the CEO1 ReLU masks, plane after plane (pack_plane_positive).
static void stacked_phase1(const float *xb, long C, long H, long W, const float *ng, const Stack *s,
                           uint16_t *rbits) {
  const long n = H * W;
  const long sp = n + W;
  const uint32_t *restrict ml = s->ml, *restrict mrk = s->mrk;
  float *restrict mx = s->mx, *restrict mr = s->mr, *restrict t = s->t;
  memset(mx, 0, sizeof(float) * (size_t)n);
  for (long c = 0; c < C; c++) {  // copy x into the stacked planes and sum the channels in the same loop
    const float *restrict src = xb + c * n;
    float *restrict dst = s->xs + c * sp;
#pragma omp simd
    for (long k = 0; k < n; k++) {
      const float v = src[k];
      dst[k] = v;
      mx[k] += v;
    }
  }
  mean_term(t, mx, ng + 9, 1.0f / (float)C, s, n, W);  // gamma1 * mean_c(x)
  memset(mr, 0, sizeof(float) * (size_t)n);
  LOADW(ng, 0, 1.0f)
  for (long c = 0; c < C; c++) {
    const float *restrict xp = s->xs + c * sp;
    float *restrict rp = s->rs + c * sp;
#pragma omp simd
    for (long k = 0; k < n; k++) {
      const float r = RELU(t[k] + TAPS_M(xp, k, W, ml, mrk));
      rp[k] = r;
      mr[k] += r;
    }
    if (rbits) pack_plane_positive(rp, n, rbits + c * ((n + 15) / 16));
  }
  mean_term(t, mr, ng + 27, 1.0f / (float)C, s, n, W);  // gamma2 * mean_c(r)
}
static void stacked_mu(long c, long n, long W, const float *ng, const Stack *s) {  // mu of channel c -> s->mu
  const uint32_t *restrict ml = s->ml, *restrict mrk = s->mrk;
  const float *restrict rp = s->rs + c * (n + W), *restrict t = s->t;
  float *restrict mu = s->mu;
  LOADW(ng + 18, 0, 1.0f)
#pragma omp simd
  for (long k = 0; k < n; k++) mu[k] = t[k] + TAPS_M(rp, k, W, ml, mrk);
}

// mp_forward on the stacked layout: the same y and a_out bit for bit; rbits (optional, mp_has_masks()): the CEO1
// ReLU masks, (H W + 15) / 16 words a plane, for mp_backward_saved.
void mp_forward_stacked(const float *x, float *y, long B, long C, long H, long W, const float *l1, const float *g1,
                        const float *l2, const float *g2, const float *scale, float kappa, float clip, int relu,
                        int mode, const float *eps, uint32_t k1, uint32_t k2, float *a_out, uint16_t *rbits,
                        int nt) {
  float ng[36];
  gather_ng(ng, l1, g1, l2, g2);
  const long n = H * W;
  const Outputs out = {x, scale, eps, y, a_out, kappa, clip, relu, mode, k1, k2, C, n};
#pragma omp parallel num_threads(nt)
  {
    Stack s = stack_layout(C, H, W);
#pragma omp for schedule(dynamic, 1)
    for (long b = 0; b < B; b++) {
      stacked_phase1(x + b * C * n, C, H, W, ng, &s, rbits ? rbits + b * C * ((n + 15) / 16) : NULL);
      for (long c = 0; c < C; c++) {
        stacked_mu(c, n, W, ng, &s);
        plane_output(&out, b, c, s.mu, s.eps, s.words);
      }
    }
  }
}
"""
