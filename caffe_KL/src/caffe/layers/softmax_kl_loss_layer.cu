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

// Sums the count per-position losses and writes sum / normalizer to out[0],
// on the device: one block, each thread summing a strided share, then a tree
// in shared memory, so the order (and the result) is the same on every run.
// A signed sum, not caffe_gpu_asum's sum of |x|: KL(p || q) of a label that
// sums to less than 1 can be negative.
template <typename Dtype>
__global__ void SoftmaxKLLossSumGPU(const int count, const Dtype* loss,
    const Dtype normalizer, Dtype* out) {
  __shared__ Dtype partial[CAFFE_CUDA_NUM_THREADS];
  Dtype sum = 0;
  for (int i = threadIdx.x; i < count; i += blockDim.x) sum += loss[i];
  partial[threadIdx.x] = sum;
  __syncthreads();
  for (int half = blockDim.x / 2; half > 0; half /= 2) {
    if (threadIdx.x < half) partial[threadIdx.x] += partial[threadIdx.x + half];
    __syncthreads();
  }
  if (threadIdx.x == 0) out[0] = partial[0] / normalizer;
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
  // The loss stays on the device: no per-position loss is copied to the host
  // (CAFFE_CUDA_NUM_THREADS is a power of two, as the tree needs).
  // NOLINT_NEXT_LINE(whitespace/operators)
  SoftmaxKLLossSumGPU<Dtype><<<1, CAFFE_CUDA_NUM_THREADS>>>(nthreads,
      loss_.gpu_data(), get_normalizer(), top[0]->mutable_gpu_data());
  CUDA_POST_KERNEL_CHECK;
  if (top.size() == 2) {
    top[1]->ShareData(prob_);
  }
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
