// Part of kernels.c: the per-plane output step that both directions of stacked.c share, and the per-channel
// scale (forward and backward).
// ng = lambda1[9], gamma1[9], lambda2[9], gamma2[9]; CEO(x)_c = lambda * x_c + gamma * mean_c(x).
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

// y of one plane from x, mu and the normals es (NULL: "mean" mode). noinline: the tests' padded reference forward
// calls it too, so mp_forward_stacked compiles to the same code in the shipped library and in the tests' one.
__attribute__((noinline)) static void site_output(const float *restrict xs, const float *restrict mu, const float *restrict es,
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
