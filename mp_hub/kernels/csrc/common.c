// Part of kernels.c: the padded layout, the 3x3 stencils, vectorisable math, the noise generator.
// The padded layout (here; the scale features use it): each (H, W) plane is copied into a zero-padded flat layout
// (row stride Wp = W + 2) so that a 3x3 stencil is 9 shifted reads of one contiguous range and vectorises
// whatever W is; results on the pad columns are junk and are cleared with a column mask (cm) before they feed
// another stencil or a reduction. The sites' noise generator runs on the stacked layout of stacked.c instead.
#if defined(__AVX512F__) || defined(__AVX2__) || defined(__VAES__)
#include <immintrin.h>
#endif
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "mp_kernels.h"

#define GUARD 32

int mp_abi_version(void) { return MP_ABI_VERSION; }

typedef struct {
  long H, W, Wp, P, PS, lo, hi, n;  // lo..hi: flat range of the H interior rows; n = H * W
} Geom;

static Geom geom(long H, long W) {
  Geom g;
  g.H = H; g.W = W; g.Wp = W + 2; g.P = (H + 2) * g.Wp; g.n = H * W;
  g.PS = ((g.P + 2 * GUARD + 15) / 16) * 16;
  g.lo = g.Wp; g.hi = (H + 1) * g.Wp;
  return g;
}

// Per-thread scratch, grown on demand and kept: OpenMP threads persist between calls.
static __thread float *ws_buf = NULL;
static __thread size_t ws_cap = 0;
static float *scratch(size_t n) {
  if (n > ws_cap) {
    free(ws_buf);
    ws_cap = n + 1024;
    ws_buf = (float *)aligned_alloc(64, ((ws_cap * sizeof(float) + 63) / 64) * 64);
  }
  return ws_buf;
}
// out[j] = sum_r rows[r * cols + j], in double and in row order: per-image (or per-plane) partial gradients
// reduced the same way whatever the thread count.
static void sum_rows(float *out, const float *rows, long nrows, long cols) {
  for (long j = 0; j < cols; j++) {
    double t = 0.0;
    for (long r = 0; r < nrows; r++) t += rows[r * cols + j];
    out[j] = (float)t;
  }
}
static inline float *plane(float *base, const Geom *g, long i) { return base + i * g->PS + GUARD; }
static void colmask(float *m, const Geom *g) {
  for (long k = -GUARD; k < g->P + GUARD; k++) {
    long row = k >= 0 ? k / g->Wp : -1, col = k >= 0 ? k % g->Wp : -1;
    m[k] = (k < g->P && row >= 1 && row <= g->H && col >= 1 && col <= g->W) ? 1.0f : 0.0f;
  }
}
static void zero_plane(float *p, const Geom *g) { memset(p - GUARD, 0, sizeof(float) * g->PS); }
static void zero_pads(float *p, const Geom *g) {  // rows 0 and H + 1 and the guards
  memset(p - GUARD, 0, sizeof(float) * (GUARD + g->lo));
  memset(p + g->hi, 0, sizeof(float) * (g->P - g->hi + GUARD));
}
static void load_plane(float *restrict p, const float *restrict x, const Geom *g) {
  zero_pads(p, g);
  const long W = g->W, Wp = g->Wp;
  for (long i = 0; i < g->H; i++) {
    float *restrict row = p + (i + 1) * Wp;
    const float *restrict src = x + i * W;
    row[0] = 0.0f;
    row[W + 1] = 0.0f;
#pragma omp simd
    for (long j = 0; j < W; j++) row[j + 1] = src[j];
  }
}
static void expand_add(float *restrict dst, const float *restrict p, const Geom *g) {  // dst += interior of p
  const long W = g->W, Wp = g->Wp;
  for (long i = 0; i < g->H; i++) {
#pragma omp simd
    for (long j = 0; j < W; j++) dst[i * W + j] += p[(i + 1) * Wp + 1 + j];
  }
}

#define TAPS(p, k, s)                                                                                            \
  (v0 * p[k - s - 1] + v1 * p[k - s] + v2 * p[k - s + 1] + v3 * p[k - 1] + v4 * p[k] + v5 * p[k + 1] +         \
   v6 * p[k + s - 1] + v7 * p[k + s] + v8 * p[k + s + 1])
