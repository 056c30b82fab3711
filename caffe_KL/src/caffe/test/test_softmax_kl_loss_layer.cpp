#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "boost/scoped_ptr.hpp"
#include "gtest/gtest.h"

#include "caffe/blob.hpp"
#include "caffe/common.hpp"
#include "caffe/filler.hpp"
#include "caffe/layer_factory.hpp"
#include "caffe/layers/softmax_kl_loss_layer.hpp"

#include "caffe/test/test_caffe_main.hpp"
#include "caffe/test/test_gradient_check_util.hpp"

using boost::shared_ptr;

namespace caffe {

// The math of JCDL in double precision, written from the definitions: for
// each position the softmax q of the logits, the loss KL(p || q) or
// -log q_argmax(p), and the gradient q * sum(p) - p or q - onehot.
static void ReferenceKL(const vector<double>& z, const vector<double>& p,
    int outer, int K, int inner, bool dominant, double* loss_sum,
    vector<double>* grad) {
  *loss_sum = 0;
  grad->assign(z.size(), 0);
  for (int i = 0; i < outer; ++i) {
    for (int j = 0; j < inner; ++j) {
      const int base = i * K * inner + j;
      double zmax = -INFINITY;
      for (int k = 0; k < K; ++k) zmax = std::max(zmax, z[base + k * inner]);
      double denom = 0;
      for (int k = 0; k < K; ++k) denom += std::exp(z[base + k * inner] - zmax);
      int c = 0;
      double p_sum = 0;
      for (int k = 0; k < K; ++k) {
        if (p[base + k * inner] > p[base + c * inner]) c = k;
        p_sum += p[base + k * inner];
      }
      for (int k = 0; k < K; ++k) {
        const int idx = base + k * inner;
        const double log_q = z[idx] - zmax - std::log(denom);
        const double q = std::exp(log_q);
        if (dominant) {
          if (k == c) *loss_sum -= log_q;
          (*grad)[idx] = q - (k == c ? 1 : 0);
        } else {
          if (p[idx] > 0) *loss_sum += p[idx] * (std::log(p[idx]) - log_q);
          (*grad)[idx] = q * p_sum - p[idx];
        }
      }
    }
  }
}

// The layer with its per-position losses in view.
template <typename Dtype>
class PerPositionLoss : public SoftmaxWithKLLossLayer<Dtype> {
 public:
  PerPositionLoss(const LayerParameter& param, bool dominant)
      : SoftmaxWithKLLossLayer<Dtype>(param) { this->dominant_ = dominant; }
  const Blob<Dtype>& per_position() const { return this->loss_; }
};

template <typename TypeParam>
class SoftmaxKLLossTestBase : public MultiDeviceTest<TypeParam> {
  typedef typename TypeParam::Dtype Dtype;

 protected:
  SoftmaxKLLossTestBase(const std::string& type)
      : type_(type),
        blob_bottom_data_(new Blob<Dtype>(10, 5, 2, 3)),
        blob_bottom_label_(new Blob<Dtype>(10, 5, 2, 3)),
        blob_top_loss_(new Blob<Dtype>()) {
    FillerParameter filler_param;
    filler_param.set_std(3);
    GaussianFiller<Dtype> filler(filler_param);
    filler.Fill(this->blob_bottom_data_);
    FillDistribution(blob_bottom_label_, 1);
    blob_bottom_vec_.push_back(blob_bottom_data_);
    blob_bottom_vec_.push_back(blob_bottom_label_);
    blob_top_vec_.push_back(blob_top_loss_);
  }
  virtual ~SoftmaxKLLossTestBase() {
    delete blob_bottom_data_;
    delete blob_bottom_label_;
    delete blob_top_loss_;
  }

