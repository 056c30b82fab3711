#ifndef CAFFE_SOFTMAX_KL_LOSS_LAYER_HPP_
#define CAFFE_SOFTMAX_KL_LOSS_LAYER_HPP_

#include <cmath>
#include <vector>

#include "caffe/blob.hpp"
#include "caffe/layer.hpp"
#include "caffe/proto/caffe.pb.h"

#include "caffe/layers/loss_layer.hpp"
#include "caffe/util/distribution_label.hpp"

namespace caffe {

/**
 * @brief Computes the Kullback-Leibler divergence KL(p || q) between a
 *        ground-truth emotion distribution p and the softmax q of the
 *        predictions (the distribution loss of JCDL, Yang et al., IJCAI 2017).
 *
 * The reported loss is the true divergence
 * @f$ \sum_k p_k (\log p_k - \log q_k) @f$ (0 when q = p; terms with
 * @f$ p_k = 0 @f$ contribute 0), computed with a log-softmax so logits of any
 * magnitude stay finite. Its gradient equals the cross-entropy's:
 * @f$ \partial / \partial z_k = q_k \sum_j p_j - p_k @f$, i.e. q - p for a
 * label that sums to 1.
 *
 * @param bottom input Blob vector (length 2)
 *   -# @f$ (N \times K \times H \times W) @f$ the logits z; the softmax is
 *      taken over softmax_param.axis (default 1).
 *   -# the distribution p, with exactly as many values as the logits, in the
 *      same layout: (N, K) or (N, K, 1, 1) for image-level labels.
 * @param top output Blob vector (length 1, optionally 2)
 *   -# @f$ (1 \times 1 \times 1 \times 1) @f$ the loss, normalised as
 *      loss_param.normalization says (VALID and FULL: by N·H·W;
 *      BATCH_SIZE: by N; NONE: not at all).
 *   -# optionally, the softmax q.
 */
template <typename Dtype>
class SoftmaxWithKLLossLayer : public LossLayer<Dtype> {
 public:
  explicit SoftmaxWithKLLossLayer(const LayerParameter& param)
      : LossLayer<Dtype>(param), dominant_(false) {}
  virtual void LayerSetUp(const vector<Blob<Dtype>*>& bottom,
      const vector<Blob<Dtype>*>& top);
  virtual void Reshape(const vector<Blob<Dtype>*>& bottom,
      const vector<Blob<Dtype>*>& top);

  virtual inline const char* type() const { return "SoftmaxWithKLLoss"; }
  virtual inline int ExactNumTopBlobs() const { return -1; }
  virtual inline int MinTopBlobs() const { return 1; }
  virtual inline int MaxTopBlobs() const { return 2; }

 protected:
  virtual void Forward_cpu(const vector<Blob<Dtype>*>& bottom,
      const vector<Blob<Dtype>*>& top);
  virtual void Forward_gpu(const vector<Blob<Dtype>*>& bottom,
      const vector<Blob<Dtype>*>& top);
  virtual void Backward_cpu(const vector<Blob<Dtype>*>& top,
      const vector<bool>& propagate_down, const vector<Blob<Dtype>*>& bottom);
  virtual void Backward_gpu(const vector<Blob<Dtype>*>& top,
      const vector<bool>& propagate_down, const vector<Blob<Dtype>*>& bottom);

  /// The normaliser of the summed loss for the configured mode.
  Dtype get_normalizer();
  /// Sums the per-position losses in loss_ on the host and writes the
  /// normalised loss (Forward_cpu; Forward_gpu sums on the device).
  void set_loss(const vector<Blob<Dtype>*>& top);

  /// When true the target is the one-hot dominant emotion argmax_k p_k.
  bool dominant_;
  /// q, the softmax of the logits.
  Blob<Dtype> prob_;
  /// The loss of each (outer, inner) position, before summing.
  Blob<Dtype> loss_;
  LossParameter_NormalizationMode normalization_;
  int softmax_axis_, outer_num_, inner_num_, channels_;
};

/**
 * @brief The softmax log-loss of the dominant emotion of a distribution
 *        label: @f$ -\log q_c @f$ with @f$ c = \arg\max_k p_k @f$ (ties go
 *        to the lowest index) — the classification loss of JCDL.
 *
 * Takes the same bottoms and parameters as SoftmaxWithKLLoss. The original
 * prototxts' name for it, "SoftmaxWithMyKLLoss", is the subclass below.
 */
template <typename Dtype>
class SoftmaxWithDominantLossLayer : public SoftmaxWithKLLossLayer<Dtype> {
 public:
  explicit SoftmaxWithDominantLossLayer(const LayerParameter& param)
      : SoftmaxWithKLLossLayer<Dtype>(param) { this->dominant_ = true; }
  virtual inline const char* type() const { return "SoftmaxWithDominantLoss"; }
};

/// SoftmaxWithDominantLoss under the name the original JCDL prototxts use.
template <typename Dtype>
class SoftmaxWithMyKLLossLayer : public SoftmaxWithDominantLossLayer<Dtype> {
 public:
  explicit SoftmaxWithMyKLLossLayer(const LayerParameter& param)
      : SoftmaxWithDominantLossLayer<Dtype>(param) {}
  virtual inline const char* type() const { return "SoftmaxWithMyKLLoss"; }
};

/// One position's forward pass: writes q = softmax(z) and returns the loss,
/// KL(p || q), or -log q_c for the dominant class c.
template <typename Dtype>
CAFFE_HOST_DEVICE inline Dtype softmax_kl_forward(const Dtype* z,
    const Dtype* p, int K, int stride, bool dominant, Dtype* q) {
  Dtype zmax = z[0];
  for (int k = 1; k < K; ++k) zmax = z[k * stride] > zmax ? z[k * stride] : zmax;
  Dtype sum = 0;
  for (int k = 0; k < K; ++k) sum += exp(z[k * stride] - zmax);
  const Dtype log_sum = log(sum);
  Dtype loss = 0;
  for (int k = 0; k < K; ++k) {
    const Dtype log_q = z[k * stride] - zmax - log_sum;
    q[k * stride] = exp(log_q);
    if (!dominant && p[k * stride] > 0) {
      loss += p[k * stride] * (log(p[k * stride]) - log_q);
    }
  }
  if (dominant) {
    const int c = dominant_index(p, K, stride);
    loss = -(z[c * stride] - zmax - log_sum);
  }
  return loss;
}

/// One position's gradient with respect to the logits, times scale:
/// q * sum(p) - p, or q - onehot(c) for the dominant class c.
template <typename Dtype>
CAFFE_HOST_DEVICE inline void softmax_kl_backward(const Dtype* q,
    const Dtype* p, int K, int stride, bool dominant, Dtype scale,
    Dtype* dz) {
  if (dominant) {
    const int c = dominant_index(p, K, stride);
    for (int k = 0; k < K; ++k) {
      dz[k * stride] = scale * (q[k * stride] - (k == c ? Dtype(1) : Dtype(0)));
    }
    return;
  }
  Dtype p_sum = 0;
  for (int k = 0; k < K; ++k) p_sum += p[k * stride];
  for (int k = 0; k < K; ++k) {
    dz[k * stride] = scale * (q[k * stride] * p_sum - p[k * stride]);
  }
}

}  // namespace caffe

#endif  // CAFFE_SOFTMAX_KL_LOSS_LAYER_HPP_