#define LOADW(w, flip, scale)                                                                                     \
  const float v0 = (scale) * (w)[flip ? 8 : 0], v1 = (scale) * (w)[flip ? 7 : 1], v2 = (scale) * (w)[flip ? 6 : 2];    \
  const float v3 = (scale) * (w)[flip ? 5 : 3], v4 = (scale) * (w)[4], v5 = (scale) * (w)[flip ? 3 : 5];               \
  const float v6 = (scale) * (w)[flip ? 2 : 6], v7 = (scale) * (w)[flip ? 1 : 7], v8 = (scale) * (w)[flip ? 0 : 8];

// o (+)= scale corr(p, w) on the interior rows; flip = the transposed stencil (what a conv's backward applies).
static inline void corr3(float *restrict o, const float *restrict p, const float *restrict w, int flip, int acc,
                         float scale, const Geom *g) {
  LOADW(w, flip, scale)
  const long s = g->Wp;
  if (acc) {
#pragma omp simd
    for (long k = g->lo; k < g->hi; k++) o[k] += TAPS(p, k, s);
  } else {
#pragma omp simd
    for (long k = g->lo; k < g->hi; k++) o[k] = TAPS(p, k, s);
  }
}
// acc[d] += sum_k a[k] p[k + d]: the weight gradient of corr3.
static void wgrad3(double *acc, const float *restrict a, const float *restrict p, const Geom *g) {
  const long s = g->Wp;  // one pass, 9 accumulators: a is read once instead of 9 times
  float t0 = 0.0f, t1 = 0.0f, t2 = 0.0f, t3 = 0.0f, t4 = 0.0f, t5 = 0.0f, t6 = 0.0f, t7 = 0.0f, t8 = 0.0f;
#pragma omp simd reduction(+ : t0, t1, t2, t3, t4, t5, t6, t7, t8)
  for (long k = g->lo; k < g->hi; k++) {
    const float v = a[k];
    t0 += v * p[k - s - 1]; t1 += v * p[k - s]; t2 += v * p[k - s + 1];
    t3 += v * p[k - 1]; t4 += v * p[k]; t5 += v * p[k + 1];
    t6 += v * p[k + s - 1]; t7 += v * p[k + s]; t8 += v * p[k + s + 1];
  }
  acc[0] += t0; acc[1] += t1; acc[2] += t2; acc[3] += t3; acc[4] += t4;
  acc[5] += t5; acc[6] += t6; acc[7] += t7; acc[8] += t8;
}

// ESP_SCALE, ESP_LIMIT, ESP_SEGMENTS, ESP_DEGREE and the table ESP_C of esp() below: generated by build.py
// from mp_hub.functional.ESP_TABLE into the build folder (the one source of those coefficients).
#include "esp_table.h"