  // 3 x 37 x 29 = 3219 positions of 4 classes, more than one block of
  // GPU threads and not a multiple of it: logits of std 2, labels random.
  void FillManyPositions(int seed) {
    blob_bottom_data_->Reshape(3, 4, 37, 29);
    blob_bottom_label_->Reshape(3, 4, 37, 29);
    FillerParameter filler_param;
    filler_param.set_std(2);
    GaussianFiller<Dtype> filler(filler_param);
    filler.Fill(blob_bottom_data_);
    FillDistribution(blob_bottom_label_, seed);
  }

  // Random distributions over axis 1 with about a third of the values zero.
  void FillDistribution(Blob<Dtype>* blob, int seed) {
    Caffe::set_random_seed(seed);
    const int K = blob->shape(1), inner = blob->count(2);
    Dtype* p = blob->mutable_cpu_data();
    for (int i = 0; i < blob->shape(0); ++i) {
      for (int j = 0; j < inner; ++j) {
        Dtype sum = 0;
        for (int k = 0; k < K; ++k) {
          Dtype v = (caffe_rng_rand() % 3 == 0) ? 0 :
                    Dtype(1 + caffe_rng_rand() % 100);
          if (k == 0 && v == 0) v = 1;  // never an all-zero row
          p[(i * K + k) * inner + j] = v;
          sum += v;
        }
        for (int k = 0; k < K; ++k) p[(i * K + k) * inner + j] /= sum;
      }
    }
  }

  static vector<bool> PropagateToLogits() {
    vector<bool> propagate_down(2, false);
    propagate_down[0] = true;
    return propagate_down;
  }

  shared_ptr<Layer<Dtype> > MakeLayer(LayerParameter param) {
    param.set_type(type_);
    return LayerRegistry<Dtype>::CreateLayer(param);
  }

  // Runs forward and backward and compares with ReferenceKL.
  void CheckAgainstReference(const LayerParameter& param, double normalizer,
                             double loss_weight, double tolerance) {
    shared_ptr<Layer<Dtype> > layer = MakeLayer(param);
    layer->SetUp(blob_bottom_vec_, blob_top_vec_);
    const Dtype loss = layer->Forward(blob_bottom_vec_, blob_top_vec_);
    layer->Backward(blob_top_vec_, PropagateToLogits(), blob_bottom_vec_);

    const Blob<Dtype>& z = *blob_bottom_data_;
    vector<double> zd(z.cpu_data(), z.cpu_data() + z.count());
    vector<double> pd(blob_bottom_label_->cpu_data(),
                      blob_bottom_label_->cpu_data() + z.count());
    double expected_sum;
    vector<double> grad;
    const int axis = 1;
    ReferenceKL(zd, pd, z.count(0, axis), z.shape(axis), z.count(axis + 1),
                type_ != "SoftmaxWithKLLoss", &expected_sum, &grad);
    const double expected = expected_sum / normalizer;
    EXPECT_TRUE(std::isfinite(loss));
    EXPECT_NEAR(blob_top_loss_->cpu_data()[0], expected,
                tolerance * std::max(1.0, std::fabs(expected)));
    EXPECT_NEAR(loss, loss_weight * expected,
                tolerance * std::max(1.0, std::fabs(loss_weight * expected)));
    for (int i = 0; i < z.count(); ++i) {
      const double g = loss_weight * grad[i] / normalizer;
      ASSERT_TRUE(std::isfinite(z.cpu_diff()[i]));
      EXPECT_NEAR(z.cpu_diff()[i], g, tolerance * std::max(1.0, std::fabs(g)))
          << "at " << i;
    }
  }

