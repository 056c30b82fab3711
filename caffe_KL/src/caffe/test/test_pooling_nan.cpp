// Max pooling over NaN (a diverged run) keeps a valid argmax (patch 0005).
#include <cmath>
#include <limits>
#include <vector>

#include "gtest/gtest.h"

#include "caffe/blob.hpp"
#include "caffe/common.hpp"
#include "caffe/layers/pooling_layer.hpp"

#include "caffe/test/test_caffe_main.hpp"

namespace caffe {

template <typename TypeParam>
class PoolingLayerNaNTest : public MultiDeviceTest<TypeParam> {};

TYPED_TEST_CASE(PoolingLayerNaNTest, TestDtypesAndDevices);

TYPED_TEST(PoolingLayerNaNTest, TestMaxOfNaNHasValidArgmax) {
  typedef typename TypeParam::Dtype Dtype;
  Blob<Dtype> bottom(2, 1, 4, 4), top, mask;
  Dtype* x = bottom.mutable_cpu_data();
  for (int i = 0; i < bottom.count(); ++i) {
    // the first image all NaN, the second NaN in one window only
    x[i] = (i < 16 || i == 16 + 5) ? std::numeric_limits<Dtype>::quiet_NaN()
                                   : Dtype(i);
  }
  vector<Blob<Dtype>*> bottom_vec(1, &bottom), top_vec(1, &top);
  top_vec.push_back(&mask);
  LayerParameter param;
  PoolingParameter* pooling = param.mutable_pooling_param();
  pooling->set_kernel_size(2);
  pooling->set_stride(2);
  pooling->set_pool(PoolingParameter_PoolMethod_MAX);
  PoolingLayer<Dtype> layer(param);
  layer.SetUp(bottom_vec, top_vec);
  layer.Forward(bottom_vec, top_vec);
  for (int i = 0; i < mask.count(); ++i) {
    EXPECT_GE(mask.cpu_data()[i], 0) << i;
    EXPECT_LT(mask.cpu_data()[i], 16) << i;
  }
  EXPECT_TRUE(std::isnan(top.cpu_data()[0]));
  EXPECT_TRUE(std::isnan(top.cpu_data()[4]));   // the window holding NaN
  EXPECT_EQ(Dtype(16 + 15), top.cpu_data()[7]);  // an ordinary window
  caffe_set(top.count(), Dtype(1), top.mutable_cpu_diff());
  layer.Backward(top_vec, vector<bool>(1, true), bottom_vec);
  Dtype total = 0;
  for (int i = 0; i < bottom.count(); ++i) total += bottom.cpu_diff()[i];
  EXPECT_EQ(Dtype(top.count()), total);  // every gradient landed in bottom
}

}  // namespace caffe
