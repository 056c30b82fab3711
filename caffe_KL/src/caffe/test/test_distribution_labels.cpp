// Distribution labels (JCDL): the Data layer reads K floats per Datum from
// float_data, K taken from the data; Accuracy scores them by their argmax.
#ifdef USE_LMDB
#include <algorithm>
#include <sstream>
#include <string>
#include <vector>

#include "boost/scoped_ptr.hpp"
#include "gtest/gtest.h"

#include "caffe/blob.hpp"
#include "caffe/common.hpp"
#include "caffe/layers/accuracy_layer.hpp"
#include "caffe/layers/data_layer.hpp"
#include "caffe/proto/caffe.pb.h"
#include "caffe/util/db.hpp"
#include "caffe/util/io.hpp"

#include "caffe/test/test_caffe_main.hpp"

namespace caffe {

using boost::scoped_ptr;

template <typename TypeParam>
class DataLayerDistributionTest : public MultiDeviceTest<TypeParam> {
  typedef typename TypeParam::Dtype Dtype;

 protected:
  DataLayerDistributionTest()
      : blob_top_data_(new Blob<Dtype>()),
        blob_top_label_(new Blob<Dtype>()) {
    blob_top_vec_.push_back(blob_top_data_);
    blob_top_vec_.push_back(blob_top_label_);
  }
  virtual ~DataLayerDistributionTest() {
    delete blob_top_data_;
    delete blob_top_label_;
  }

  // The value stored for emotion k of image i.
  static float Value(int i, int k, int K) {
    return (1.0f + i + k) / (K * (1.0f + i) + K * (K - 1) / 2.0f);
  }

  // An LMDB of `num` 3x2x4 raw images; image i carries K_of(i) label floats
  // (none when 0, i.e. an upstream integer-label Datum with label i).
  string MakeDB(int num, const vector<int>& K_of) {
    string filename;
    MakeTempDir(&filename);
    filename += "/db";
    scoped_ptr<db::DB> db(db::GetDB(DataParameter_DB_LMDB));
    db->Open(filename, db::NEW);
    scoped_ptr<db::Transaction> txn(db->NewTransaction());
    for (int i = 0; i < num; ++i) {
      Datum datum;
      datum.set_channels(3);
      datum.set_height(2);
      datum.set_width(4);
      datum.set_data(string(24, static_cast<char>(i)));
      datum.set_label(i);
      const int K = K_of[i];
      for (int k = 0; k < K; ++k) datum.add_float_data(Value(i, k, K));
      string out;
      CHECK(datum.SerializeToString(&out));
      txn->Put(format_key(i), out);
    }
    txn->Commit();
    db->Close();
    return filename;
  }

  static string format_key(int i) {
    std::ostringstream key;
    key << "0000000" << i << "_img" << i << ".jpg";
    return key.str();
  }

  void SetUpLayer(const string& source, int batch_size,
                  scoped_ptr<DataLayer<Dtype> >* layer) {
    LayerParameter param;
    param.set_phase(TRAIN);
    DataParameter* data_param = param.mutable_data_param();
    data_param->set_batch_size(batch_size);
    data_param->set_source(source);
    data_param->set_backend(DataParameter_DB_LMDB);
    layer->reset(new DataLayer<Dtype>(param));
    (*layer)->SetUp(blob_bottom_vec_, blob_top_vec_);
  }

  void CheckDistributions(int K) {
    const int num = 5;
    const string source = MakeDB(num, vector<int>(num, K));
    scoped_ptr<DataLayer<Dtype> > layer;
    SetUpLayer(source, num, &layer);
    ASSERT_EQ(2, blob_top_label_->num_axes());
    EXPECT_EQ(num, blob_top_label_->shape(0));
    EXPECT_EQ(K, blob_top_label_->shape(1));
    EXPECT_EQ(num, blob_top_data_->num());
    EXPECT_EQ(3, blob_top_data_->channels());
    for (int iter = 0; iter < 2; ++iter) {
      layer->Forward(blob_bottom_vec_, blob_top_vec_);
      for (int i = 0; i < num; ++i) {
        for (int k = 0; k < K; ++k) {
          EXPECT_EQ(Value(i, k, K), blob_top_label_->cpu_data()[i * K + k]);
        }
        EXPECT_EQ(i, blob_top_data_->cpu_data()[i * 24]);
      }
    }
  }

