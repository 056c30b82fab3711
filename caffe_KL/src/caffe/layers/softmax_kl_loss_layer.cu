#include <vector>

#include "caffe/layers/softmax_kl_loss_layer.hpp"
#include "caffe/util/math_functions.hpp"

namespace caffe {

// One thread per (outer, inner) position: K is small (the emotions), so each
// thread walks its K logits itself.
template <typename Dtype>
__global__ void SoftmaxKLLossForwardGPU(const int nthreads,
    const Dtype* logits, const Dtype* label, const int channels,
    const int inner_num, const bool dominant, Dtype* prob, Dtype* loss) {
  CUDA_KERNEL_LOOP(index, nthreads) {
    const int i = index / inner_num;
    const int j = index % inner_num;
    const int offset = i * channels * inner_num + j;
    loss[index] = softmax_kl_forward(logits + offset, label + offset,
        channels, inner_num, dominant, prob + offset);
  }
}

template <typename Dtype>
__global__ void SoftmaxKLLossBackwardGPU(const int nthreads,
    const Dtype* prob, const Dtype* label, const int channels,
    const int inner_num, const bool dominant, const Dtype scale,
    Dtype* diff) {
  CUDA_KERNEL_LOOP(index, nthreads) {
    const int i = index / inner_num;
    const int j = index % inner_num;
    const int offset = i * channels * inner_num + j;
    softmax_kl_backward(prob + offset, label + offset, channels, inner_num,
        dominant, scale, diff + offset);
  }
}

template <typename Dtype>
void SoftmaxWithKLLossLayer<Dtype>::Forward_gpu(
    const vector<Blob<Dtype>*>& bottom, const vector<Blob<Dtype>*>& top) {
  const int nthreads = outer_num_ * inner_num_;
  // NOLINT_NEXT_LINE(whitespace/operators)
  SoftmaxKLLossForwardGPU<Dtype><<<CAFFE_GET_BLOCKS(nthreads),
      CAFFE_CUDA_NUM_THREADS>>>(nthreads, bottom[0]->gpu_data(),
      bottom[1]->gpu_data(), channels_, inner_num_, dominant_,
      prob_.mutable_gpu_data(), loss_.mutable_gpu_data());
  CUDA_POST_KERNEL_CHECK;
  set_loss(top);
}

template <typename Dtype>
void SoftmaxWithKLLossLayer<Dtype>::Backward_gpu(
    const vector<Blob<Dtype>*>& top, const vector<bool>& propagate_down,
    const vector<Blob<Dtype>*>& bottom) {
  if (propagate_down[1]) {
    LOG(FATAL) << type()
               << " Layer cannot backpropagate to label inputs.";
  }
  if (!propagate_down[0]) return;
  const int nthreads = outer_num_ * inner_num_;
  const Dtype scale = top[0]->cpu_diff()[0] / get_normalizer();
  // NOLINT_NEXT_LINE(whitespace/operators)
  SoftmaxKLLossBackwardGPU<Dtype><<<CAFFE_GET_BLOCKS(nthreads),
      CAFFE_CUDA_NUM_THREADS>>>(nthreads, prob_.gpu_data(),
      bottom[1]->gpu_data(), channels_, inner_num_, dominant_, scale,
      bottom[0]->mutable_gpu_diff());
  CUDA_POST_KERNEL_CHECK;
}

INSTANTIATE_LAYER_GPU_FUNCS(SoftmaxWithKLLossLayer);

}  // namespace caffe
