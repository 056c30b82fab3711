#include <algorithm>
#include <climits>
#include <system_error>
#include <thread>
#include <vector>

#include "caffe/blob.hpp"
#include "caffe/util/math_functions.hpp"
#include "caffe/util/winograd.hpp"

// OpenBLAS's thread count, when Caffe runs on OpenBLAS (a weak reference:
// with another BLAS it is null)
extern "C" int openblas_get_num_threads(void) __attribute__((weak));

namespace caffe {

namespace {

// Winograd's F(M x M, 3 x 3) for correlation, as CNNs compute it: a tile of
// N = M + 2 inputs a side, d, to V = B' d B; a kernel g to U = G g G'; and
// their products summed over the channels, m, to Y = A' m A, M x M outputs.
// Each transform is a 1-D one applied along both axes. The N x N positions
// xi = N i + j of a transformed tile are separate matrices: u[xi] is out x
// in, a band's v[xi] in x tiles and m[xi] out x tiles, so each position's
// products over the channels are one GEMM.
template <int M> struct F;

// F(2x2, 3x3): B' = [1 0 -1 0; 0 1 1 0; 0 -1 1 0; 0 1 0 -1],
// G = [1 0 0; 1/2 1/2 1/2; 1/2 -1/2 1/2; 0 0 1], A' = [1 1 1 0; 0 1 -1 -1]
template <> struct F<2> {
  static const int N = 4;
  template <typename T> static void input(const T* d, int ds, T* v, int vs) {
    v[0] = d[0] - d[2 * ds];  // B' d
    v[vs] = d[ds] + d[2 * ds];
    v[2 * vs] = d[2 * ds] - d[ds];
    v[3 * vs] = d[ds] - d[3 * ds];
  }
  template <typename T> static void weights(const T* g, int gs, T* u,
      int us) {  // G g
    const T h = 0.5;
    u[0] = g[0];
    u[us] = (g[0] + g[gs] + g[2 * gs]) * h;
    u[2 * us] = (g[0] - g[gs] + g[2 * gs]) * h;
    u[3 * us] = g[2 * gs];
  }
  template <typename T> static void output(const T* m, int ms, T* y,
      int ys) {  // A' m
    y[0] = m[0] + m[ms] + m[2 * ms];
    y[ys] = m[ms] - m[2 * ms] - m[3 * ms];
  }
  // the adjoints, for the weight gradient: A dy and G' du
  template <typename T> static void output_adjoint(const T* dy, int ds,
      T* dm, int ms) {
    dm[0] = dy[0];
    dm[ms] = dy[0] + dy[ds];
    dm[2 * ms] = dy[0] - dy[ds];
    dm[3 * ms] = -dy[ds];
  }
  template <typename T> static void weights_adjoint(const T* du, int us,
      T* dg, int gs) {
    const T h = 0.5;
    dg[0] = du[0] + (du[us] + du[2 * us]) * h;
    dg[gs] = (du[us] - du[2 * us]) * h;
    dg[2 * gs] = (du[us] + du[2 * us]) * h + du[3 * us];
  }
};

// F(4x4, 3x3), points 0, 1, -1, 2, -2 and infinity:
// B' = [4 0 -5 0 1 0; 0 -4 -4 1 1 0; 0 4 -4 -1 1 0; 0 -2 -1 2 1 0;
//       0 2 -1 -2 1 0; 0 4 0 -5 0 1],
// G = [1/4 0 0; -1/6 -1/6 -1/6; -1/6 1/6 -1/6; 1/24 1/12 1/6;
//      1/24 -1/12 1/6; 0 0 1],
// A' = [1 1 1 1 1 0; 0 1 -1 2 -2 0; 0 1 1 4 4 0; 0 1 -1 8 -8 1]
template <> struct F<4> {
  static const int N = 6;
  template <typename T> static void input(const T* d, int ds, T* v, int vs) {
    const T d0 = d[0], d1 = d[ds], d2 = d[2 * ds], d3 = d[3 * ds],
        d4 = d[4 * ds], d5 = d[5 * ds];
    v[0] = 4 * d0 - 5 * d2 + d4;
    v[vs] = d3 + d4 - 4 * (d1 + d2);
    v[2 * vs] = d4 - d3 + 4 * (d1 - d2);
    v[3 * vs] = d4 - d2 + 2 * (d3 - d1);
    v[4 * vs] = d4 - d2 - 2 * (d3 - d1);
    v[5 * vs] = 4 * d1 - 5 * d3 + d5;
  }
  template <typename T> static void weights(const T* g, int gs, T* u,
      int us) {
    const T s6 = T(1) / 6, s12 = T(1) / 12, s24 = T(1) / 24;
    const T g0 = g[0], g1 = g[gs], g2 = g[2 * gs];
    const T a = -(g0 + g2) * s6, b = -g1 * s6;
    const T c = g0 * s24 + g2 * s6, e = g1 * s12;
    u[0] = g0 * T(0.25);
    u[us] = a + b;
    u[2 * us] = a - b;
    u[3 * us] = c + e;
    u[4 * us] = c - e;
    u[5 * us] = g2;
  }
  template <typename T> static void output(const T* m, int ms, T* y,
      int ys) {
    const T a = m[ms] + m[2 * ms], b = m[ms] - m[2 * ms];
    const T c = m[3 * ms] + m[4 * ms], e = m[3 * ms] - m[4 * ms];
    y[0] = m[0] + a + c;
    y[ys] = b + 2 * e;
    y[2 * ys] = a + 4 * c;
    y[3 * ys] = b + 8 * e + m[5 * ms];
  }
  template <typename T> static void output_adjoint(const T* dy, int ds,
      T* dm, int ms) {
    const T y0 = dy[0], y1 = dy[ds], y2 = dy[2 * ds], y3 = dy[3 * ds];
    const T a = y0 + y2, b = y1 + y3, c = y0 + 4 * y2, e = 2 * y1 + 8 * y3;
    dm[0] = y0;
    dm[ms] = a + b;
    dm[2 * ms] = a - b;
    dm[3 * ms] = c + e;
    dm[4 * ms] = c - e;
    dm[5 * ms] = y3;
  }
  template <typename T> static void weights_adjoint(const T* du, int us,
      T* dg, int gs) {
    const T s6 = T(1) / 6, s12 = T(1) / 12, s24 = T(1) / 24;
    const T a = du[us] + du[2 * us], b = du[3 * us] + du[4 * us];
    dg[0] = du[0] * T(0.25) - a * s6 + b * s24;
    dg[gs] = (du[2 * us] - du[us]) * s6 + (du[3 * us] - du[4 * us]) * s12;
    dg[2 * gs] = (b - a) * s6 + du[5 * us];
  }
};

// The planes of u, v and m lie this far apart: their size and 16 values
// more, and 16 more again where that is a multiple of 512 values, so that
// they are never a multiple of 4 KiB apart (with sizes of 2^n values they
// were, and the transforms' loads or stores in a row contended for the
// same cache set: 2-3x slower).
int plane_stride(int size) {
  const int stride = size + 16;
  return stride % 512 ? stride : stride + 16;
}

// f(begin, end) over [0, n) in as many parts as the BLAS has threads, each
// of at least kPartValues values written (values in all): the transforms
// run between the GEMMs, while the BLAS's threads wait, and a thread costs
// tens of microseconds to start. A part that gets no thread (none to be
// had) runs in this one.
const int64_t kPartValues = 1 << 18;

template <typename Fn>
void parallel_for(int n, int64_t values, const Fn& f) {
  const int64_t threads = openblas_get_num_threads ?
      openblas_get_num_threads() : 1;
  const int parts = std::max<int64_t>(1, std::min<int64_t>(std::min<int64_t>(
      n, threads), values / kPartValues));
  std::vector<int> begin(parts + 1);
  for (int i = 0; i <= parts; ++i) { begin[i] = int64_t(n) * i / parts; }
  std::vector<std::thread> others;
  others.reserve(parts);
  int i = 1;
  for (; i < parts; ++i) {
    try {
      others.push_back(std::thread(f, begin[i], begin[i + 1]));
    } catch (const std::system_error&) {
      break;
    }
  }
  f(begin[0], begin[1]);
  for (; i < parts; ++i) { f(begin[i], begin[i + 1]); }
  for (int j = 0; j < others.size(); ++j) { others[j].join(); }
}

// The weights' transform runs over a block of kBlock kernels of a row at a
// time (vectorized), rather than kernel by kernel.
const int kBlock = 16;

// u (N^2 planes of rows x cols) from w (rows x cols x 3 x 3) by G g G',
// or with flip of each kernel turned by 180 degrees (for the data
// gradient); rows [r0, r1)
template <int M, typename Dtype>
void transform_weights(const Dtype* w, bool flip, int rows, int cols,
    Dtype* u, int r0, int r1) {
  const int N = F<M>::N, stride = plane_stride(rows * cols);
  Dtype k[9][kBlock], t[N][3][kBlock];
  for (int r = r0; r < r1; ++r) {
    for (int c0 = 0; c0 < cols; c0 += kBlock) {
      const int n = std::min(kBlock, cols - c0);
      for (int c = 0; c < n; ++c) {
        const Dtype* g = w + (r * cols + c0 + c) * 9;
        for (int i = 0; i < 9; ++i) { k[i][c] = g[flip ? 8 - i : i]; }
      }
      for (int j = 0; j < 3; ++j) {  // G g
        #pragma GCC ivdep
        for (int c = 0; c < n; ++c) {
          F<M>::weights(&k[j][c], 3 * kBlock, &t[0][j][c], 3 * kBlock);
        }
      }
      for (int i = 0; i < N; ++i) {  // (G g) G'
        Dtype* d = u + N * i * stride + r * cols + c0;
        #pragma GCC ivdep
        for (int c = 0; c < n; ++c) {
          F<M>::weights(&t[i][0][c], kBlock, d + c, stride);
        }
      }
    }
  }
}

// A band is whole rows of tiles, of one image or several: row q is tile
// row q % tiles_h of image q / tiles_h. It holds about kBandValues / N^2
// tiles.
const int kBandValues = 2048 * 16;

struct Tiling {
  int m, height, width, pad_h, pad_w, out_h, out_w, tiles_h, tiles_w;
  // the width of a row of tiles' inputs, padding included
  int padded_w() const { return m * tiles_w + 2; }
  int positions() const { return (m + 2) * (m + 2); }
  // tile rows a band
  int band_rows() const {
    return std::max(1, kBandValues / positions() / tiles_w);
  }
};

Tiling tiling(int m, int height, int width, int pad_h, int pad_w) {
  CHECK(pad_h >= 0 && pad_w >= 0) << "Winograd: negative padding";
  Tiling t;
  t.m = m; t.height = height; t.width = width; t.pad_h = pad_h;
  t.pad_w = pad_w;
  t.out_h = height + 2 * pad_h - 2; t.out_w = width + 2 * pad_w - 2;
  t.tiles_h = (t.out_h + m - 1) / m; t.tiles_w = (t.out_w + m - 1) / m;
  return t;
}

// v (N^2 x in x tiles) for the tile rows [q0, q1), channels [c0, c1): each
// tile row's N input rows, padded with zeros, then B' d B, whose left
// product is the same for the whole row of tiles.
template <int M, typename Dtype>
void transform_input(const Tiling& t, const Dtype* input, int in,
    int in_stride, int q0, int q1, Dtype* v, int c0, int c1) {
  const int N = F<M>::N;
  const int pw = t.padded_w(), tiles = (q1 - q0) * t.tiles_w;
  const int stride = plane_stride(in * tiles);
  std::vector<Dtype> rows(2 * N * pw);
  Dtype* __restrict__ r = &rows[0];
  Dtype* __restrict__ e = r + N * pw;
  for (int c = c0; c < c1; ++c) {
    for (int q = q0; q < q1; ++q) {
      const Dtype* x = input + (q / t.tiles_h) * in_stride +
          c * t.height * t.width;
      const int y0 = M * (q % t.tiles_h) - t.pad_h;
      for (int i = 0; i < N; ++i) {
        Dtype* ri = r + i * pw;
        const int y = y0 + i;
        if (y < 0 || y >= t.height) {
          std::fill(ri, ri + pw, Dtype(0));
          continue;
        }
        std::fill(ri, ri + t.pad_w, Dtype(0));
        std::copy(x + y * t.width, x + (y + 1) * t.width, ri + t.pad_w);
        std::fill(ri + t.pad_w + t.width, ri + pw, Dtype(0));
      }
      #pragma GCC ivdep
      for (int j = 0; j < pw; ++j) {  // B' d
        F<M>::input(r + j, pw, e + j, pw);
      }
      for (int i = 0; i < N; ++i) {  // (B' d) B
        const Dtype* s = e + i * pw;
        Dtype* d = v + N * i * stride + c * tiles + (q - q0) * t.tiles_w;
        #pragma GCC ivdep
        for (int x = 0; x < t.tiles_w; ++x) {
          F<M>::input(s + M * x, 1, d + x, stride);
        }
      }
    }
  }
}

// output for the tile rows [q0, q1), channels [o0, o1), from m (N^2 x out
// x tiles): A' m A for each tile, the outputs past the last row or column
// dropped
template <int M, typename Dtype>
void transform_output(const Tiling& t, const Dtype* m, int out,
    int out_stride, int q0, int q1, Dtype* output, int o0, int o1) {
  const int N = F<M>::N, tw = t.tiles_w, rw = M * tw;
  const int tiles = (q1 - q0) * tw, stride = plane_stride(out * tiles);
  // A' m of a row of tiles (M x N x tiles_w), then its M rows of outputs
  std::vector<Dtype> buffer((M * N + M * M) * tw);
  Dtype* __restrict__ s = &buffer[0];
  Dtype* __restrict__ row = s + M * N * tw;
  for (int o = o0; o < o1; ++o) {
    for (int q = q0; q < q1; ++q) {
      const Dtype* p = m + o * tiles + (q - q0) * tw;
      for (int j = 0; j < N; ++j) {  // A' m
        #pragma GCC ivdep
        for (int x = 0; x < tw; ++x) {
          F<M>::output(p + j * stride + x, N * stride, s + j * tw + x,
              N * tw);
        }
      }
      for (int i = 0; i < M; ++i) {  // (A' m) A
        #pragma GCC ivdep
        for (int x = 0; x < tw; ++x) {
          F<M>::output(s + i * N * tw + x, tw, row + i * rw + M * x, 1);
        }
      }
      const int y = M * (q % t.tiles_h);
      Dtype* dst = output + (q / t.tiles_h) * out_stride +
          (o * t.out_h + y) * t.out_w;
      for (int i = 0; i < M && y + i < t.out_h; ++i) {
        std::copy(row + i * rw, row + i * rw + t.out_w, dst + i * t.out_w);
      }
    }
  }
}

// The weight gradient runs the convolution's steps backwards: each tile's
// output gradient dy (M x M) to dm = A dy A' (transform_output's adjoint),
// then for each position one GEMM over the tiles, du = dm v', and the
// weight gradient G' du G (transform_weights' adjoint).

// dm (N^2 x out x tiles) for the tile rows [q0, q1), channels [o0, o1),
// from the output gradient; the outputs past its last row or column are 0
template <int M, typename Dtype>
void transform_output_adjoint(const Tiling& t, const Dtype* output,
    int out, int out_stride, int q0, int q1, Dtype* dm, int o0, int o1) {
  const int N = F<M>::N, tw = t.tiles_w, rw = M * tw;
  const int tiles = (q1 - q0) * tw, stride = plane_stride(out * tiles);
  // a row of tiles' M rows of output gradients, then A dy (N x M x
  // tiles_w)
  std::vector<Dtype> buffer((M * M + N * M) * tw, Dtype(0));
  Dtype* __restrict__ row = &buffer[0];
  Dtype* __restrict__ s = row + M * rw;
  for (int o = o0; o < o1; ++o) {
    for (int q = q0; q < q1; ++q) {
      const int y = M * (q % t.tiles_h);
      const Dtype* src = output + (q / t.tiles_h) * out_stride +
          (o * t.out_h + y) * t.out_w;
      for (int i = 0; i < M; ++i) {
        if (y + i < t.out_h) {
          std::copy(src + i * t.out_w, src + (i + 1) * t.out_w, row + i * rw);
        } else {
          std::fill(row + i * rw, row + i * rw + t.out_w, Dtype(0));
        }
      }
      for (int j = 0; j < M; ++j) {  // A dy
        #pragma GCC ivdep
        for (int x = 0; x < tw; ++x) {
          F<M>::output_adjoint(row + M * x + j, rw, s + j * tw + x, M * tw);
        }
      }
      Dtype* d = dm + o * tiles + (q - q0) * tw;
      for (int i = 0; i < N; ++i) {  // (A dy) A'
        #pragma GCC ivdep
        for (int x = 0; x < tw; ++x) {
          F<M>::output_adjoint(s + i * M * tw + x, tw, d + N * i * stride + x,
              stride);
        }
      }
    }
  }
}

// weight_diff (out x in x 3 x 3) += G' du G, du N^2 planes of out x in;
// outputs [o0, o1)
template <int M, typename Dtype>
void transform_weights_adjoint(const Dtype* du, int out, int in,
    Dtype* weight_diff, int o0, int o1) {
  const int N = F<M>::N, stride = plane_stride(out * in);
  for (int e = o0 * in; e < o1 * in; ++e) {
    Dtype s[3][N];  // G' du
    for (int j = 0; j < N; ++j) {
      F<M>::weights_adjoint(du + j * stride + e, N * stride, &s[0][j], N);
    }
    Dtype* g = weight_diff + e * 9;
    for (int i = 0; i < 3; ++i) {  // (G' du) G
      Dtype b[3];
      F<M>::weights_adjoint(s[i], 1, b, 1);
      for (int j = 0; j < 3; ++j) { g[3 * i + j] += b[j]; }
    }
  }
}

// The buffer of the convolutions of this thread: one for all the layers
// (they run one at a time), grown to the largest, rather than one each.
template <typename Dtype>
Blob<Dtype>* thread_buffer() {
  static thread_local Blob<Dtype> buffer;
  return &buffer;
}

// The values of a convolution's buffer: N^2 planes of out x in (u or du),
// then a band's v (N^2 x in x tiles), then its m (or dm), each plane with
// the most plane_stride adds
int64_t buffer_values(const Tiling& t, int num, int in, int out) {
  const int64_t most = int64_t(std::min<int64_t>(t.band_rows(),
      int64_t(num) * t.tiles_h)) * t.tiles_w;
  return t.positions() * (int64_t(out) * in + (in + out) * most + 3 * 32);
}

// The tile size: F(4x4, 3x3) takes 36 products per 16 outputs and input
// channel where F(2x2, 3x3) takes 64, and its transformed tiles are 36
// values per 16 outputs rather than 64; but its transformed weights are 36
// values per kernel rather than 16, made at each call. So F(4x4, 3x3) from
// kMinTiles4 of its tiles a batch, F(2x2, 3x3) below. On 2 cores, F(4x4,
// 3x3) against F(2x2, 3x3), a layer at a time: VGG-16's conv1_2 to conv3_3
// at batch 1 (196 tiles or more) 1.2-1.4x, conv4 at batch 8 (392) 1.2x;
// conv4 at batch 1 and 2 (49, 98) 0.9x, conv5 at batch 8 (128) 0.85x.
const int kMinTiles4 = 160;

// the tiling of the tile size winograd_tile_cpu chooses
Tiling chosen_tiling(int num, int height, int width, int pad_h, int pad_w) {
  return tiling(winograd_tile_cpu(num, height, width, pad_h, pad_w), height,
      width, pad_h, pad_w);
}

// A convolution's tiling and its buffer, the thread's
template <typename Dtype>
struct Plan {
  Tiling t;
  int rows, band;  // tile rows in all, and a band's
  Dtype *u, *v, *m;
  Plan(int num, int in, int height, int width, int pad_h, int pad_w,
      int out) : t(chosen_tiling(num, height, width, pad_h, pad_w)) {
    band = t.band_rows();
    rows = num * t.tiles_h;
    const int64_t values = buffer_values(t, num, in, out);
    CHECK_LE(values, INT_MAX) << "Winograd: buffer too large";
    Blob<Dtype>* buffer = thread_buffer<Dtype>();
    buffer->Reshape(1, 1, 1, values);
    const int most = std::min(band, rows) * t.tiles_w;
    u = buffer->mutable_cpu_data();
    v = u + t.positions() * plane_stride(out * in);
    m = v + t.positions() * plane_stride(in * most);
  }
};

template <int M, typename Dtype>
void conv(const Plan<Dtype>& p, const Dtype* w, bool flip,
    const Dtype* input, int in, int in_stride, int out, int out_stride,
    Dtype* output) {
  const int P = F<M>::N * F<M>::N, u_stride = plane_stride(out * in);
  // u is out x in, or with flip in x out (w's shape)
  const int u_rows = flip ? in : out, u_cols = flip ? out : in;
  parallel_for(u_rows, P * int64_t(in) * out, [&](int r0, int r1) {
    transform_weights<M>(w, flip, u_rows, u_cols, p.u, r0, r1);
  });
  for (int q0 = 0; q0 < p.rows; q0 += p.band) {
    const int q1 = std::min(p.rows, q0 + p.band);
    const int tiles = (q1 - q0) * p.t.tiles_w;
    parallel_for(in, P * int64_t(in) * tiles, [&](int c0, int c1) {
      transform_input<M>(p.t, input, in, in_stride, q0, q1, p.v, c0, c1);
    });
    for (int xi = 0; xi < P; ++xi) {
      caffe_cpu_gemm<Dtype>(flip ? CblasTrans : CblasNoTrans, CblasNoTrans,
          out, tiles, in, Dtype(1), p.u + xi * u_stride,
          p.v + xi * plane_stride(in * tiles), Dtype(0),
          p.m + xi * plane_stride(out * tiles));
    }
    parallel_for(out, P * int64_t(out) * tiles, [&](int o0, int o1) {
      transform_output<M>(p.t, p.m, out, out_stride, q0, q1, output, o0, o1);
    });
  }
}

template <int M, typename Dtype>
void conv_weight_diff(const Plan<Dtype>& p, const Dtype* input,
    const Dtype* output_diff, int in, int in_stride, int out, int out_stride,
    Dtype* weight_diff) {
  const int P = F<M>::N * F<M>::N, u_stride = plane_stride(out * in);
  for (int q0 = 0; q0 < p.rows; q0 += p.band) {
    const int q1 = std::min(p.rows, q0 + p.band);
    const int tiles = (q1 - q0) * p.t.tiles_w;
    parallel_for(in, P * int64_t(in) * tiles, [&](int c0, int c1) {
      transform_input<M>(p.t, input, in, in_stride, q0, q1, p.v, c0, c1);
    });
    parallel_for(out, P * int64_t(out) * tiles, [&](int o0, int o1) {
      transform_output_adjoint<M>(p.t, output_diff, out, out_stride, q0, q1,
          p.m, o0, o1);
    });
    for (int xi = 0; xi < P; ++xi) {
      caffe_cpu_gemm<Dtype>(CblasNoTrans, CblasTrans, out, in, tiles,
          Dtype(1), p.m + xi * plane_stride(out * tiles),
          p.v + xi * plane_stride(in * tiles), Dtype(q0 ? 1 : 0),
          p.u + xi * u_stride);
    }
  }
  parallel_for(out, 9 * int64_t(out) * in, [&](int o0, int o1) {
    transform_weights_adjoint<M>(p.u, out, in, weight_diff, o0, o1);
  });
}

}  // namespace

int winograd_tile_cpu(int num, int height, int width, int pad_h, int pad_w) {
  const Tiling t = tiling(4, height, width, pad_h, pad_w);
  return int64_t(num) * t.tiles_h * t.tiles_w >= kMinTiles4 ? 4 : 2;
}

template <typename Dtype>
void winograd_conv_cpu(const Dtype* w, bool flip, const Dtype* input,
    int num, int in, int in_stride, int height, int width, int pad_h,
    int pad_w, int out, int out_stride, Dtype* output) {
  Plan<Dtype> p(num, in, height, width, pad_h, pad_w, out);
  if (p.t.m == 4) {
    conv<4>(p, w, flip, input, in, in_stride, out, out_stride, output);
  } else {
    conv<2>(p, w, flip, input, in, in_stride, out, out_stride, output);
  }
}

template <typename Dtype>
void winograd_weight_diff_cpu(const Dtype* input, const Dtype* output_diff,
    int num, int in, int in_stride, int height, int width, int pad_h,
    int pad_w, int out, int out_stride, Dtype* weight_diff) {
  Plan<Dtype> p(num, in, height, width, pad_h, pad_w, out);
  if (p.t.m == 4) {
    conv_weight_diff<4>(p, input, output_diff, in, in_stride, out,
        out_stride, weight_diff);
  } else {
    conv_weight_diff<2>(p, input, output_diff, in, in_stride, out,
        out_stride, weight_diff);
  }
}

bool winograd_fits_cpu(int num, int in, int height, int width, int pad_h,
    int pad_w, int out) {
  return buffer_values(chosen_tiling(num, height, width, pad_h, pad_w), num,
      in, out) <= INT_MAX;
}

template void winograd_conv_cpu<float>(const float*, bool, const float*,
    int, int, int, int, int, int, int, int, int, float*);
template void winograd_conv_cpu<double>(const double*, bool, const double*,
    int, int, int, int, int, int, int, int, int, double*);
template void winograd_weight_diff_cpu<float>(const float*, const float*,
    int, int, int, int, int, int, int, int, int, float*);
template void winograd_weight_diff_cpu<double>(const double*, const double*,
    int, int, int, int, int, int, int, int, int, double*);

}  // namespace caffe