  Blob<Dtype>* const blob_top_data_;
  Blob<Dtype>* const blob_top_label_;
  vector<Blob<Dtype>*> blob_bottom_vec_;
  vector<Blob<Dtype>*> blob_top_vec_;
};

TYPED_TEST_CASE(DataLayerDistributionTest, TestDtypesAndDevices);

TYPED_TEST(DataLayerDistributionTest, TestReadSevenAndEightEmotions) {
  this->CheckDistributions(7);  // Emotion6
  this->CheckDistributions(8);  // Flickr_LDL, Twitter_LDL
}

TYPED_TEST(DataLayerDistributionTest, TestIntegerLabelsUnchanged) {
  typedef typename TypeParam::Dtype Dtype;
  const string source = this->MakeDB(4, vector<int>(4, 0));
  scoped_ptr<DataLayer<Dtype> > layer;
  this->SetUpLayer(source, 4, &layer);
  ASSERT_EQ(1, this->blob_top_label_->num_axes());
  layer->Forward(this->blob_bottom_vec_, this->blob_top_vec_);
  for (int i = 0; i < 4; ++i) {
    EXPECT_EQ(i, this->blob_top_label_->cpu_data()[i]);
  }
}

TYPED_TEST(DataLayerDistributionTest, TestDifferentKDies) {
  typedef typename TypeParam::Dtype Dtype;
  ::testing::FLAGS_gtest_death_test_style = "threadsafe";
  vector<int> K_of(4, 7);
  K_of[2] = 8;
  const string source = this->MakeDB(4, K_of);
  EXPECT_DEATH({
    scoped_ptr<DataLayer<Dtype> > layer;
    this->SetUpLayer(source, 4, &layer);
    layer->Forward(this->blob_bottom_vec_, this->blob_top_vec_);
  }, "Datum 00000002_img2.jpg in .* has 8 label values but the first Datum "
     "has 7");
}

template <typename TypeParam>
class AccuracyLayerDistributionTest : public MultiDeviceTest<TypeParam> {
  typedef typename TypeParam::Dtype Dtype;

 protected:
  AccuracyLayerDistributionTest()
      : scores_(vector<int>{4, 3}), labels_(4, 3, 1, 1) {
    // Predicted classes 0, 1, 2, 2.
    const Dtype s[] = {5, 1, 0,  0, 3, 1,  0, 1, 2,  1, 0, 4};
    // Dominant classes 0, 2, 2 and a tie of 0 and 2 (lowest: 0).
    const Dtype p[] = {.6, .3, .1,  .2, .3, .5,  0, 0, 1,  .4, .2, .4};
    std::copy(s, s + 12, scores_.mutable_cpu_data());
    std::copy(p, p + 12, labels_.mutable_cpu_data());
    bottom_.push_back(&scores_);
    bottom_.push_back(&labels_);
    top_.push_back(&accuracy_);
  }

  Dtype Run(int top_k) {
    LayerParameter param;
    param.mutable_accuracy_param()->set_top_k(top_k);
    AccuracyLayer<Dtype> layer(param);
    layer.SetUp(bottom_, top_);
    layer.Forward(bottom_, top_);
    return accuracy_.cpu_data()[0];
  }

  Blob<Dtype> scores_, labels_, accuracy_;
  vector<Blob<Dtype>*> bottom_, top_;
};

TYPED_TEST_CASE(AccuracyLayerDistributionTest, TestDtypesAndDevices);

TYPED_TEST(AccuracyLayerDistributionTest, TestTop1AgainstArgmax) {
  // Right: sample 0 (0 = 0) and sample 2 (2 = 2).
  EXPECT_NEAR(0.5, this->Run(1), 1e-6);
}

TYPED_TEST(AccuracyLayerDistributionTest, TestTop2) {
  // Top-2 sets {0,1} {1,2} {2,1} {2,0}: dominant 0, 2, 2, 0 all inside.
  EXPECT_NEAR(1.0, this->Run(2), 1e-6);
}

TYPED_TEST(AccuracyLayerDistributionTest, TestIntegerLabelsUnchanged) {
  typedef typename TypeParam::Dtype Dtype;
  this->labels_.Reshape(vector<int>{4});
  const Dtype l[] = {0, 1, 1, 2};
  std::copy(l, l + 4, this->labels_.mutable_cpu_data());
  EXPECT_NEAR(0.75, this->Run(1), 1e-6);
}

}  // namespace caffe
#endif  // USE_LMDB