  // After Forward the per-position losses and the loss itself are where the
  // mode computed them: on the device in GPU mode, nothing copied to the host.
  void CheckLossStaysWhereComputed(const std::string& type) {
    LayerParameter param;
    param.set_type(type);
    PerPositionLoss<Dtype> layer(param, type != "SoftmaxWithKLLoss");
    layer.SetUp(blob_bottom_vec_, blob_top_vec_);
    blob_bottom_data_->mutable_cpu_data();  // fresh inputs, on the host
    const Dtype loss = layer.Forward(blob_bottom_vec_, blob_top_vec_);
    const SyncedMemory::SyncedHead where = Caffe::mode() == Caffe::GPU ?
        SyncedMemory::HEAD_AT_GPU : SyncedMemory::HEAD_AT_CPU;
    EXPECT_EQ(where, layer.per_position().data()->head());
    EXPECT_EQ(where, blob_top_loss_->data()->head());
    // ...and add up to the loss reported
    double sum = 0;
    const Dtype* l = layer.per_position().cpu_data();
    for (int i = 0; i < layer.per_position().count(); ++i) sum += l[i];
    EXPECT_NEAR(loss, sum / layer.per_position().count(),
                1e-5 * std::max(1.0, std::fabs(sum)));
  }

  // Logits and labels of two samples over K = 3, worked out by hand in the
  // tests below.
  void SetHandExample() {
    blob_bottom_data_->Reshape(2, 3, 1, 1);
    blob_bottom_label_->Reshape(2, 3, 1, 1);
    const Dtype z[] = {0, 0, 0, 0, Dtype(std::log(2.0)), Dtype(std::log(3.0))};
    const Dtype p[] = {0.5, 0.5, 0, 0, 0, 1};
    std::copy(z, z + 6, blob_bottom_data_->mutable_cpu_data());
    std::copy(p, p + 6, blob_bottom_label_->mutable_cpu_data());
  }

  // Logits of +-80, +-1000 and 0 mixed within each sample.
  void SetExtremeLogits() {
    Dtype* z = blob_bottom_data_->mutable_cpu_data();
    const Dtype extremes[] = {80, -80, 1000, -1000, 0, 79.5};
    for (int i = 0; i < blob_bottom_data_->count(); ++i) {
      z[i] = extremes[(i * 7 + i / 5) % 6];
    }
  }

