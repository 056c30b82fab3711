#ifndef CAFFE_UTIL_WINOGRAD_HPP_
#define CAFFE_UTIL_WINOGRAD_HPP_

// 3x3 convolution of stride 1 on the CPU by Winograd's minimal filtering
// (Lavin and Gray, "Fast Algorithms for Convolutional Neural Networks",
// 2016), F(4x4, 3x3) or F(2x2, 3x3) (winograd_tile_cpu): each 4x4 block of
// outputs takes 36 products per input channel instead of 144, each 2x2
// block 16 instead of 36. The input is cut into tiles of 6x6 (or 4x4)
// overlapping by 2, each transformed to V = B' d B; the weights to
// U = G g G'; then for each of the 36 (or 16) positions of a tile one GEMM,
// M = U V over the channels; and each output block is A' M A. F(2x2, 3x3)'s
// B, G and A hold only 0, +-1 and 1/2; F(4x4, 3x3)'s also 2, 4, 5, 8 and
// 1/4, 1/6, 1/12, 1/24, so its results differ from the direct sums by
// several times their rounding (about 1e-5 relative in float, against
// 1e-6).

namespace caffe {

/// The convolution of num images of in channels (height x width each, an
/// image every in_stride values) with weights w, padded by pad_h and pad_w
/// (at least 0): out channels of (height + 2 pad_h - 2) x (width + 2 pad_w
/// - 2), an image every out_stride values, overwritten. w is out x in x 3 x
/// 3; with flip it is in x out x 3 x 3 and is used transposed and turned by
/// 180 degrees, which makes this the data gradient of the convolution by w
/// of out channels into in, padded by 2 - pad (so a layer takes this path
/// up to pad 2). The transformed weights and a band of transformed tiles
/// are kept in a buffer of the calling thread's, the same for all layers.
template <typename Dtype>
void winograd_conv_cpu(const Dtype* w, bool flip, const Dtype* input,
    int num, int in, int in_stride, int height, int width, int pad_h,
    int pad_w, int out, int out_stride, Dtype* output);

/// The gradient of winograd_conv_cpu's weights (without flip), added to
/// weight_diff (out x in x 3 x 3): for num images input as above and the
/// gradient of their outputs, output_diff (an image every out_stride).
template <typename Dtype>
void winograd_weight_diff_cpu(const Dtype* input, const Dtype* output_diff,
    int num, int in, int in_stride, int height, int width, int pad_h,
    int pad_w, int out, int out_stride, Dtype* weight_diff);

/// The size of the output blocks (4 or 2) that these two functions take
/// for num images of height x width padded by pad_h and pad_w.
int winograd_tile_cpu(int num, int height, int width, int pad_h, int pad_w);

/// Whether winograd_conv_cpu's buffer for these sizes (as above) has under
/// 2^31 values, as Caffe's blobs must: a very wide input may not.
bool winograd_fits_cpu(int num, int in, int height, int width, int pad_h,
    int pad_w, int out);

}  // namespace caffe

#endif  // CAFFE_UTIL_WINOGRAD_HPP_
