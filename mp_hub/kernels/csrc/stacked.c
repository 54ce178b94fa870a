// Part of kernels.c: the site's noise generator mu = CEO2(relu(CEO1(x))) on the "stacked" layout, forward and
// backward. One image's C planes lie one after another in their own layout (row stride W), with a zero row between
// two planes and around them; a 3x3 stencil reads the zero rows at the top and bottom of a plane, and its left and
// right taps are masked at the first and last column. Every loop then runs over a whole plane (H * W elements), mu
// comes out in the layout of x and y, and the copy of x is one contiguous loop that also sums the channel mean;
// the padded layout of common.c would add, per plane, a row-by-row copy, clearing its border and a compaction of
// mu, loops of W elements that cost as much as the arithmetic at 8x8 planes.
// The stencils add the taps in the padded layout's order, the masked taps reading an exact zero, so the output is
// bit for bit that of a padded-layout forward (tests/kernels/padded_reference.c, tests/test_site_fast.py).
// mp_backward's dL/dphi sums its terms in another order than on the padded layout: equal to float32 rounding.
// ---- forward: plane c of an image at c * (n + W), zero rows between and around ----
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
  float *gm, *ga, *s2, *s1;  // backward only: C planes of dL/dmu and of dL/dCEO1, and their channel sums
  float *t, *mu, *eps;       // t = gamma * mean_c(.), mu of one channel, the normals of one plane
  uint32_t *words, *ml, *mrk;
  uint32_t *mlc, *mrc;       // weight gradients only: ml and mrk over all C planes (each starts at a multiple of W)
  float *yi, *gyi, *gxi;     // channels-last only: an image's C planes of y (forward), of dL/dy and of dL/dx,
  long ips;                  // ips floats apart (nhwc_plane_stride)
} Stack;
// bwd: room for the backward's planes; weights: also the masks over all C planes (the weight gradients); nhwc:
// the dense planes that channels-last tensors go through
static Stack stack_layout(long C, long H, long W, int bwd, int weights, int nhwc) {
  const long n = H * W, lead = round16(W + 1), sp = n + W;  // lead: room for the taps above the first row
  const size_t planes = (size_t)(lead + C * sp + W + 16), single = (size_t)(lead + sp + W + 16);
  const size_t blocks = bwd ? 4 : 2;  // of C planes, and as many single planes
  const size_t whole = weights ? (size_t)round16(C * sp) : 0;
  const size_t total = blocks * (planes + single) + 3 * (size_t)round16(n) + (size_t)round16(n + 1) + 32 +
                       2 * (size_t)round16(n) + 2 * whole + (nhwc ? (bwd ? 2 : 1) * (size_t)(C * nhwc_plane_stride(n)) : 0);
  float *ws = scratch(total);
  memset(ws, 0, sizeof(float) * total);  // the zero rows: only plane interiors are written below
  Stack s;
  s.xs = ws + lead; s.rs = ws + planes + lead;
  s.mx = ws + blocks * planes + lead; s.mr = ws + blocks * planes + single + lead;
  s.gm = bwd ? ws + 2 * planes + lead : NULL; s.ga = bwd ? ws + 3 * planes + lead : NULL;
  s.s2 = bwd ? ws + blocks * planes + 2 * single + lead : NULL;
  s.s1 = bwd ? ws + blocks * planes + 3 * single + lead : NULL;
  s.t = ws + blocks * (planes + single); s.mu = s.t + round16(n); s.eps = s.mu + round16(n);
  s.words = (uint32_t *)(s.eps + round16(n));
  s.ml = s.words + round16(n + 1) + 32; s.mrk = s.ml + round16(n);
  for (long k = 0; k < n; k++) {
    s.ml[k] = k % W != 0 ? 0xffffffffu : 0u;
    s.mrk[k] = k % W != W - 1 ? 0xffffffffu : 0u;
  }
  s.mlc = weights ? s.mrk + round16(n) : NULL; s.mrc = weights ? s.mlc + whole : NULL;
  float *image = (float *)(s.mrk + round16(n) + 2 * whole);  // after the masks
  s.yi = nhwc && !bwd ? image : NULL;
  s.ips = nhwc_plane_stride(n);
  s.gyi = nhwc && bwd ? image : NULL; s.gxi = nhwc && bwd ? image + C * s.ips : NULL;
  if (weights)  // the plane's pattern, then its zero row (whose masks do not matter), C times
    for (long c = 0; c < C; c++) {
      memcpy(s.mlc + c * sp, s.ml, sizeof(uint32_t) * (size_t)n);
      memcpy(s.mrc + c * sp, s.mrk, sizeof(uint32_t) * (size_t)n);
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

// One image: xs, rs and t = gamma2 * mean_c(r), ready for stacked_mu. nhwc: xb is channels-last.
static void stacked_phase1(const float *xb, long C, long H, long W, const float *ng, const Stack *s, int nhwc) {
  const long n = H * W;
  const long sp = n + W;
  const uint32_t *restrict ml = s->ml, *restrict mrk = s->mrk;
  float *restrict mx = s->mx, *restrict mr = s->mr, *restrict t = s->t;
  if (nhwc) {  // x's planes into the stacked ones, the channels summed on the way in the order of the loop below
    image_to_planes(s->xs, sp, xb, C, n, mx);
  } else {
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
  }
  mean_term(t, mx, ng + 9, 1.0f / (float)C, s, n, W);  // gamma1 * mean_c(x)
  memset(mr, 0, sizeof(float) * (size_t)n);
  LOADW(ng, 0, 1.0f)
  for (long c = 0; c < C; c++) {
    const float *restrict xp = s->xs + c * sp;
    float *restrict rp = s->rs + c * sp;
#pragma omp simd
    for (long k = 0; k < n; k++) {
      const float r = relu_keep_nan(t[k] + TAPS_M(xp, k, W, ml, mrk));
      rp[k] = r;
      mr[k] += r;
    }
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

// plane_output for channels-last x and y: x from its stacked copy, y into the image's planes s->yi. The noise is
// drawn (or read, eps being dense NCHW whatever the layout of x) for plane (b, c) as in the NCHW case: the same y.
static void plane_output_nhwc(const Outputs *o, long b, long c, long W, const Stack *s) {
  const float *es = NULL;
  if (o->mode != 2) {
    es = o->eps ? o->eps + (b * o->C + c) * o->n : s->eps;
    if (!o->eps) normals(s->eps, s->words, o->n, (uint32_t)(b * o->C + c), o->k1, o->k2);
  }
  site_output(s->xs + c * (o->n + W), s->mu, es, s->yi + c * s->ips, o->n, o->scale[c], o->kappa, o->clip, o->relu);
}

// y = the site's output. mode: 0 = eps given, 1 = counter-based normal draws (keys k1, k2), 2 = "mean"
// (z = E[softplus(mu + eps)]). l1, g1, l2, g2: lambda1, gamma1, lambda2, gamma2 (9 values each). nhwc: x and y
// are channels-last.
void mp_forward_stacked(const float *x, float *y, long B, long C, long H, long W, const float *l1, const float *g1,
                        const float *l2, const float *g2, const float *scale, float kappa, float clip, int relu,
                        int mode, const float *eps, uint32_t k1, uint32_t k2, int nhwc, int nt) {
  float ng[36];
  gather_ng(ng, l1, g1, l2, g2);
  const long n = H * W;
  const Outputs out = {x, scale, eps, y, kappa, clip, relu, mode, k1, k2, C, n};
#pragma omp parallel num_threads(nt)
  {
    Stack s = stack_layout(C, H, W, 0, 0, nhwc);
#pragma omp for schedule(dynamic, 1)
    for (long b = 0; b < B; b++) {
      stacked_phase1(x + b * C * n, C, H, W, ng, &s, nhwc);
      for (long c = 0; c < C; c++) {
        stacked_mu(c, n, W, ng, &s);
        if (nhwc)
          plane_output_nhwc(&out, b, c, W, &s);
        else
          plane_output(&out, b, c, s.mu, s.eps, s.words);
      }
      if (nhwc) planes_to_image(y + b * C * n, s.yi, s.ips, C, n);
    }
  }
}

// ---- backward helpers ----
// acc[d] += sum_k a[k] p[k + delta_d] over n positions of stacked planes, the taps across a row edge masked
// (ml, mr: s->ml and s->mrk for one plane, s->mlc and s->mrc for all C): corr3's weight gradient (the padded
// layout's wgrad3). Over all C planes at once the zero rows between them, where a is 0, add nothing, and the
// 9 sums are reduced once per image instead of once per plane (which at 8x8 planes cost more than the sums).
static void wgrad3_stacked(double *acc, const float *restrict a, const float *restrict p, long n, long W,
                           const uint32_t *restrict ml, const uint32_t *restrict mr) {
  float t0 = 0.0f, t1 = 0.0f, t2 = 0.0f, t3 = 0.0f, t4 = 0.0f, t5 = 0.0f, t6 = 0.0f, t7 = 0.0f, t8 = 0.0f;
#pragma omp simd reduction(+ : t0, t1, t2, t3, t4, t5, t6, t7, t8)
  for (long k = 0; k < n; k++) {
    const float v = a[k];
    t0 += v * and_f(p[k - W - 1], ml[k]); t1 += v * p[k - W]; t2 += v * and_f(p[k - W + 1], mr[k]);
    t3 += v * and_f(p[k - 1], ml[k]); t4 += v * p[k]; t5 += v * and_f(p[k + 1], mr[k]);
    t6 += v * and_f(p[k + W - 1], ml[k]); t7 += v * p[k + W]; t8 += v * and_f(p[k + W + 1], mr[k]);
  }
  acc[0] += t0; acc[1] += t1; acc[2] += t2; acc[3] += t3; acc[4] += t4;
  acc[5] += t5; acc[6] += t6; acc[7] += t7; acc[8] += t8;
}
// t = (w^T * m) / C: the transposed stencil of a CEO's mean term (dL/d mean_c), with the 1/C in the weights as
// the padded layout's corr3(..., flip, scale 1/C) has it.
static void mean_term_transposed(float *restrict t, const float *restrict m, const float *w, float ic,
                                 const Stack *s, long n, long W) {
  const uint32_t *restrict ml = s->ml, *restrict mrk = s->mrk;
  LOADW(w, 1, ic)
#pragma omp simd
  for (long k = 0; k < n; k++) t[k] = TAPS_M(m, k, W, ml, mrk);
}
// dL/dCEO1 of the C planes (ga = r_c > 0 ? t + lambda2^T * gm_c : 0, s1 = their sum), t = gamma2^T * mean(gm) / C.
static void stacked_ceo1_grad(const float *ng, const Stack *s, long C, long n, long W) {
  const uint32_t *restrict ml = s->ml, *restrict mrk = s->mrk;
  const long sp = n + W;
  float *restrict t = s->t, *restrict s1 = s->s1;
  mean_term_transposed(t, s->s2, ng + 27, 1.0f / (float)C, s, n, W);
  memset(s1, 0, sizeof(float) * (size_t)n);
  LOADW(ng + 18, 1, 1.0f)
  for (long c = 0; c < C; c++) {
    const float *restrict gmp = s->gm + c * sp, *restrict rp = s->rs + c * sp;
    float *restrict ga = s->ga + c * sp;
#pragma omp simd
    for (long k = 0; k < n; k++) {
      const float v = rp[k] > 0.0f ? t[k] + TAPS_M(gmp, k, W, ml, mrk) : 0.0f;
      ga[k] = v;
      s1[k] += v;
    }
  }
}
// gx_b (planes gps floats apart) += CEO1^T of the C planes ga: lambda1^T * ga_c + gamma1^T * mean_c(ga), from
// s1 = sum_c ga_c.
static void stacked_ceo1_transpose_add(float *gx_b, long gps, const float *ng, const Stack *s, long C, long n,
                                       long W) {
  const uint32_t *restrict ml = s->ml, *restrict mrk = s->mrk;
  float *restrict t = s->t;
  mean_term_transposed(t, s->s1, ng + 9, 1.0f / (float)C, s, n, W);
  LOADW(ng, 1, 1.0f)
  for (long c = 0; c < C; c++) {
    const float *restrict ga = s->ga + c * (n + W);
    float *restrict gxs = gx_b + c * gps;
#pragma omp simd
    for (long k = 0; k < n; k++) gxs[k] += t[k] + TAPS_M(ga, k, W, ml, mrk);
  }
}

// Backward from x: mu and the noise are recomputed rather than kept (keeping them, as an earlier version did
// for frozen φ, saved no time once this backward ran on the stacked layout); gng_out (optional, 36 floats)
// receives dL/d(lambda1, gamma1, lambda2, gamma2). nhwc: x, gy and gx are channels-last (an image at a time, through
// C planes of each).
void mp_backward(const float *x, const float *gy, float *gx, long B, long C, long H, long W, const float *l1,
                 const float *g1, const float *l2, const float *g2, const float *scale, float kappa, float clip,
                 int relu, int mode, const float *eps, uint32_t k1, uint32_t k2, float *gs_out, float *gng_out,
                 int nhwc, int nt) {
  float ng[36];
  gather_ng(ng, l1, g1, l2, g2);
  float *gs = (float *)malloc(sizeof(float) * (size_t)(B * C));
  float *gng = gng_out ? (float *)malloc(sizeof(float) * (size_t)(B * 36)) : NULL;
  const long n = H * W, sp = n + W;
#pragma omp parallel num_threads(nt)
  {
    Stack s = stack_layout(C, H, W, 1, gng != NULL, nhwc);
#pragma omp for schedule(dynamic, 1)
    for (long b = 0; b < B; b++) {
      double acc[36] = {0};
      float *gx_b = nhwc ? s.gxi : gx + b * C * n;
      const long gps = nhwc ? s.ips : n;  // gx_b's plane stride
      stacked_phase1(x + b * C * n, C, H, W, ng, &s, nhwc);
      if (nhwc) image_to_planes(s.gyi, s.ips, gy + b * C * n, C, n, NULL);
      memset(s.s2, 0, sizeof(float) * (size_t)n);
      for (long c = 0; c < C; c++) {
        stacked_mu(c, n, W, ng, &s);
        const long off = (b * C + c) * n;
        const float *restrict xs = nhwc ? s.xs + c * sp : x + off, *restrict gys = nhwc ? s.gyi + c * s.ips : gy + off;
        const float *restrict mu = s.mu;
        float *restrict gxs = gx_b + c * gps, *restrict gmu = s.gm + c * sp, *restrict s2 = s.s2;
        const float sc = scale[c];
        float gsum = 0.0f, dz, gxv, gsz;
        if (mode == 2) {
#pragma omp simd private(dz, gxv, gsz) reduction(+ : gsum)
          for (long i = 0; i < n; i++) {
            float z = esp(mu[i], &dz);
            gmu[i] = g_elem(xs[i], gys[i], z, dz, sc, kappa, clip, relu, &gxv, &gsz);
            gxs[i] = gxv;
            gsum += gsz;
          }
        } else {
          const float *restrict es = eps ? eps + off : s.eps;
          if (!eps) normals(s.eps, s.words, n, (uint32_t)(b * C + c), k1, k2);
#pragma omp simd private(dz, gxv, gsz) reduction(+ : gsum)
          for (long i = 0; i < n; i++) {
            float z = softplus_d(mu[i] + es[i], &dz);
            gmu[i] = g_elem(xs[i], gys[i], z, dz, sc, kappa, clip, relu, &gxv, &gsz);
            gxs[i] = gxv;
            gsum += gsz;
          }
        }
#pragma omp simd
        for (long k = 0; k < n; k++) s2[k] += gmu[k];
        gs[b * C + c] = gsum * kappa;
      }
      if (gng) {
        wgrad3_stacked(acc + 18, s.gm, s.rs, C * sp - W, W, s.mlc, s.mrc);
        wgrad3_stacked(acc + 27, s.s2, s.mr, n, W, s.ml, s.mrk);
      }
      stacked_ceo1_grad(ng, &s, C, n, W);
      if (gng) {
        wgrad3_stacked(acc, s.ga, s.xs, C * sp - W, W, s.mlc, s.mrc);
        wgrad3_stacked(acc + 9, s.s1, s.mx, n, W, s.ml, s.mrk);
      }
      stacked_ceo1_transpose_add(gx_b, gps, ng, &s, C, n, W);
      if (nhwc) planes_to_image(gx + b * C * n, gx_b, s.ips, C, n);
      if (gng)
        for (int d = 0; d < 36; d++) gng[b * 36 + d] = (float)acc[d];
    }
  }
  sum_rows(gs_out, gs, B, C);
  if (gng) sum_rows(gng_out, gng, B, 36);
  free(gs);
  free(gng);
}
