// Convolution 3x3 of stride 1 on the CPU by Winograd's F(2x2, 3x3) and
// F(4x4, 3x3) (patch 0019): against a direct convolution in float and
// double, and gradient-checked (F(2x2, 3x3); F(4x4, 3x3) needs inputs too
// large for the checker, and its gradients are compared with float64 NumPy
// in tests/test_conv_cpu.py). The shapes reach it: 16 channels, over 100
// tiles of 2x2 a batch, and for F(4x4, 3x3) over 128 of 4x4.
#include <vector>

#include "gtest/gtest.h"

#include "caffe/blob.hpp"
#include "caffe/common.hpp"
#include "caffe/filler.hpp"
#include "caffe/layers/conv_layer.hpp"
#include "caffe/layers/deconv_layer.hpp"
#include "caffe/util/winograd.hpp"

#include "caffe/test/test_caffe_main.hpp"
#include "caffe/test/test_gradient_check_util.hpp"

namespace caffe {

template <typename TypeParam>
class WinogradConvolutionTest : public MultiDeviceTest<TypeParam> {
  typedef typename TypeParam::Dtype Dtype;

 protected:
  // 3 images of 16 channels, 11 x 13 (output 11 x 13 with pad 1: 6 x 7
  // tiles an image, the last row and column of them cut)
  WinogradConvolutionTest() : bottom_(3, 16, 11, 13) {
    FillerParameter filler_param;
    // small values, for the float objective of the gradient check (half
    // the sum of the squares of the outputs) to keep its precision
    filler_param.set_std(0.1);
    GaussianFiller<Dtype> filler(filler_param);
    filler.Fill(&bottom_);
    bottom_vec_.push_back(&bottom_);
    top_vec_.push_back(&top_);
  }

  LayerParameter param(int outputs, int pad_h, int pad_w) {
    LayerParameter layer_param;
    ConvolutionParameter* conv = layer_param.mutable_convolution_param();
    conv->add_kernel_size(3);
    conv->set_pad_h(pad_h);
    conv->set_pad_w(pad_w);
    conv->set_num_output(outputs);
    conv->mutable_weight_filler()->set_type("gaussian");
    conv->mutable_weight_filler()->set_std(0.1);
    conv->mutable_bias_filler()->set_type("gaussian");
    conv->mutable_bias_filler()->set_std(0.1);
    return layer_param;
  }

  // The layer's outputs for bottom with pads (1, 1), (0, 2) and (2, 0), each
  // by tile size, against direct sums in double
  void ExpectDirectSums(Blob<Dtype>* bottom, int tile) {
    const int pads[3][2] = {{1, 1}, {0, 2}, {2, 0}};
    const double tolerance = sizeof(Dtype) == 8 ? 1e-10 : 1e-4;
    Blob<Dtype> top;
    vector<Blob<Dtype>*> bottom_vec(1, bottom), top_vec(1, &top);
    const Blob<Dtype>& x = *bottom;
    for (int p = 0; p < 3; ++p) {
      const int ph = pads[p][0], pw = pads[p][1];
      EXPECT_EQ(tile, winograd_tile_cpu(x.num(), x.height(), x.width(), ph,
          pw)) << "pad " << ph << "," << pw;
      ConvolutionLayer<Dtype> layer(param(18, ph, pw));
      layer.SetUp(bottom_vec, top_vec);
      layer.Forward(bottom_vec, top_vec);
      const Blob<Dtype>& w = *layer.blobs()[0];
      const Blob<Dtype>& b = *layer.blobs()[1];
      const int oh = x.height() + 2 * ph - 2, ow = x.width() + 2 * pw - 2;
      ASSERT_EQ(oh, top.height());
      ASSERT_EQ(ow, top.width());
      for (int n = 0; n < x.num(); ++n) {
        for (int o = 0; o < 18; ++o) {
          for (int y = 0; y < oh; ++y) {
            for (int z = 0; z < ow; ++z) {
              double sum = b.cpu_data()[o];
              for (int c = 0; c < x.channels(); ++c) {
                for (int i = 0; i < 3; ++i) {
                  for (int j = 0; j < 3; ++j) {
                    const int yy = y + i - ph, zz = z + j - pw;
                    if (yy < 0 || yy >= x.height() || zz < 0 ||
                        zz >= x.width()) {
                      continue;
                    }
                    sum += double(w.data_at(o, c, i, j)) *
                        x.data_at(n, c, yy, zz);
                  }
                }
              }
              EXPECT_NEAR(sum, top.data_at(n, o, y, z), tolerance)
                  << "pad " << ph << "," << pw << " at " << n << "," << o
                  << "," << y << "," << z;
            }
          }
        }
      }
    }
  }

