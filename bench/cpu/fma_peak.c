/* The machine's fp32 peak, measured: every core runs independent chains of
 * fused multiply-adds on the widest vectors it has (AVX-512, else AVX2), with
 * enough chains in flight to hide the FMA latency. Prints one JSON object.
 * Written for bench/cpu/run.py; build: cc -O2 -march=native -pthread. */
#include <immintrin.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#define CHAINS 16
#ifdef __AVX512F__
#define LANES 16
typedef __m512 vec;
#define SET1 _mm512_set1_ps
#define FMA _mm512_fmadd_ps
#define ADD _mm512_add_ps
#define SUM(v) _mm512_reduce_add_ps(v)
#define ISA "avx512"
#else
#define LANES 8
typedef __m256 vec;
#define SET1 _mm256_set1_ps
#define FMA _mm256_fmadd_ps
#define ADD _mm256_add_ps
static float SUM(vec v) { float f[8]; _mm256_storeu_ps(f, v); float s = 0; for (int i = 0; i < 8; i++) s += f[i]; return s; }
#define ISA "avx2"
#endif

static long iters;
static double now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec + 1e-9 * t.tv_nsec; }

static void *work(void *out) {
  vec acc[CHAINS];
  for (int c = 0; c < CHAINS; c++) acc[c] = SET1(1.0f + c * 1e-3f);
  const vec a = SET1(0.999999f), b = SET1(1e-7f);
  for (long i = 0; i < iters; i++)
    for (int c = 0; c < CHAINS; c++) acc[c] = FMA(acc[c], a, b);
  vec s = acc[0];
  for (int c = 1; c < CHAINS; c++) s = ADD(s, acc[c]);
  *(float *)out = SUM(s);  /* keep the result alive */
  return NULL;
}

int main(int argc, char **argv) {
  int threads = argc > 1 ? atoi(argv[1]) : 1;
  iters = argc > 2 ? atol(argv[2]) : 200000000L / CHAINS;
  pthread_t tid[256];
  float sink[256];
  double best = 0;
  for (int rep = 0; rep < 3; rep++) {  /* the best of three: load from others only lowers it */
    double t0 = now();
    for (int t = 0; t < threads; t++) pthread_create(&tid[t], NULL, work, &sink[t]);
    for (int t = 0; t < threads; t++) pthread_join(tid[t], NULL);
    double s = now() - t0;
    double g = 2.0 * LANES * CHAINS * (double)iters * threads / s / 1e9;
    if (g > best) best = g;
  }
  printf("{\"isa\": \"%s\", \"threads\": %d, \"gflops\": %.1f, \"sink\": %g}\n", ISA, threads, best, sink[0]);
  return 0;
}
