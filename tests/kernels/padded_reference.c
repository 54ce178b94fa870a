// Test-only: the site's forward on the padded layout of common.c, the reference that mp_forward_stacked (what the
// sites run) is tested and timed against. Not in the shipped library: the tests build it with the shipped kernels
// as one translation unit (mp_hub.kernels.build.load_extended), so it uses the same helpers and flags.
#include "kernels.c"

void mp_forward(const float *x, float *y, long B, long C, long H, long W, const float *l1, const float *g1,
                const float *l2, const float *g2, const float *scale, float kappa, float clip, int relu, int mode,
                const float *eps, uint32_t k1, uint32_t k2, int nhwc, int nt);

static void compact(float *restrict dst, const float *restrict p, const Geom *g) {
  const long W = g->W, Wp = g->Wp;
  for (long i = 0; i < g->H; i++) {
#pragma omp simd
    for (long j = 0; j < W; j++) dst[i * W + j] = p[(i + 1) * Wp + 1 + j];
  }
}
// ---- the noise generator mu = CEO2(relu(CEO1(x))) on the padded layout, one image at a time ----
typedef struct {
  float *xp, *rp;  // C padded planes each: x, r = relu(CEO1(x))
  float *mx, *mr, *t, *o, *cm;
  float *mu, *eps;  // compact, H * W each
  uint32_t *words;  // random words for the noise of one plane
} Img;
static Img img_layout(const Geom *g, long C) {
  float *ws = scratch((size_t)(2 * C + 5) * g->PS + 2 * g->n + round16(g->n + 1) + 48);
  Img s;
  long i = 0;
  s.xp = plane(ws, g, i); i += C;
  s.rp = plane(ws, g, i); i += C;
  s.mx = plane(ws, g, i++); s.mr = plane(ws, g, i++); s.t = plane(ws, g, i++); s.o = plane(ws, g, i++);
  s.cm = plane(ws, g, i++);
  s.mu = ws + i * g->PS; s.eps = s.mu + g->n;
  s.words = (uint32_t *)(s.eps + g->n);
  colmask(s.cm, g);
  return s;
}

// xp, mx, rp, mr of one image, and t = gamma2 * mean_c(r), ready for ng_mu.
static void ng_phase1(const float *x, long C, const float *ng, Img *s, const Geom *g) {
  const float ic = 1.0f / (float)C;
  float *restrict mx = s->mx, *restrict mr = s->mr, *restrict cm = s->cm;
  zero_plane(mx, g);
  for (long c = 0; c < C; c++) {
    float *restrict xp = s->xp + c * g->PS;
    load_plane(xp, x + c * g->n, g);
#pragma omp simd
    for (long k = g->lo; k < g->hi; k++) mx[k] += xp[k];
  }
#pragma omp simd
  for (long k = g->lo; k < g->hi; k++) mx[k] *= ic;
  corr3(s->t, mx, ng + 9, 0, 0, 1.0f, g);  // gamma1 * mean_c(x)
  zero_plane(mr, g);
  const float *restrict t = s->t;
  const long st = g->Wp;
  LOADW(ng, 0, 1.0f)
  for (long c = 0; c < C; c++) {
    float *restrict rp = s->rp + c * g->PS;
    const float *restrict xp = s->xp + c * g->PS;
    zero_pads(rp, g);
#pragma omp simd
    for (long k = g->lo; k < g->hi; k++) {
      float a = t[k] + TAPS(xp, k, st);
      float r = cm[k] != 0.0f ? relu_keep_nan(a) : 0.0f;  // a select: a nan or inf on a pad column stays out
      rp[k] = r;
      mr[k] += r;
    }
  }
#pragma omp simd
  for (long k = g->lo; k < g->hi; k++) mr[k] *= ic;
  corr3(s->t, mr, ng + 27, 0, 0, 1.0f, g);  // gamma2 * mean_c(r)
}
static void ng_mu(long c, const float *ng, Img *s, const Geom *g) {  // mu of channel c -> s->mu (compact)
  float *restrict o = s->o;
  const float *restrict t = s->t, *restrict rp = s->rp + c * g->PS;
  const long st = g->Wp;
  LOADW(ng + 18, 0, 1.0f)
#pragma omp simd
  for (long k = g->lo; k < g->hi; k++) o[k] = t[k] + TAPS(rp, k, st);
  compact(s->mu, o, g);
}

// mp_forward_stacked's arguments and, bit for bit, its y; NCHW only (nhwc must be 0: the channels-last path is
// tested against the NCHW one).
void mp_forward(const float *x, float *y, long B, long C, long H, long W, const float *l1, const float *g1,
                const float *l2, const float *g2, const float *scale, float kappa, float clip, int relu, int mode,
                const float *eps, uint32_t k1, uint32_t k2, int nhwc, int nt) {
  if (nhwc) abort();
  float ng[36];
  gather_ng(ng, l1, g1, l2, g2);
  Geom g = geom(H, W);
  const long n = g.n;
  const Outputs out = {x, scale, eps, y, kappa, clip, relu, mode, k1, k2, C, n};
#pragma omp parallel num_threads(nt)
  {
    Img s = img_layout(&g, C);
#pragma omp for schedule(dynamic, 1)
    for (long b = 0; b < B; b++) {
      ng_phase1(x + b * C * n, C, ng, &s, &g);
      for (long c = 0; c < C; c++) {
        ng_mu(c, ng, &s, &g);
        plane_output(&out, b, c, s.mu, s.eps, s.words);
      }
    }
  }
}