  Blob<Dtype> bottom_, top_;
  vector<Blob<Dtype>*> bottom_vec_, top_vec_;
};

TYPED_TEST_CASE(WinogradConvolutionTest, TestDtypesAndDevices);

TYPED_TEST(WinogradConvolutionTest, TestForwardMatchesDirectSums) {
  // 6 x 7 tiles of 2x2 an image with pad 1, 36 of 4x4 in all: F(2x2, 3x3)
  this->ExpectDirectSums(&this->bottom_, 2);
}

TYPED_TEST(WinogradConvolutionTest, TestForwardMatchesDirectSums4x4) {
  typedef typename TypeParam::Dtype Dtype;
  // 4 images of 21 x 27 (with pad 1, 6 x 7 tiles of 4x4 an image, the last
  // row and column of them cut to 1 and 3): F(4x4, 3x3)
  Blob<Dtype> bottom(4, 16, 21, 27);
  FillerParameter filler_param;
  filler_param.set_std(0.1);
  GaussianFiller<Dtype> filler(filler_param);
  filler.Fill(&bottom);
  this->ExpectDirectSums(&bottom, 4);
}

// F(4x4, 3x3) from 160 of its tiles a batch
TYPED_TEST(WinogradConvolutionTest, TestTileSize) {
  EXPECT_EQ(2, winograd_tile_cpu(1, 4, 636, 1, 1));  // 1 x 159 tiles
  EXPECT_EQ(4, winograd_tile_cpu(1, 4, 640, 1, 1));  // 1 x 160
  EXPECT_EQ(4, winograd_tile_cpu(1, 4, 637, 1, 1));  // 1 x 160, one cut
  EXPECT_EQ(2, winograd_tile_cpu(1, 6, 638, 0, 0));  // the same, no pad
  EXPECT_EQ(4, winograd_tile_cpu(1, 6, 639, 0, 0));
  EXPECT_EQ(2, winograd_tile_cpu(1, 28, 28, 1, 1));  // VGG-16's conv4, 49
  EXPECT_EQ(4, winograd_tile_cpu(1, 56, 56, 1, 1));  // conv3, 196
  EXPECT_EQ(2, winograd_tile_cpu(3, 28, 28, 1, 1));  // conv4 at batch 3
  EXPECT_EQ(4, winograd_tile_cpu(4, 28, 28, 1, 1));  // and at batch 4
  EXPECT_EQ(2, winograd_tile_cpu(8, 14, 14, 1, 1));  // conv5 at batch 8
  EXPECT_EQ(4, winograd_tile_cpu(10, 14, 14, 1, 1));  // and at batch 10
}

// A layer that says whether it takes the path: the tests above pass on the
// other paths too, so this is what shows that they test this one.
template <typename Layer>
class Probe : public Layer {
 public:
  explicit Probe(const LayerParameter& param) : Layer(param) {}
  bool winograd() { return this->use_cpu_winograd(); }
};

TYPED_TEST(WinogradConvolutionTest, TestWhichConvolutionsTakeThePath) {
  typedef typename TypeParam::Dtype Dtype;
  struct Case {
    int num, channels, height, width, outputs, kernel, pad, stride, dilation,
        group;
    bool nd, winograd;
  };
  const Case cases[] = {
    {3, 16, 11, 13, 16, 3, 1, 1, 1, 1, false, true},   // 126 tiles
    {2, 16, 11, 13, 16, 3, 1, 1, 1, 1, false, false},  // 84 tiles
    {3, 15, 11, 13, 16, 3, 1, 1, 1, 1, false, false},  // 15 inputs
    {3, 16, 11, 13, 15, 3, 1, 1, 1, 1, false, false},  // 15 outputs
    {3, 16, 11, 13, 16, 3, 2, 1, 1, 1, false, true},   // pad 2
    {3, 16, 11, 13, 16, 3, 3, 1, 1, 1, false, false},  // pad 3
    {3, 16, 21, 23, 16, 3, 1, 2, 1, 1, false, false},  // stride 2
    {3, 16, 21, 23, 16, 3, 2, 1, 2, 1, false, false},  // dilation 2
    {3, 16, 11, 13, 16, 5, 2, 1, 1, 1, false, false},  // 5 x 5
    {3, 32, 11, 13, 32, 3, 1, 1, 1, 2, false, true},   // 16 a group
    {3, 32, 11, 13, 16, 3, 1, 1, 1, 2, false, false},  // 8 outputs a group
    {3, 16, 11, 13, 16, 3, 1, 1, 1, 1, true, false},   // force_nd_im2col
    // a buffer of 2^31 values or more (a band of one row of 4 M tiles)
    {1, 16, 1, 8388608, 16, 3, 1, 1, 1, 1, false, false},
    {1, 16, 1, 4194304, 16, 3, 1, 1, 1, 1, false, true},
  };
  for (int i = 0; i < sizeof(cases) / sizeof(cases[0]); ++i) {
    const Case& c = cases[i];
    Blob<Dtype> bottom(c.num, c.channels, c.height, c.width), top;
    vector<Blob<Dtype>*> bottom_vec(1, &bottom), top_vec(1, &top);
    LayerParameter param = this->param(c.outputs, c.pad, c.pad);
    ConvolutionParameter* conv = param.mutable_convolution_param();
    conv->set_kernel_size(0, c.kernel);
    conv->add_stride(c.stride);
    conv->add_dilation(c.dilation);
    conv->set_group(c.group);
    conv->set_force_nd_im2col(c.nd);
    Probe<ConvolutionLayer<Dtype> > layer(param);
    layer.SetUp(bottom_vec, top_vec);
    EXPECT_EQ(c.winograd, layer.winograd()) << "case " << i;
  }
  // a deconvolution never: its forward is a convolution's data gradient
  Probe<DeconvolutionLayer<Dtype> > deconv(this->param(16, 1, 1));
  deconv.SetUp(this->bottom_vec_, this->top_vec_);
  EXPECT_FALSE(deconv.winograd());
}

// The gradient check's objective is half the sum of the squares of all the
// outputs; in float its rounding is about the size of the differences it
// measures, so the check runs in double (the same template code), and the
// float gradients are compared with float64 NumPy in tests/test_conv_cpu.py.
template <typename TypeParam>
class WinogradConvolutionGradientTest
    : public WinogradConvolutionTest<TypeParam> {};

TYPED_TEST_CASE(WinogradConvolutionGradientTest,
    ::testing::Types<CPUDevice<double> >);

TYPED_TEST(WinogradConvolutionGradientTest, TestGradient) {
  typedef typename TypeParam::Dtype Dtype;
  ConvolutionLayer<Dtype> layer(this->param(16, 1, 1));
  GradientChecker<Dtype> checker(1e-2, 1e-3);
  checker.CheckGradient(&layer, this->bottom_vec_, this->top_vec_);
}

TYPED_TEST(WinogradConvolutionGradientTest, TestGradientPad2) {
  typedef typename TypeParam::Dtype Dtype;
  ConvolutionLayer<Dtype> layer(this->param(16, 2, 0));
  GradientChecker<Dtype> checker(1e-2, 1e-3);
  checker.CheckGradient(&layer, this->bottom_vec_, this->top_vec_);
}

}  // namespace caffe
