// Test-only: ARS-7 random words one 128-bit block at a time with AES-NI, the reference that the library's VAES
// paths (AVX-512 and AVX2: several blocks to a register) are tested against, and an export of the library's own
// random_words. Built with the shipped kernels as one translation unit (mp_hub.kernels.build.load_extended).
#include "kernels.c"
#if defined(__AES__)
#include <immintrin.h>
#endif

void mp_random_words(uint32_t *words, long count, uint32_t plane_idx, uint32_t k1, uint32_t k2);
void mp_ars_words_reference(uint32_t *words, long count, uint32_t plane_idx, uint32_t k1, uint32_t k2);

void mp_random_words(uint32_t *words, long count, uint32_t plane_idx, uint32_t k1, uint32_t k2) {
  random_words(words, count, plane_idx, k1, k2);
}

// Block m of a plane: AES rounds on the counter (m, 0, plane, 0x243F6A88) with the key (k1, k2, 0x13198A2E,
// 0x03707344) and its round keys stepped by a Weyl constant: words 4 m .. 4 m + 3. Without AES-NI it writes nothing
// (the test skips such a CPU).
void mp_ars_words_reference(uint32_t *words, long count, uint32_t plane_idx, uint32_t k1, uint32_t k2) {
#if defined(__AES__)
  const __m128i weyl = _mm_set_epi64x((long long)0xBB67AE8584CAA73BULL, 0x9E3779B97F4A7C15LL);
  __m128i keys[8];
  keys[0] = _mm_set_epi32(0x03707344, 0x13198A2E, (int)k2, (int)k1);
  for (int r = 1; r < 8; r++) keys[r] = _mm_add_epi64(keys[r - 1], weyl);
  for (long m = 0; 4 * m < count; m++) {
    __m128i v = _mm_xor_si128(_mm_set_epi32(0x243F6A88, (int)plane_idx, 0, (int)m), keys[0]);
    for (int r = 1; r < 7; r++) v = _mm_aesenc_si128(v, keys[r]);
    v = _mm_aesenclast_si128(v, keys[7]);
    _mm_storeu_si128((__m128i *)(words + 4 * m), v);
  }
#else
  (void)words, (void)count, (void)plane_idx, (void)k1, (void)k2;
#endif
}
