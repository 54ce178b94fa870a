"""C source of the per-plane output step, the per-channel scale (forward and backward), and the padded-layout
forward `mp_forward`: the reference that the stacked layout (`csrc_stacked`) is tested and timed against."""

SOURCE = r"""// ---- the noise generator mu = CEO2(relu(CEO1(x))), one image at a time ----
// ng = lambda1[9], gamma1[9], lambda2[9], gamma2[9]; CEO(x)_c = lambda * x_c + gamma * mean_c(x).
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

static void gather_ng(float *ng, const float *l1, const float *g1, const float *l2, const float *g2) {
  for (int d = 0; d < 9; d++) {
    ng[d] = l1[d]; ng[9 + d] = g1[d]; ng[18 + d] = l2[d]; ng[27 + d] = g2[d];
  }
}

// One output element: y = min(x ((s z - 1) kappa + 1), clip), z = softplus(mu + eps) or E[softplus(mu + eps)];
// with relu set, max(y, 0) as well: the ReLU that follows the site in a ResNet block, fused (see mp_hub.attach).
static inline float y_noise(float x, float mu, float e, float sc, float kappa, float clip, int relu) {
  float p = x * ((sc * softplus(mu + e) - 1.0f) * kappa + 1.0f);
  p = p > clip ? clip : p;
  return relu && p <= 0.0f ? 0.0f : p;  // a nan stays nan, as torch's relu
}
static inline float y_mean(float x, float mu, float sc, float kappa, float clip, int relu) {
  float gd, p = x * ((sc * esp(mu, &gd) - 1.0f) * kappa + 1.0f);
  p = p > clip ? clip : p;
  return relu && p <= 0.0f ? 0.0f : p;  // a nan stays nan, as torch's relu
}
// Its backward: returns dL/dmu, sets *gx = dL/dx (direct part) and *gsz = dL/ds_c contribution / kappa.
// The gradient passes where the clamp did not clip and, with relu, where the output is > 0 (as torch's ReLU).
static inline float g_elem(float x, float gy, float z, float dz, float sc, float kappa, float clip, int relu,
                           float *gx, float *gsz) {
  float mult = (sc * z - 1.0f) * kappa + 1.0f, p = x * mult;
  float gp = p <= clip && (!relu || p > 0.0f) ? gy : 0.0f, gm = gp * x;
  *gx = gp * mult;
  *gsz = gm * z;
  return gm * kappa * sc * dz;
}

// y of one plane from x, mu and the normals es (NULL: "mean" mode).
static void site_output(const float *restrict xs, const float *restrict mu, const float *restrict es,
                        float *restrict ys, long n, float sc, float kappa, float clip, int relu) {
  if (!es) {
    long i0 = 0;
#if defined(__AVX512F__)  // y_mean 16 lanes at a time, E[softplus] by register permutes (esp16)
    const __m512 vsc = _mm512_set1_ps(sc), vk = _mm512_set1_ps(kappa), vclip = _mm512_set1_ps(clip);
    const __m512 one = _mm512_set1_ps(1.0f), zero = _mm512_setzero_ps();
    EspTable tab;
    esp16_table(&tab);
    for (; i0 + 16 <= n; i0 += 16) {
      const __m512 mult = _mm512_fmadd_ps(_mm512_fmsub_ps(vsc, esp16(_mm512_loadu_ps(mu + i0), &tab), one), vk, one);
      __m512 p = _mm512_min_ps(vclip, _mm512_mul_ps(_mm512_loadu_ps(xs + i0), mult));  // clip < p ? clip : p
      if (relu) p = _mm512_maskz_mov_ps(_mm512_cmp_ps_mask(p, zero, _CMP_NLE_UQ), p);  // keeps p > 0 and nan
      _mm512_storeu_ps(ys + i0, p);
    }
#endif
#pragma omp simd
    for (long i = i0; i < n; i++) ys[i] = y_mean(xs[i], mu[i], sc, kappa, clip, relu);
  } else {
#pragma omp simd
    for (long i = 0; i < n; i++) ys[i] = y_noise(xs[i], mu[i], es[i], sc, kappa, clip, relu);
  }
}
// What the forwards' per-plane step needs besides mu: their arguments, gathered once.
typedef struct {
  const float *x, *scale, *eps;
  float *y;
  float kappa, clip;
  int relu, mode;
  uint32_t k1, k2;
  long C, n;
} Outputs;
// Plane (b, c): its noise (given, drawn into eps_buf with words, or none in "mean" mode), then site_output.
static void plane_output(const Outputs *o, long b, long c, const float *mu, float *eps_buf, uint32_t *words) {
  const long off = (b * o->C + c) * o->n;
  const float *es = NULL;
  if (o->mode != 2) {
    es = o->eps ? o->eps + off : eps_buf;
    if (!o->eps) normals(eps_buf, words, o->n, (uint32_t)(b * o->C + c), o->k1, o->k2);
  }
  site_output(o->x + off, mu, es, o->y + off, o->n, o->scale[c], o->kappa, o->clip, o->relu);
}

// mode: 0 = eps given, 1 = counter-based normal draws (keys k1, k2), 2 = "mean" (z = E[softplus(mu + eps)]).
// l1, g1, l2, g2: lambda1, gamma1, lambda2, gamma2 (9 values each).
// This padded-layout forward is the reference that mp_forward_stacked (csrc_stacked, what the sites run) is
// tested and timed against: the same y, bitwise, in less time.
void mp_forward(const float *x, float *y, long B, long C, long H, long W, const float *l1, const float *g1,
                const float *l2, const float *g2, const float *scale, float kappa, float clip, int relu, int mode,
                const float *eps, uint32_t k1, uint32_t k2, int nt) {
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

// ---- the per-channel scale, tiny (C x h) math kept here to save ~30 small torch ops per site and step ----
// s_c = sigmoid(w . [mean_c, var_c, size_c, size_h]). With f (B*C*h features): mean and unbiased variance over
// the batch, and the running statistics updated in place like the reference (momentum; the variance multiplied
// by B / (B - 1) once more). Without f: the running statistics. mean and var receive the statistics used.
void mp_scale_forward(const float *f, long B, long C, long h, const float *w, float *rmean, float *rvar,
                      float momentum, float size_c, float size_h, float *scale, float *mean, float *var) {
  const long ch = C * h;
  double *sum = NULL, *sq = NULL;
  if (f) {  // the batch sums, b outermost: f is read in its own order (not with a stride of C*h floats), and
            // every sum still adds its terms in the order b = 0, 1, ...
    sum = (double *)calloc((size_t)(2 * ch), sizeof(double));
    sq = sum + ch;
    for (long b = 0; b < B; b++) {
      const float *fb = f + b * ch;
#pragma omp simd
      for (long i = 0; i < ch; i++) sum[i] += fb[i];
    }
    for (long i = 0; i < ch; i++) sum[i] /= (double)B;  // now the batch mean
    for (long b = 0; b < B; b++) {
      const float *fb = f + b * ch;
#pragma omp simd
      for (long i = 0; i < ch; i++) sq[i] += (fb[i] - sum[i]) * (fb[i] - sum[i]);
    }
  }
  for (long c = 0; c < C; c++) {
    double logit = (double)w[2 * h] * size_c + (double)w[2 * h + 1] * size_h;
    for (long j = 0; j < h; j++) {
      const long i = c * h + j;
      float m, v;
      if (f) {
        m = (float)sum[i];
        v = (float)(sq[i] / (double)(B - 1));
        rmean[i] = rmean[i] * (1.0f - momentum) + m * momentum;
        rvar[i] = rvar[i] * (1.0f - momentum) + v * ((float)B / (float)(B - 1)) * momentum;
      } else {
        m = rmean[i];
        v = rvar[i];
      }
      mean[i] = m;
      var[i] = v;
      logit += (double)w[j] * m + (double)w[h + j] * v;
    }
    scale[c] = (float)(1.0 / (1.0 + exp(-logit)));
  }
  free(sum);
}

// From gs = dL/ds: gw (2h + 2, optional) = dL/dw, and cf (B*C*h, optional, needs f) = dL/df / hw, the input
// of mp_features_backward (through the batch mean and unbiased variance of the features).
void mp_scale_backward(const float *gs, long B, long C, long h, const float *scale, const float *mean,
                       const float *var, const float *f, const float *w, float size_c, float size_h, long hw,
                       float *gw, float *cf) {
  const long ch = C * h;
  double acc[66] = {0};  // 2h + 2 <= 66 (h <= 32, checked by the caller)
  double *gm = cf ? (double *)malloc(sizeof(double) * (size_t)(2 * ch)) : NULL, *gv = gm ? gm + ch : NULL;
  for (long c = 0; c < C; c++) {
    const double gl = (double)gs[c] * scale[c] * (1.0 - scale[c]);  // through the sigmoid
    for (long j = 0; j < h; j++) {
      const long i = c * h + j;
      acc[j] += gl * mean[i];
      acc[h + j] += gl * var[i];
      if (cf) {
        gm[i] = gl * w[j] / (double)B;
        gv[i] = gl * w[h + j] * 2.0 / (double)(B - 1);
      }
    }
    acc[2 * h] += gl * size_c;
    acc[2 * h + 1] += gl * size_h;
  }
  if (cf)  // b outermost: cf and f in their own order
    for (long b = 0; b < B; b++) {
      const float *fb = f + b * ch;
      float *cb = cf + b * ch;
#pragma omp simd
      for (long i = 0; i < ch; i++) cb[i] = (float)((gm[i] + gv[i] * ((double)fb[i] - mean[i])) / (double)hw);
    }
  free(gm);
  if (gw)
    for (long j = 0; j < 2 * h + 2; j++) gw[j] = (float)acc[j];
}
"""