// ---- vectorisable scalar math: no libm calls (except sqrtf), so gcc vectorises the loops that use it ----
static inline float f_as(uint32_t u) { float f; memcpy(&f, &u, 4); return f; }
static inline uint32_t u_as(float f) { uint32_t u; memcpy(&u, &f, 4); return u; }
static inline float exp_neg(float x) {  // e^x for x <= 0 (Cephes expf)
  x = x < -87.0f ? -87.0f : x;
  float n = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;  // round to nearest
  float r = x - n * 0.693359375f + n * 2.12194440e-4f;
  float y = ((((1.9875691500e-4f * r + 1.3981999507e-3f) * r + 8.3334519073e-3f) * r + 4.1665795894e-2f) * r +
             1.6666665459e-1f) * r + 5.0000001201e-1f;
  y = y * (r * r) + r + 1.0f;
  return y * f_as((uint32_t)((int32_t)n + 127) << 23);
}
static inline float log_pos(float x) {  // ln x for finite x > 0 (Cephes logf)
  uint32_t u = u_as(x);
  float e = (float)((int32_t)(u >> 23) - 126);
  float m = f_as((u & 0x007fffffu) | 0x3f000000u);  // [0.5, 1)
  int small = m < 0.707106781186547524f;
  e = small ? e - 1.0f : e;
  m = small ? m + m - 1.0f : m - 1.0f;
  float z = m * m;
  float y = ((((((((7.0376836292e-2f * m - 1.1514610310e-1f) * m + 1.1676998740e-1f) * m - 1.2420140846e-1f) * m +
                 1.4249322787e-1f) * m - 1.6668057665e-1f) * m + 2.0000714765e-1f) * m - 2.4999993993e-1f) * m +
            3.3333331174e-1f) * m * z;
  y += -2.12194440e-4f * e - 0.5f * z;
  return m + y + 0.693359375f * e;
}
// ln(1 + v) = v P(v) and 1 / (1 + v) = R(v) on v in [0, 1]: least-squares-minimax polynomials, abs. errors
// 2.6e-8 and 3.2e-8, so softplus and sigmoid cost one exp and a few FMAs, no division.
static inline float log1p01(float v) {
  float p = ((((((0.005383709367359957f * v - 0.030109143347670918f) * v + 0.07920701975546188f) * v -
                0.13746231610552972f) * v + 0.19144889271284693f) * v - 0.2485287285021696f) * v +
             0.33320331533417313f) * v - 0.4999955173939846f;
  return v * (p * v + 0.9999999743727904f);
}
static inline float recip1p(float v) {
  float p = (((((((-0.02460407820371852f * v + 0.14551457039249607f) * v - 0.39748620610265284f) * v +
                 0.6874260299929836f) * v - 0.8883856516118049f) * v + 0.9742464617884015f) * v -
              0.996467014074805f) * v + 0.9997488887483812f) * v - 0.999993000939345f;
  return p * v + 0.9999999676112802f;
}
// torch's relu: a nan stays nan (0 > nan is false), so the fused noise generator spreads a nan input over the
// same outputs as the eager path; `v > 0 ? v : 0` would turn it into 0.
static inline float relu_keep_nan(float v) { return 0.0f > v ? 0.0f : v; }
static inline float softplus(float t) { return (t > 0.0f ? t : 0.0f) + log1p01(exp_neg(t < 0.0f ? t : -t)); }
static inline float softplus_d(float t, float *sig) {  // softplus(t) and its derivative sigmoid(t)
  float e = exp_neg(t < 0.0f ? t : -t), r = recip1p(e);
  *sig = t >= 0.0f ? r : e * r;
  return (t > 0.0f ? t : 0.0f) + log1p01(e);
}
// E[softplus(mu + eps)], eps ~ N(0, 1), = max(mu, 0) + q(|mu|), q a piecewise polynomial: ESP_C[j][k] is the
// u^j coefficient on segment k, u = t * ESP_SCALE - k (the table and its fit: functional.py). *grad = dz/dmu.
// max(mu, 0) is written 0 > mu ? 0 : mu so that a nan mu stays nan, as torch's relu (and as esp16 below).
static inline float esp(float mu, float *grad) {
  const float t = mu < 0.0f ? -mu : mu;
  const int inside = t < ESP_LIMIT;  // false for inf and nan, whose segment index would be meaningless
  const float v = (inside ? t : 0.0f) * ESP_SCALE;
  int k = (int)v;
  k = k > ESP_SEGMENTS - 1 ? ESP_SEGMENTS - 1 : k;
  const float u = v - (float)k;
  float q = ESP_C[ESP_DEGREE][k], dq = 0.0f;
  for (int j = ESP_DEGREE - 1; j >= 0; j--) {
    dq = dq * u + q;
    q = q * u + ESP_C[j][k];
  }
  q = inside ? q : 0.0f;
  const float sgn = mu > 0.0f ? 1.0f : (mu < 0.0f ? -1.0f : 0.0f);
  *grad = (mu > 0.0f ? 1.0f : 0.0f) + (inside ? sgn * dq * ESP_SCALE : 0.0f);
  return (0.0f > mu ? 0.0f : mu) + q;
}
#if defined(__AVX512F__)
// The same for 16 lanes (no derivative): each coefficient of the 32 segments is two registers, and one
// permute per coefficient picks every lane's segment.
_Static_assert(ESP_SEGMENTS == 32, "esp16 picks segments from two 16-float registers: the table needs 32");
typedef struct { __m512 lo[ESP_DEGREE + 1], hi[ESP_DEGREE + 1]; } EspTable;  // load once, outside the loop
static inline void esp16_table(EspTable *tab) {
  for (int j = 0; j <= ESP_DEGREE; j++) {
    tab->lo[j] = _mm512_load_ps(ESP_C[j]);
    tab->hi[j] = _mm512_load_ps(ESP_C[j] + 16);
  }
}
static inline __m512 esp16(__m512 mu, const EspTable *tab) {
  const __m512 t = _mm512_abs_ps(mu);
  const __mmask16 inside = _mm512_cmp_ps_mask(t, _mm512_set1_ps(ESP_LIMIT), _CMP_LT_OQ);
  const __m512 v = _mm512_mul_ps(_mm512_maskz_mov_ps(inside, t), _mm512_set1_ps(ESP_SCALE));
  const __m512i k = _mm512_min_epi32(_mm512_cvttps_epi32(v), _mm512_set1_epi32(ESP_SEGMENTS - 1));
  const __m512 u = _mm512_sub_ps(v, _mm512_cvtepi32_ps(k));
  __m512 q = _mm512_permutex2var_ps(tab->lo[ESP_DEGREE], k, tab->hi[ESP_DEGREE]);
  for (int j = ESP_DEGREE - 1; j >= 0; j--)
    q = _mm512_fmadd_ps(q, u, _mm512_permutex2var_ps(tab->lo[j], k, tab->hi[j]));
  return _mm512_add_ps(_mm512_max_ps(_mm512_setzero_ps(), mu), _mm512_maskz_mov_ps(inside, q));
}
#endif

