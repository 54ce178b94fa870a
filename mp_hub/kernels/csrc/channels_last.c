// Part of kernels.c: channels-last (NHWC) images to planes and back, for the kernels that work on planes.
// Channels-last (NHWC) tensors: the kernels work on planes, so one image of such a tensor (n positions of C
// channels) goes to C planes (plane c at planes + c * ps) and back. With AVX-512 and C a multiple of 16 (AVX2: 8),
// in TB x TB blocks transposed in registers; else (and for the last n % TB positions) element by element.
#if defined(__AVX512F__)
#define TB 16
typedef __m512 tvec;
#define tv_load _mm512_loadu_ps
#define tv_store _mm512_storeu_ps
#define tv_add _mm512_add_ps
#define tv_zero _mm512_setzero_ps
// out[j] = column j of the 16 x 16 block at src (rows ss floats apart).
static inline void transpose_block(const float *src, long ss, __m512 *out) {
  __m512 r[16], t[16];
  for (int i = 0; i < 16; i++) r[i] = _mm512_loadu_ps(src + i * ss);
  for (int i = 0; i < 16; i += 2) {
    t[i] = _mm512_unpacklo_ps(r[i], r[i + 1]);
    t[i + 1] = _mm512_unpackhi_ps(r[i], r[i + 1]);
  }
  for (int i = 0; i < 16; i += 4) {
    r[i] = _mm512_shuffle_ps(t[i], t[i + 2], _MM_SHUFFLE(1, 0, 1, 0));
    r[i + 1] = _mm512_shuffle_ps(t[i], t[i + 2], _MM_SHUFFLE(3, 2, 3, 2));
    r[i + 2] = _mm512_shuffle_ps(t[i + 1], t[i + 3], _MM_SHUFFLE(1, 0, 1, 0));
    r[i + 3] = _mm512_shuffle_ps(t[i + 1], t[i + 3], _MM_SHUFFLE(3, 2, 3, 2));
  }
  for (int i = 0; i < 4; i++) {
    t[i] = _mm512_shuffle_f32x4(r[i], r[i + 4], 0x88);
    t[i + 4] = _mm512_shuffle_f32x4(r[i], r[i + 4], 0xdd);
    t[i + 8] = _mm512_shuffle_f32x4(r[i + 8], r[i + 12], 0x88);
    t[i + 12] = _mm512_shuffle_f32x4(r[i + 8], r[i + 12], 0xdd);
  }
  for (int i = 0; i < 8; i++) {
    out[i] = _mm512_shuffle_f32x4(t[i], t[i + 8], 0x88);
    out[i + 8] = _mm512_shuffle_f32x4(t[i], t[i + 8], 0xdd);
  }
}
#elif defined(__AVX2__)
#define TB 8
typedef __m256 tvec;
#define tv_load _mm256_loadu_ps
#define tv_store _mm256_storeu_ps
#define tv_add _mm256_add_ps
#define tv_zero _mm256_setzero_ps
// out[j] = column j of the 8 x 8 block at src (rows ss floats apart): columns j and j + 4 of four rows come out
// of the in-lane shuffles in one register's two halves, and the cross-lane permutes pair them up.
static inline void transpose_block(const float *src, long ss, __m256 *out) {
  __m256 r[8], t[8];
  for (int i = 0; i < 8; i++) r[i] = _mm256_loadu_ps(src + i * ss);
  for (int i = 0; i < 8; i += 2) {
    t[i] = _mm256_unpacklo_ps(r[i], r[i + 1]);
    t[i + 1] = _mm256_unpackhi_ps(r[i], r[i + 1]);
  }
  for (int i = 0; i < 8; i += 4) {
    r[i] = _mm256_shuffle_ps(t[i], t[i + 2], _MM_SHUFFLE(1, 0, 1, 0));
    r[i + 1] = _mm256_shuffle_ps(t[i], t[i + 2], _MM_SHUFFLE(3, 2, 3, 2));
    r[i + 2] = _mm256_shuffle_ps(t[i + 1], t[i + 3], _MM_SHUFFLE(1, 0, 1, 0));
    r[i + 3] = _mm256_shuffle_ps(t[i + 1], t[i + 3], _MM_SHUFFLE(3, 2, 3, 2));
  }
  for (int i = 0; i < 4; i++) {
    out[i] = _mm256_permute2f128_ps(r[i], r[i + 4], 0x20);
    out[i + 4] = _mm256_permute2f128_ps(r[i], r[i + 4], 0x31);
  }
}
#endif
// The plane stride of the dense planes an image goes to: n rounded up to 16 floats, plus 16, so that the TB planes
// a block transposes to or from do not all map to the same L1 sets (at 32 x 32 images n floats are 4 KiB, a
// multiple of the set stride, and TB planes n apart conflict in an 8-way L1).
static inline long nhwc_plane_stride(long n) { return (n + 15) / 16 * 16 + 16; }
#ifdef TB
#define NHWC_BLOCKS(C, n) ((C) % TB == 0 ? (n) / TB * TB : 0)  // positions done in TB x TB blocks
#else
#define NHWC_BLOCKS(C, n) 0
#endif
// sum (optional): sum[k] = the C channels of position k added in the order c = 0, 1, ..., as the NCHW paths
// add the planes, so the channel mean comes out bit for bit the same without another pass over the planes.
static void image_to_planes(float *restrict planes, long ps, const float *restrict img, long C, long n,
                            float *restrict sum) {
  const long blocked = NHWC_BLOCKS(C, n);
#ifdef TB
  tvec col[TB];
  for (long k0 = 0; k0 < blocked; k0 += TB) {
    tvec acc = tv_zero();
    for (long c0 = 0; c0 < C; c0 += TB) {
      transpose_block(img + k0 * C + c0, C, col);
      for (int j = 0; j < TB; j++) {
        tv_store(planes + (c0 + j) * ps + k0, col[j]);
        acc = tv_add(acc, col[j]);
      }
    }
    if (sum) tv_store(sum + k0, acc);
  }
#endif
  for (long k = blocked; k < n; k++) {
    float t = 0.0f;
    for (long c = 0; c < C; c++) {
      const float v = img[k * C + c];
      planes[c * ps + k] = v;
      t += v;
    }
    if (sum) sum[k] = t;
  }
}
// img = the planes.
static void planes_to_image(float *restrict img, const float *restrict planes, long ps, long C, long n) {
  const long blocked = NHWC_BLOCKS(C, n);
#ifdef TB
  tvec row[TB];
  for (long k0 = 0; k0 < blocked; k0 += TB)
    for (long c0 = 0; c0 < C; c0 += TB) {
      transpose_block(planes + c0 * ps + k0, ps, row);
      for (int j = 0; j < TB; j++) tv_store(img + (k0 + j) * C + c0, row[j]);
    }
#endif
  for (long k = blocked; k < n; k++)
    for (long c = 0; c < C; c++) img[k * C + c] = planes[c * ps + k];
}
// An image and C padded planes of common.c's layout (plane c at planes + c * ps, row stride wp, position (r, q) at
// (r + 1) * wp + q + 1), in TB x TB blocks where C is a multiple of TB: to_planes copies the image into the planes'
// interiors, else the interiors are added into the image. Returns how many positions of each row it did (a
// multiple of TB, 0 without blocks): the callers do the rest of each row one element at a time.
static long padded_blocks(float *img, float *planes, long ps, long wp, long C, long H, long W, int to_planes) {
#ifdef TB
  if (C % TB != 0) return 0;
  const long done = W / TB * TB;
  tvec t[TB];
  for (long r = 0; r < H; r++)
    for (long q0 = 0; q0 < done; q0 += TB)
      for (long c0 = 0; c0 < C; c0 += TB) {
        float *im = img + (r * W + q0) * C + c0, *pl = planes + c0 * ps + (r + 1) * wp + q0 + 1;
        if (to_planes) {
          transpose_block(im, C, t);
          for (int j = 0; j < TB; j++) tv_store(pl + j * ps, t[j]);
        } else {
          transpose_block(pl, ps, t);
          for (int j = 0; j < TB; j++) tv_store(im + j * C, tv_add(tv_load(im + j * C), t[j]));
        }
      }
  return done;
#else
  return 0;
#endif
}
// The image into the planes' interiors (the caller keeps their borders zero).
static void image_to_padded(float *planes, long ps, long wp, const float *img, long C, long H, long W) {
  const long done = padded_blocks((float *)img, planes, ps, wp, C, H, W, 1);
  for (long r = 0; r < H; r++)
    for (long q = done; q < W; q++)
      for (long c = 0; c < C; c++) planes[c * ps + (r + 1) * wp + q + 1] = img[(r * W + q) * C + c];
}
// img += the planes' interiors.
static void padded_to_image_add(float *img, const float *planes, long ps, long wp, long C, long H, long W) {
  const long done = padded_blocks(img, (float *)planes, ps, wp, C, H, W, 0);
  for (long r = 0; r < H; r++)
    for (long q = done; q < W; q++)
      for (long c = 0; c < C; c++) img[(r * W + q) * C + c] += planes[c * ps + (r + 1) * wp + q + 1];
}
