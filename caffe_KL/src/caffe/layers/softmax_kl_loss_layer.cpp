#include <algorithm>
#include <vector>

#include "caffe/layers/softmax_kl_loss_layer.hpp"
#include "caffe/util/math_functions.hpp"

namespace caffe {

template <typename Dtype>
void SoftmaxWithKLLossLayer<Dtype>::LayerSetUp(
    const vector<Blob<Dtype>*>& bottom, const vector<Blob<Dtype>*>& top) {
  LossLayer<Dtype>::LayerSetUp(bottom, top);
  const LossParameter& loss_param = this->layer_param_.loss_param();
  CHECK(!loss_param.has_ignore_label())
      << type() << " has no ignore_label: its labels are distributions.";
  if (!loss_param.has_normalization() && loss_param.has_normalize()) {
    normalization_ = loss_param.normalize() ?
                     LossParameter_NormalizationMode_VALID :
                     LossParameter_NormalizationMode_BATCH_SIZE;
  } else {
    normalization_ = loss_param.normalization();
  }
}

template <typename Dtype>
void SoftmaxWithKLLossLayer<Dtype>::Reshape(
    const vector<Blob<Dtype>*>& bottom, const vector<Blob<Dtype>*>& top) {
  LossLayer<Dtype>::Reshape(bottom, top);
  softmax_axis_ =
      bottom[0]->CanonicalAxisIndex(this->layer_param_.softmax_param().axis());
  outer_num_ = bottom[0]->count(0, softmax_axis_);
  inner_num_ = bottom[0]->count(softmax_axis_ + 1);
  channels_ = bottom[0]->shape(softmax_axis_);
  CHECK_EQ(bottom[0]->count(), bottom[1]->count())
      << type() << " (layer " << this->layer_param_.name() << ") needs one "
      << channels_ << "-value distribution per prediction: the logits have "
      << "shape " << bottom[0]->shape_string() << " but the label has shape "
      << bottom[1]->shape_string() << ". Is the number of emotions in the "
      << "data the same as the num_output of the last layer?";
  prob_.ReshapeLike(*bottom[0]);
  loss_.Reshape(vector<int>(1, outer_num_ * inner_num_));
  if (top.size() >= 2) {
    top[1]->ReshapeLike(*bottom[0]);
  }
}

template <typename Dtype>
Dtype SoftmaxWithKLLossLayer<Dtype>::get_normalizer() {
  Dtype normalizer;
  switch (normalization_) {
    case LossParameter_NormalizationMode_FULL:
    case LossParameter_NormalizationMode_VALID:
      normalizer = Dtype(outer_num_ * inner_num_);
      break;
    case LossParameter_NormalizationMode_BATCH_SIZE:
      normalizer = Dtype(outer_num_);
      break;
    case LossParameter_NormalizationMode_NONE:
      normalizer = Dtype(1);
      break;
    default:
      LOG(FATAL) << "Unknown normalization mode: "
          << LossParameter_NormalizationMode_Name(normalization_);
  }
  // Some users will have no labels for some examples in order to 'turn off' a
  // particular loss in a multi-task setup. The max prevents NaNs in that case.
  return std::max(Dtype(1.0), normalizer);
}

template <typename Dtype>
void SoftmaxWithKLLossLayer<Dtype>::set_loss(
    const vector<Blob<Dtype>*>& top) {
  const Dtype* loss = loss_.cpu_data();
  Dtype sum = 0;
  for (int i = 0; i < loss_.count(); ++i) sum += loss[i];
  top[0]->mutable_cpu_data()[0] = sum / get_normalizer();
  if (top.size() == 2) {
    top[1]->ShareData(prob_);
  }
}

template <typename Dtype>
void SoftmaxWithKLLossLayer<Dtype>::Forward_cpu(
    const vector<Blob<Dtype>*>& bottom, const vector<Blob<Dtype>*>& top) {
  const Dtype* logits = bottom[0]->cpu_data();
  const Dtype* label = bottom[1]->cpu_data();
  Dtype* prob = prob_.mutable_cpu_data();
  Dtype* loss = loss_.mutable_cpu_data();
  const int dim = channels_ * inner_num_;
  for (int i = 0; i < outer_num_; ++i) {
    for (int j = 0; j < inner_num_; ++j) {
      const int offset = i * dim + j;
      loss[i * inner_num_ + j] = softmax_kl_forward(logits + offset,
          label + offset, channels_, inner_num_, dominant_, prob + offset);
    }
  }
  set_loss(top);
}

template <typename Dtype>
void SoftmaxWithKLLossLayer<Dtype>::Backward_cpu(
    const vector<Blob<Dtype>*>& top, const vector<bool>& propagate_down,
    const vector<Blob<Dtype>*>& bottom) {
  if (propagate_down[1]) {
    LOG(FATAL) << type()
               << " Layer cannot backpropagate to label inputs.";
  }
  if (!propagate_down[0]) return;
  const Dtype* prob = prob_.cpu_data();
  const Dtype* label = bottom[1]->cpu_data();
  Dtype* diff = bottom[0]->mutable_cpu_diff();
  const Dtype scale = top[0]->cpu_diff()[0] / get_normalizer();
  const int dim = channels_ * inner_num_;
  for (int i = 0; i < outer_num_; ++i) {
    for (int j = 0; j < inner_num_; ++j) {
      const int offset = i * dim + j;
      softmax_kl_backward(prob + offset, label + offset, channels_,
          inner_num_, dominant_, scale, diff + offset);
    }
  }
}

#ifdef CPU_ONLY
STUB_GPU(SoftmaxWithKLLossLayer);
#endif

INSTANTIATE_CLASS(SoftmaxWithKLLossLayer);
REGISTER_LAYER_CLASS(SoftmaxWithKLLoss);

INSTANTIATE_CLASS(SoftmaxWithDominantLossLayer);
REGISTER_LAYER_CLASS(SoftmaxWithDominantLoss);
INSTANTIATE_CLASS(SoftmaxWithMyKLLossLayer);
REGISTER_LAYER_CLASS(SoftmaxWithMyKLLoss);

}  // namespace caffe