  const std::string type_;
  Blob<Dtype>* const blob_bottom_data_;
  Blob<Dtype>* const blob_bottom_label_;
  Blob<Dtype>* const blob_top_loss_;
  vector<Blob<Dtype>*> blob_bottom_vec_;
  vector<Blob<Dtype>*> blob_top_vec_;
};

template <typename TypeParam>
class SoftmaxWithKLLossLayerTest : public SoftmaxKLLossTestBase<TypeParam> {
 protected:
  SoftmaxWithKLLossLayerTest()
      : SoftmaxKLLossTestBase<TypeParam>("SoftmaxWithKLLoss") {}
};

template <typename TypeParam>
class SoftmaxWithDominantLossLayerTest
    : public SoftmaxKLLossTestBase<TypeParam> {
 protected:
  SoftmaxWithDominantLossLayerTest()
      : SoftmaxKLLossTestBase<TypeParam>("SoftmaxWithDominantLoss") {}
};

TYPED_TEST_CASE(SoftmaxWithKLLossLayerTest, TestDtypesAndDevices);
TYPED_TEST_CASE(SoftmaxWithDominantLossLayerTest, TestDtypesAndDevices);

// ---- SoftmaxWithKLLoss

TYPED_TEST(SoftmaxWithKLLossLayerTest, TestForwardHandComputed) {
  typedef typename TypeParam::Dtype Dtype;
  this->SetHandExample();
  shared_ptr<Layer<Dtype> > layer = this->MakeLayer(LayerParameter());
  layer->SetUp(this->blob_bottom_vec_, this->blob_top_vec_);
  layer->Forward(this->blob_bottom_vec_, this->blob_top_vec_);
  // q1 = (1/3, 1/3, 1/3): KL = log 1.5; q2 = (1/6, 1/3, 1/2): KL = log 2.
  EXPECT_NEAR(this->blob_top_loss_->cpu_data()[0],
              (std::log(1.5) + std::log(2.0)) / 2, 1e-6);
}

TYPED_TEST(SoftmaxWithKLLossLayerTest, TestBackwardHandComputed) {
  typedef typename TypeParam::Dtype Dtype;
  this->SetHandExample();
  shared_ptr<Layer<Dtype> > layer = this->MakeLayer(LayerParameter());
  layer->SetUp(this->blob_bottom_vec_, this->blob_top_vec_);
  layer->Forward(this->blob_bottom_vec_, this->blob_top_vec_);
  layer->Backward(this->blob_top_vec_, this->PropagateToLogits(),
                  this->blob_bottom_vec_);
  // (q - p) / N
  const double g[] = {(1. / 3 - .5) / 2, (1. / 3 - .5) / 2, (1. / 3) / 2,
                      (1. / 6) / 2, (1. / 3) / 2, (.5 - 1) / 2};
  for (int i = 0; i < 6; ++i) {
    EXPECT_NEAR(this->blob_bottom_data_->cpu_diff()[i], g[i], 1e-6);
  }
}

TYPED_TEST(SoftmaxWithKLLossLayerTest, TestPerfectPredictionIsZero) {
  typedef typename TypeParam::Dtype Dtype;
  this->blob_bottom_data_->Reshape(4, 6, 1, 1);
  this->blob_bottom_label_->Reshape(4, 6, 1, 1);
  this->FillDistribution(this->blob_bottom_label_, 3);
  Dtype* z = this->blob_bottom_data_->mutable_cpu_data();
  const Dtype* p = this->blob_bottom_label_->cpu_data();
  for (int i = 0; i < 24; ++i) z[i] = p[i] > 0 ? std::log(p[i]) : -200;
  shared_ptr<Layer<Dtype> > layer = this->MakeLayer(LayerParameter());
  layer->SetUp(this->blob_bottom_vec_, this->blob_top_vec_);
  layer->Forward(this->blob_bottom_vec_, this->blob_top_vec_);
  EXPECT_NEAR(this->blob_top_loss_->cpu_data()[0], 0, 1e-5);
}

TYPED_TEST(SoftmaxWithKLLossLayerTest, TestMatchesReference) {
  this->CheckAgainstReference(LayerParameter(), 10 * 2 * 3, 1, 1e-4);
}

TYPED_TEST(SoftmaxWithKLLossLayerTest, TestExtremeLogits) {
  this->SetExtremeLogits();
  this->CheckAgainstReference(LayerParameter(), 10 * 2 * 3, 1, 1e-4);
}

TYPED_TEST(SoftmaxWithKLLossLayerTest, TestOneHotAndZeroLabels) {
  typedef typename TypeParam::Dtype Dtype;
  Dtype* p = this->blob_bottom_label_->mutable_cpu_data();
  caffe_set(this->blob_bottom_label_->count(), Dtype(0), p);
  for (int i = 0; i < 10; ++i) {
    for (int j = 0; j < 6; ++j) p[(i * 5 + (i + j) % 5) * 6 + j] = 1;
  }
  this->CheckAgainstReference(LayerParameter(), 10 * 2 * 3, 1, 1e-4);
}

TYPED_TEST(SoftmaxWithKLLossLayerTest, TestNormalization) {
  const LossParameter_NormalizationMode modes[] = {
      LossParameter_NormalizationMode_FULL,
      LossParameter_NormalizationMode_VALID,
      LossParameter_NormalizationMode_BATCH_SIZE,
      LossParameter_NormalizationMode_NONE};
  const double normalizers[] = {60, 60, 10, 1};
  for (int m = 0; m < 4; ++m) {
    LayerParameter param;
    param.mutable_loss_param()->set_normalization(modes[m]);
    this->CheckAgainstReference(param, normalizers[m], 1, 1e-4);
  }
  LayerParameter legacy;  // normalize: false means BATCH_SIZE
  legacy.mutable_loss_param()->set_normalize(false);
  this->CheckAgainstReference(legacy, 10, 1, 1e-4);
}

TYPED_TEST(SoftmaxWithKLLossLayerTest, TestLossWeight) {
  LayerParameter param;
  param.add_loss_weight(0.8);
  this->CheckAgainstReference(param, 60, 0.8, 1e-4);
}

TYPED_TEST(SoftmaxWithKLLossLayerTest, TestLabelShapes) {
  typedef typename TypeParam::Dtype Dtype;
  // Image-level labels as (N, K) and as the original's (N, K, 1, 1).
  this->blob_bottom_data_->Reshape(vector<int>{8, 7});
  FillerParameter filler_param;
  filler_param.set_std(2);
  GaussianFiller<Dtype> filler(filler_param);
  filler.Fill(this->blob_bottom_data_);
  this->blob_bottom_label_->Reshape(8, 7, 1, 1);
  this->FillDistribution(this->blob_bottom_label_, 5);
  this->CheckAgainstReference(LayerParameter(), 8, 1, 1e-4);
  const Dtype loss_4d = this->blob_top_loss_->cpu_data()[0];
  this->blob_bottom_label_->Reshape(vector<int>{8, 7});
  this->CheckAgainstReference(LayerParameter(), 8, 1, 1e-4);
  EXPECT_EQ(loss_4d, this->blob_top_loss_->cpu_data()[0]);
}

TYPED_TEST(SoftmaxWithKLLossLayerTest, TestSoftmaxAxis) {
  typedef typename TypeParam::Dtype Dtype;
  // softmax over the last axis of (N, H, K): compare with the same data laid
  // out as (N, K, H) over axis 1.
  LayerParameter param;
  param.mutable_softmax_param()->set_axis(-1);
  Blob<Dtype> z(vector<int>{4, 3, 5}), p(vector<int>{4, 3, 5});
  FillerParameter filler_param;
  filler_param.set_std(2);
  GaussianFiller<Dtype> filler(filler_param);
  filler.Fill(&z);
  Blob<Dtype> p_t(vector<int>{4, 5, 3});
  this->FillDistribution(&p_t, 9);
  this->blob_bottom_data_->Reshape(vector<int>{4, 5, 3});
  this->blob_bottom_label_->Reshape(vector<int>{4, 5, 3});
  for (int i = 0; i < 4; ++i) {
    for (int h = 0; h < 3; ++h) {
      for (int k = 0; k < 5; ++k) {
        p.mutable_cpu_data()[(i * 3 + h) * 5 + k] =
            p_t.cpu_data()[(i * 5 + k) * 3 + h];
        this->blob_bottom_data_->mutable_cpu_data()[(i * 5 + k) * 3 + h] =
            z.cpu_data()[(i * 3 + h) * 5 + k];
        this->blob_bottom_label_->mutable_cpu_data()[(i * 5 + k) * 3 + h] =
            p_t.cpu_data()[(i * 5 + k) * 3 + h];
      }
    }
  }
  this->CheckAgainstReference(LayerParameter(), 12, 1, 1e-4);
  const Dtype expected = this->blob_top_loss_->cpu_data()[0];
  vector<Blob<Dtype>*> bottom(1, &z);
  bottom.push_back(&p);
  shared_ptr<Layer<Dtype> > layer = this->MakeLayer(param);
  layer->SetUp(bottom, this->blob_top_vec_);
  layer->Forward(bottom, this->blob_top_vec_);
  EXPECT_NEAR(this->blob_top_loss_->cpu_data()[0], expected, 1e-5);
}

TYPED_TEST(SoftmaxWithKLLossLayerTest, TestNegativeLossesAreSummedSigned) {
  typedef typename TypeParam::Dtype Dtype;
  // Labels summing to 0.5 and predicted exactly: each position's loss is
  // sum 0.5 p (log 0.5 p - log p) = 0.5 log 0.5 < 0, and so is the mean.
  this->FillDistribution(this->blob_bottom_label_, 11);
  Dtype* z = this->blob_bottom_data_->mutable_cpu_data();
  Dtype* p = this->blob_bottom_label_->mutable_cpu_data();
  for (int i = 0; i < this->blob_bottom_label_->count(); ++i) {
    z[i] = p[i] > 0 ? std::log(p[i]) : -200;
    p[i] *= 0.5;
  }
  shared_ptr<Layer<Dtype> > layer = this->MakeLayer(LayerParameter());
  layer->SetUp(this->blob_bottom_vec_, this->blob_top_vec_);
  layer->Forward(this->blob_bottom_vec_, this->blob_top_vec_);
  EXPECT_NEAR(this->blob_top_loss_->cpu_data()[0], 0.5 * std::log(0.5), 1e-5);
  this->CheckAgainstReference(LayerParameter(), 10 * 2 * 3, 1, 1e-4);
}

TYPED_TEST(SoftmaxWithKLLossLayerTest, TestManyPositions) {
  // More positions (3 x 37 x 29 = 3219) than one block of threads, and not
  // a multiple of it: every one is summed once.
  this->FillManyPositions(13);
  this->CheckAgainstReference(LayerParameter(), 3 * 37 * 29, 1, 1e-4);
  LayerParameter none;
  none.mutable_loss_param()->set_normalization(
      LossParameter_NormalizationMode_NONE);
  this->CheckAgainstReference(none, 1, 1, 1e-4);
}

TYPED_TEST(SoftmaxWithKLLossLayerTest, TestLossStaysWhereComputed) {
  this->CheckLossStaysWhereComputed("SoftmaxWithKLLoss");
}

TYPED_TEST(SoftmaxWithKLLossLayerTest, TestGradient) {
  typedef typename TypeParam::Dtype Dtype;
  LayerParameter layer_param;
  layer_param.add_loss_weight(3);
  shared_ptr<Layer<Dtype> > layer = this->MakeLayer(layer_param);
  GradientChecker<Dtype> checker(1e-2, 1e-2, 1701);
  checker.CheckGradientExhaustive(layer.get(), this->blob_bottom_vec_,
      this->blob_top_vec_, 0);
}

TYPED_TEST(SoftmaxWithKLLossLayerTest, TestGradientUnnormalised) {
  typedef typename TypeParam::Dtype Dtype;
  // Labels that do not sum to 1: the gradient is q * sum(p) - p.
  caffe_scal(this->blob_bottom_label_->count(), Dtype(1.7),
             this->blob_bottom_label_->mutable_cpu_data());
  LayerParameter layer_param;
  layer_param.mutable_loss_param()->set_normalization(
      LossParameter_NormalizationMode_NONE);
  shared_ptr<Layer<Dtype> > layer = this->MakeLayer(layer_param);
  GradientChecker<Dtype> checker(1e-2, 1e-2, 1701);
  checker.CheckGradientExhaustive(layer.get(), this->blob_bottom_vec_,
      this->blob_top_vec_, 0);
}

TYPED_TEST(SoftmaxWithKLLossLayerTest, TestLabelCountMismatchDies) {
  typedef typename TypeParam::Dtype Dtype;
  ::testing::FLAGS_gtest_death_test_style = "threadsafe";
  this->blob_bottom_data_->Reshape(vector<int>{4, 8});
  this->blob_bottom_label_->Reshape(4, 7, 1, 1);
  shared_ptr<Layer<Dtype> > layer = this->MakeLayer(LayerParameter());
  EXPECT_DEATH(layer->SetUp(this->blob_bottom_vec_, this->blob_top_vec_),
               "logits have shape 4 8 \\(32\\) but the label has shape "
               "4 7 1 1 \\(28\\)");
}

TYPED_TEST(SoftmaxWithKLLossLayerTest, TestSecondTopIsSoftmax) {
  typedef typename TypeParam::Dtype Dtype;
  this->SetHandExample();
  Blob<Dtype> prob;
  this->blob_top_vec_.push_back(&prob);
  LayerParameter param;
  param.add_loss_weight(1);
  param.add_loss_weight(0);
  shared_ptr<Layer<Dtype> > layer = this->MakeLayer(param);
  layer->SetUp(this->blob_bottom_vec_, this->blob_top_vec_);
  layer->Forward(this->blob_bottom_vec_, this->blob_top_vec_);
  const double q[] = {1. / 3, 1. / 3, 1. / 3, 1. / 6, 1. / 3, .5};
  for (int i = 0; i < 6; ++i) EXPECT_NEAR(prob.cpu_data()[i], q[i], 1e-6);
  this->blob_top_vec_.pop_back();
}

// ---- SoftmaxWithDominantLoss (legacy name SoftmaxWithMyKLLoss)

TYPED_TEST(SoftmaxWithDominantLossLayerTest, TestLegacyName) {
  typedef typename TypeParam::Dtype Dtype;
  LayerParameter param;
  param.set_type("SoftmaxWithMyKLLoss");
  shared_ptr<Layer<Dtype> > layer = LayerRegistry<Dtype>::CreateLayer(param);
  EXPECT_EQ(std::string("SoftmaxWithMyKLLoss"), layer->type());
  EXPECT_TRUE(dynamic_cast<SoftmaxWithDominantLossLayer<Dtype>*>(layer.get()));
}

TYPED_TEST(SoftmaxWithDominantLossLayerTest, TestForwardHandComputed) {
  typedef typename TypeParam::Dtype Dtype;
  this->SetHandExample();
  shared_ptr<Layer<Dtype> > layer = this->MakeLayer(LayerParameter());
  layer->SetUp(this->blob_bottom_vec_, this->blob_top_vec_);
  layer->Forward(this->blob_bottom_vec_, this->blob_top_vec_);
  // Sample 1 ties classes 0 and 1: the lowest (0) wins, -log(1/3);
  // sample 2 is class 2, -log(1/2).
  EXPECT_NEAR(this->blob_top_loss_->cpu_data()[0],
              (std::log(3.0) + std::log(2.0)) / 2, 1e-6);
  layer->Backward(this->blob_top_vec_, this->PropagateToLogits(),
                  this->blob_bottom_vec_);
  const double g[] = {(1. / 3 - 1) / 2, (1. / 3) / 2, (1. / 3) / 2,
                      (1. / 6) / 2, (1. / 3) / 2, (.5 - 1) / 2};
  for (int i = 0; i < 6; ++i) {
    EXPECT_NEAR(this->blob_bottom_data_->cpu_diff()[i], g[i], 1e-6);
  }
}

TYPED_TEST(SoftmaxWithDominantLossLayerTest, TestMatchesReference) {
  this->CheckAgainstReference(LayerParameter(), 60, 1, 1e-4);
  LayerParameter param;
  param.add_loss_weight(0.2);
  param.mutable_loss_param()->set_normalization(
      LossParameter_NormalizationMode_BATCH_SIZE);
  this->CheckAgainstReference(param, 10, 0.2, 1e-4);
}

TYPED_TEST(SoftmaxWithDominantLossLayerTest, TestExtremeLogits) {
  this->SetExtremeLogits();
  this->CheckAgainstReference(LayerParameter(), 60, 1, 1e-4);
}

TYPED_TEST(SoftmaxWithDominantLossLayerTest, TestManyPositions) {
  this->FillManyPositions(17);
  this->CheckAgainstReference(LayerParameter(), 3 * 37 * 29, 1, 1e-4);
}

TYPED_TEST(SoftmaxWithDominantLossLayerTest, TestLossStaysWhereComputed) {
  this->CheckLossStaysWhereComputed("SoftmaxWithDominantLoss");
}

TYPED_TEST(SoftmaxWithDominantLossLayerTest, TestGradient) {
  typedef typename TypeParam::Dtype Dtype;
  LayerParameter layer_param;
  layer_param.add_loss_weight(3);
  shared_ptr<Layer<Dtype> > layer = this->MakeLayer(layer_param);
  GradientChecker<Dtype> checker(1e-2, 1e-2, 1701);
  checker.CheckGradientExhaustive(layer.get(), this->blob_bottom_vec_,
      this->blob_top_vec_, 0);
}

}  // namespace caffe
