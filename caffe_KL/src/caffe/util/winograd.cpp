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

// F(2x2, 3x3) for correlation, as CNNs compute it:
//   B' = [1 0 -1 0; 0 1 1 0; 0 -1 1 0; 0 1 0 -1]
//   G  = [1 0 0; 1/2 1/2 1/2; 1/2 -1/2 1/2; 0 0 1]
//   A' = [1 1 1 0; 0 1 -1 -1]
// The 16 positions xi = 4 i + j of a transformed tile are 16 separate
// matrices: u[xi] is out x in, a band's v[xi] in x tiles and m[xi] out x
// tiles, so each position's products over the channels are one GEMM.

namespace {

// The planes of u, v and m (16 each) lie this far apart: their size and 16
// values more, and 16 more again where that is a multiple of 512 values, so
// that they are never a multiple of 4 KiB apart (with sizes of 2^n values
// they were, and the transforms' 16 loads or stores in a row contended for
// the same cache set: 2-3x slower).
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

template <typename F>
void parallel_for(int n, int64_t values, const F& f) {
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

// u (16 planes of rows x cols) from w (rows x cols x 3 x 3) by G g G';
// rows [r0, r1)
template <typename Dtype>
void transform_weights(const Dtype* w, int rows, int cols, Dtype* u, int r0,
    int r1) {
  const int stride = plane_stride(rows * cols);
  const Dtype h = 0.5;
  Dtype k[9][kBlock], t[4][3][kBlock];
  for (int r = r0; r < r1; ++r) {
    for (int c0 = 0; c0 < cols; c0 += kBlock) {
      const int n = std::min(kBlock, cols - c0);
      for (int c = 0; c < n; ++c) {
        const Dtype* g = w + (r * cols + c0 + c) * 9;
        for (int i = 0; i < 9; ++i) { k[i][c] = g[i]; }
      }
      for (int j = 0; j < 3; ++j) {  // G g
        for (int c = 0; c < n; ++c) {
          t[0][j][c] = k[j][c];
          t[1][j][c] = (k[j][c] + k[3 + j][c] + k[6 + j][c]) * h;
          t[2][j][c] = (k[j][c] - k[3 + j][c] + k[6 + j][c]) * h;
          t[3][j][c] = k[6 + j][c];
        }
      }
      for (int i = 0; i < 4; ++i) {  // (G g) G'
        Dtype* d = u + 4 * i * stride + r * cols + c0;
        for (int c = 0; c < n; ++c) {
          d[c] = t[i][0][c];
          d[stride + c] = (t[i][0][c] + t[i][1][c] + t[i][2][c]) * h;
          d[2 * stride + c] = (t[i][0][c] - t[i][1][c] + t[i][2][c]) * h;
          d[3 * stride + c] = t[i][2][c];
        }
      }
    }
  }
}

// The data gradient's weights need no transform of their own: turning a
// kernel g by 180 degrees (R g R, R reversing 3 values) reverses the columns
// of G, which G R = P G turns into swapping its rows 0 and 3 (P). So the
// turned kernel's G R g R G' = P (G g G') P' is the same 16 values with
// positions 0 and 3 of each axis swapped: position xi of the data gradient
// reads u[turned(xi)], transposed.
int turned(int xi) {
  const int p[4] = {3, 1, 2, 0};
  return 4 * p[xi / 4] + p[xi % 4];
}

// A band is whole rows of tiles, of one image or several: row q is tile
// row q % tiles_h of image q / tiles_h. It holds about kBandTiles tiles.
const int kBandTiles = 2048;

struct Tiling {
  int height, width, pad_h, pad_w, out_h, out_w, tiles_h, tiles_w;
  // the width of a row of tiles' inputs, padding included
  int padded_w() const { return 2 * tiles_w + 2; }
};

Tiling tiling(int height, int width, int pad_h, int pad_w) {
  CHECK(pad_h >= 0 && pad_w >= 0) << "Winograd: negative padding";
  Tiling t;
  t.height = height; t.width = width; t.pad_h = pad_h; t.pad_w = pad_w;
  t.out_h = height + 2 * pad_h - 2; t.out_w = width + 2 * pad_w - 2;
  t.tiles_h = (t.out_h + 1) / 2; t.tiles_w = (t.out_w + 1) / 2;
  return t;
}

// v (16 x in x tiles) for the tile rows [q0, q1), channels [c0, c1): each
// tile row's 4 input rows, padded with zeros, then B' d B, whose left
// product is the same for the whole row of tiles.
template <typename Dtype>
void transform_input(const Tiling& t, const Dtype* input, int in,
    int in_stride, int q0, int q1, Dtype* v, int c0, int c1) {
  const int pw = t.padded_w(), tiles = (q1 - q0) * t.tiles_w;
  const int stride = plane_stride(in * tiles);
  std::vector<Dtype> rows(8 * pw);
  Dtype* __restrict__ r = &rows[0];
  Dtype* __restrict__ e = r + 4 * pw;
  for (int c = c0; c < c1; ++c) {
    for (int q = q0; q < q1; ++q) {
      const Dtype* x = input + (q / t.tiles_h) * in_stride +
          c * t.height * t.width;
      const int y0 = 2 * (q % t.tiles_h) - t.pad_h;
      for (int i = 0; i < 4; ++i) {
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
      for (int j = 0; j < pw; ++j) {  // B' d
        e[j] = r[j] - r[2 * pw + j];
        e[pw + j] = r[pw + j] + r[2 * pw + j];
        e[2 * pw + j] = r[2 * pw + j] - r[pw + j];
        e[3 * pw + j] = r[pw + j] - r[3 * pw + j];
      }
      for (int i = 0; i < 4; ++i) {  // (B' d) B
        const Dtype* s = e + i * pw;
        Dtype* d = v + 4 * i * stride + c * tiles + (q - q0) * t.tiles_w;
        for (int x = 0; x < t.tiles_w; ++x) {
          d[x] = s[2 * x] - s[2 * x + 2];
          d[stride + x] = s[2 * x + 1] + s[2 * x + 2];
          d[2 * stride + x] = s[2 * x + 2] - s[2 * x + 1];
          d[3 * stride + x] = s[2 * x + 1] - s[2 * x + 3];
        }
      }
    }
  }
}

// output for the tile rows [q0, q1), channels [o0, o1), from m (16 x out x
// tiles): A' m A for each tile, the blocks past the output's last row or
// column dropped
template <typename Dtype>
void transform_output(const Tiling& t, const Dtype* m, int out,
    int out_stride, int q0, int q1, Dtype* output, int o0, int o1) {
  const int tiles = (q1 - q0) * t.tiles_w, stride = plane_stride(out * tiles);
  std::vector<Dtype> rows(4 * t.tiles_w);
  Dtype* __restrict__ row0 = &rows[0];
  Dtype* __restrict__ row1 = row0 + 2 * t.tiles_w;
  for (int o = o0; o < o1; ++o) {
    for (int q = q0; q < q1; ++q) {
      const Dtype* p = m + o * tiles + (q - q0) * t.tiles_w;
      for (int x = 0; x < t.tiles_w; ++x) {
        Dtype s[2][4];  // A' m
        for (int j = 0; j < 4; ++j) {
          const Dtype m0 = p[j * stride + x], m1 = p[(4 + j) * stride + x],
              m2 = p[(8 + j) * stride + x], m3 = p[(12 + j) * stride + x];
          s[0][j] = m0 + m1 + m2;
          s[1][j] = m1 - m2 - m3;
        }
        row0[2 * x] = s[0][0] + s[0][1] + s[0][2];  // (A' m) A
        row0[2 * x + 1] = s[0][1] - s[0][2] - s[0][3];
        row1[2 * x] = s[1][0] + s[1][1] + s[1][2];
        row1[2 * x + 1] = s[1][1] - s[1][2] - s[1][3];
      }
      const int y = 2 * (q % t.tiles_h);
      Dtype* dst = output + (q / t.tiles_h) * out_stride +
          (o * t.out_h + y) * t.out_w;
      std::copy(row0, row0 + t.out_w, dst);
      if (y + 1 < t.out_h) {
        std::copy(row1, row1 + t.out_w, dst + t.out_w);
      }
    }
  }
}

// The weight gradient runs the convolution's steps backwards: each tile's
// output gradient dy (2 x 2) to dm = A dy A' (transform_output's adjoint),
// then for each position one GEMM over the tiles, du = dm v', and the
// weight gradient G' du G (transform_weights' adjoint).

// dm (16 x out x tiles) for the tile rows [q0, q1), channels [o0, o1), from
// the output gradient; the blocks past its last row or column are 0
template <typename Dtype>
void transform_output_adjoint(const Tiling& t, const Dtype* output,
    int out, int out_stride, int q0, int q1, Dtype* dm, int o0, int o1) {
  const int tiles = (q1 - q0) * t.tiles_w, stride = plane_stride(out * tiles);
  std::vector<Dtype> rows(4 * t.tiles_w, Dtype(0));
  Dtype* __restrict__ row0 = &rows[0];
  Dtype* __restrict__ row1 = row0 + 2 * t.tiles_w;
  for (int o = o0; o < o1; ++o) {
    for (int q = q0; q < q1; ++q) {
      const int y = 2 * (q % t.tiles_h);
      const Dtype* src = output + (q / t.tiles_h) * out_stride +
          (o * t.out_h + y) * t.out_w;
      std::copy(src, src + t.out_w, row0);
      if (y + 1 < t.out_h) {
        std::copy(src + t.out_w, src + 2 * t.out_w, row1);
      } else {
        std::fill(row1, row1 + t.out_w, Dtype(0));
      }
      Dtype* d = dm + o * tiles + (q - q0) * t.tiles_w;
      for (int x = 0; x < t.tiles_w; ++x) {
        const Dtype a = row0[2 * x], b = row0[2 * x + 1], c = row1[2 * x],
            e = row1[2 * x + 1];
        const Dtype s[4][2] = {{a, b}, {a + c, b + e}, {a - c, b - e},
            {-c, -e}};  // A dy
        for (int i = 0; i < 4; ++i) {  // (A dy) A'
          d[4 * i * stride + x] = s[i][0];
          d[(4 * i + 1) * stride + x] = s[i][0] + s[i][1];
          d[(4 * i + 2) * stride + x] = s[i][0] - s[i][1];
          d[(4 * i + 3) * stride + x] = -s[i][1];
        }
      }
    }
  }
}

// weight_diff (out x in x 3 x 3) += G' du G, du 16 planes of out x in;
// outputs [o0, o1)
template <typename Dtype>
void transform_weights_adjoint(const Dtype* du, int out, int in,
    Dtype* weight_diff, int o0, int o1) {
  const int stride = plane_stride(out * in);
  const Dtype h = 0.5;
  for (int e = o0 * in; e < o1 * in; ++e) {
    Dtype s[3][4];  // G' du
    for (int j = 0; j < 4; ++j) {
      const Dtype d0 = du[j * stride + e], d1 = du[(4 + j) * stride + e],
          d2 = du[(8 + j) * stride + e], d3 = du[(12 + j) * stride + e];
      s[0][j] = d0 + (d1 + d2) * h;
      s[1][j] = (d1 - d2) * h;
      s[2][j] = (d1 + d2) * h + d3;
    }
    Dtype* g = weight_diff + e * 9;
    for (int a = 0; a < 3; ++a) {  // (G' du) G
      g[3 * a] += s[a][0] + (s[a][1] + s[a][2]) * h;
      g[3 * a + 1] += (s[a][1] - s[a][2]) * h;
      g[3 * a + 2] += (s[a][1] + s[a][2]) * h + s[a][3];
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

// tile rows a band
int band_rows(const Tiling& t) { return std::max(1, kBandTiles / t.tiles_w); }

// The values of a convolution's buffer: 16 planes of out x in (u or du),
// then a band's v (16 x in x tiles), then its m (or dm), each plane with
// the most plane_stride adds
int64_t buffer_values(const Tiling& t, int num, int in, int out) {
  const int64_t most = int64_t(std::min<int64_t>(band_rows(t),
      int64_t(num) * t.tiles_h)) * t.tiles_w;
  return 16 * (int64_t(out) * in + (in + out) * most + 3 * 32);
}

// A convolution's tiling and its buffer, the thread's
template <typename Dtype>
struct Plan {
  Tiling t;
  int rows, band;  // tile rows in all, and a band's
  Dtype *u, *v, *m;
  Plan(int num, int in, int height, int width, int pad_h, int pad_w,
      int out) : t(tiling(height, width, pad_h, pad_w)) {
    band = band_rows(t);
    rows = num * t.tiles_h;
    const int64_t values = buffer_values(t, num, in, out);
    CHECK_LE(values, INT_MAX) << "Winograd: buffer too large";
    Blob<Dtype>* buffer = thread_buffer<Dtype>();
    buffer->Reshape(1, 1, 1, values);
    const int most = std::min(band, rows) * t.tiles_w;
    u = buffer->mutable_cpu_data();
    v = u + 16 * plane_stride(out * in);
    m = v + 16 * plane_stride(in * most);
  }
};

}  // namespace

template <typename Dtype>
void winograd_conv_cpu(const Dtype* w, bool flip, const Dtype* input,
    int num, int in, int in_stride, int height, int width, int pad_h,
    int pad_w, int out, int out_stride, Dtype* output) {
  Plan<Dtype> p(num, in, height, width, pad_h, pad_w, out);
  const int u_stride = plane_stride(out * in);
  // u is out x in, or with flip in x out (w's shape)
  const int u_rows = flip ? in : out, u_cols = flip ? out : in;
  parallel_for(u_rows, 16 * int64_t(in) * out, [&](int r0, int r1) {
    transform_weights(w, u_rows, u_cols, p.u, r0, r1);
  });
  for (int q0 = 0; q0 < p.rows; q0 += p.band) {
    const int q1 = std::min(p.rows, q0 + p.band);
    const int tiles = (q1 - q0) * p.t.tiles_w;
    parallel_for(in, 16 * int64_t(in) * tiles, [&](int c0, int c1) {
      transform_input(p.t, input, in, in_stride, q0, q1, p.v, c0, c1);
    });
    for (int xi = 0; xi < 16; ++xi) {
      caffe_cpu_gemm<Dtype>(flip ? CblasTrans : CblasNoTrans, CblasNoTrans,
          out, tiles, in, Dtype(1), p.u + (flip ? turned(xi) : xi) * u_stride,
          p.v + xi * plane_stride(in * tiles), Dtype(0),
          p.m + xi * plane_stride(out * tiles));
    }
    parallel_for(out, 16 * int64_t(out) * tiles, [&](int o0, int o1) {
      transform_output(p.t, p.m, out, out_stride, q0, q1, output, o0, o1);
    });
  }
}

template <typename Dtype>
void winograd_weight_diff_cpu(const Dtype* input, const Dtype* output_diff,
    int num, int in, int in_stride, int height, int width, int pad_h,
    int pad_w, int out, int out_stride, Dtype* weight_diff) {
  Plan<Dtype> p(num, in, height, width, pad_h, pad_w, out);
  const int u_stride = plane_stride(out * in);
  for (int q0 = 0; q0 < p.rows; q0 += p.band) {
    const int q1 = std::min(p.rows, q0 + p.band);
    const int tiles = (q1 - q0) * p.t.tiles_w;
    parallel_for(in, 16 * int64_t(in) * tiles, [&](int c0, int c1) {
      transform_input(p.t, input, in, in_stride, q0, q1, p.v, c0, c1);
    });
    parallel_for(out, 16 * int64_t(out) * tiles, [&](int o0, int o1) {
      transform_output_adjoint(p.t, output_diff, out, out_stride, q0, q1,
          p.m, o0, o1);
    });
    for (int xi = 0; xi < 16; ++xi) {
      caffe_cpu_gemm<Dtype>(CblasNoTrans, CblasTrans, out, in, tiles,
          Dtype(1), p.m + xi * plane_stride(out * tiles),
          p.v + xi * plane_stride(in * tiles), Dtype(q0 ? 1 : 0),
          p.u + xi * u_stride);
    }
  }
  parallel_for(out, 9 * int64_t(out) * in, [&](int o0, int o1) {
    transform_weights_adjoint(p.u, out, in, weight_diff, o0, o1);
  });
}

bool winograd_fits_cpu(int num, int in, int height, int width, int pad_h,
    int pad_w, int out) {
  return buffer_values(tiling(height, width, pad_h, pad_w), num, in, out) <=
      INT_MAX;
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