// Counter-based standard normals: 32-bit random words from a counter-based generator keyed by (k1, k2) and
// indexed by (plane, position), then Box-Muller; pair j of a plane fills out[j] and out[j + half]. The same
// (plane, keys) always give the same draws, so the backward regenerates them instead of storing them.
// Words: ARS-7 (7 AES rounds on a counter, Salmon et al. 2011, "Parallel random numbers: as easy as 1, 2, 3")
// with VAES (and AVX-512 or AVX2); else a 2-round integer hash (lowbias32) of the counter. words needs
// round16(n + 1) + 32 entries.
static inline long round16(long v) { return (v + 15) / 16 * 16; }
static inline uint32_t mix32(uint32_t x) {  // "lowbias32" integer hash
  x ^= x >> 16; x *= 0x7feb352du; x ^= x >> 15; x *= 0x846ca68bu; x ^= x >> 16;
  return x;
}
#if defined(__VAES__) && (defined(__AVX512F__) || defined(__AVX2__))
// ARS-7's round keys, one 128-bit block: key r = (k1, k2, 0x13198A2E, 0x03707344) plus r times a Weyl constant (in
// 64-bit lanes). Block m of a plane encrypts the counter (m, 0, plane, 0x243F6A88): ars_counter(plane) + m.
static inline void ars_round_keys(__m128i keys[8], uint32_t k1, uint32_t k2) {
  const __m128i weyl = _mm_set_epi64x((long long)0xBB67AE8584CAA73BULL, 0x9E3779B97F4A7C15LL);
  keys[0] = _mm_set_epi32(0x03707344, 0x13198A2E, (int)k2, (int)k1);
  for (int r = 1; r < 8; r++) keys[r] = _mm_add_epi64(keys[r - 1], weyl);
}
static inline __m128i ars_counter(uint32_t plane_idx) { return _mm_set_epi32(0x243F6A88, (int)plane_idx, 0, 0); }
#endif
#if defined(__VAES__) && defined(__AVX512F__)
static void random_words(uint32_t *restrict words, long count, uint32_t plane_idx, uint32_t k1, uint32_t k2) {
  __m128i k128[8];
  ars_round_keys(k128, k1, k2);
  __m512i keys[8];
  for (int r = 0; r < 8; r++) keys[r] = _mm512_broadcast_i32x4(k128[r]);
  const __m512i step = _mm512_set_epi32(0, 0, 0, 4, 0, 0, 0, 4, 0, 0, 0, 4, 0, 0, 0, 4);
  __m512i ctr = _mm512_add_epi32(_mm512_broadcast_i32x4(ars_counter(plane_idx)),  // blocks 0-3, a lane each
                                 _mm512_set_epi32(0, 0, 0, 3, 0, 0, 0, 2, 0, 0, 0, 1, 0, 0, 0, 0));
  for (long i = 0; i < count; i += 16) {
    __m512i v = _mm512_xor_si512(ctr, keys[0]);
    for (int r = 1; r < 7; r++) v = _mm512_aesenc_epi128(v, keys[r]);
    v = _mm512_aesenclast_epi128(v, keys[7]);
    _mm512_storeu_si512(words + i, v);
    ctr = _mm512_add_epi32(ctr, step);
  }
}
#elif defined(__VAES__) && defined(__AVX2__)
// The same ARS-7 words two blocks to a register, so a CPU with VAES and AVX2 draws the words an AVX-512 one does.
static void random_words(uint32_t *restrict words, long count, uint32_t plane_idx, uint32_t k1, uint32_t k2) {
  __m128i k128[8];
  ars_round_keys(k128, k1, k2);
  __m256i keys[8];
  for (int r = 0; r < 8; r++) keys[r] = _mm256_broadcastsi128_si256(k128[r]);
  const __m256i step = _mm256_set_epi32(0, 0, 0, 2, 0, 0, 0, 2);
  __m256i ctr = _mm256_add_epi32(_mm256_broadcastsi128_si256(ars_counter(plane_idx)),  // blocks 0 and 1
                                 _mm256_set_epi32(0, 0, 0, 1, 0, 0, 0, 0));
  for (long i = 0; i < count; i += 8) {
    __m256i v = _mm256_xor_si256(ctr, keys[0]);
    for (int r = 1; r < 7; r++) v = _mm256_aesenc_epi128(v, keys[r]);
    v = _mm256_aesenclast_epi128(v, keys[7]);
    _mm256_storeu_si256((__m256i *)(words + i), v);
    ctr = _mm256_add_epi32(ctr, step);
  }
}
#else
static void random_words(uint32_t *restrict words, long count, uint32_t plane_idx, uint32_t k1, uint32_t k2) {
  const uint32_t base = plane_idx * (uint32_t)count;
#pragma omp simd
  for (long i = 0; i < count; i++) words[i] = mix32(mix32((base + (uint32_t)i) ^ k1) + k2);
}
#endif
// One Box-Muller pair from two random words: *o1 from the cosine side, *o2 from the sine side (or swapped).
static inline void box_muller(uint32_t ha, uint32_t hb, float *o1, float *o2) {
  float u = ((float)(ha >> 8) + 0.5f) * 5.9604644775390625e-8f;  // (0, 1)
  float r = sqrtf(-2.0f * log_pos(u));
  float x = (float)(hb >> 9) * 9.36301e-08f, x2 = x * x;  // [0, pi/4): 2^-23 * pi/4
  float sn = x * (1.0f - x2 * (1.6666667e-1f - x2 * (8.3333333e-3f - x2 * (1.9841270e-4f - x2 * 2.7557319e-6f))));
  float cs = 1.0f - x2 * (0.5f - x2 * (4.1666667e-2f - x2 * (1.3888889e-3f - x2 * 2.4801587e-5f)));
  float a = (hb & 1u) ? sn : cs, b = (hb & 1u) ? cs : sn;  // swap: angles in [pi/4, pi/2)
  *o1 = (hb & 2u) ? -r * a : r * a;
  *o2 = (hb & 4u) ? -r * b : r * b;
}
static void normals(float *restrict out, uint32_t *restrict words, long n, uint32_t plane_idx, uint32_t k1,
                    uint32_t k2) {
  const long half = (n + 1) / 2, hr = round16(half), full = n - half;  // full: pairs with both draws in the plane
  random_words(words, 2 * hr, plane_idx, k1, k2);
  const uint32_t *restrict wa = words, *restrict wb = words + hr;
  float o1, o2;
#pragma omp simd private(o1, o2)
  for (long j = 0; j < full; j++) {  // no condition on the second store: it vectorises without masked stores
    box_muller(wa[j], wb[j], &o1, &o2);
    out[j] = o1;
    out[j + half] = o2;
  }
  if (full < half) {  // n odd: the last pair's second draw would fall outside the plane
    box_muller(wa[full], wb[full], &o1, &o2);
    out[full] = o1;
  }
}
void mp_normal(float *out, long n, uint32_t plane_idx, uint32_t k1, uint32_t k2) {
  uint32_t *words = (uint32_t *)aligned_alloc(64, sizeof(uint32_t) * (size_t)(round16(n + 1) + 32));
  normals(out, words, n, plane_idx, k1, k2);
  free(words);
}
