#ifndef CAFFE_UTIL_DISTRIBUTION_LABEL_HPP_
#define CAFFE_UTIL_DISTRIBUTION_LABEL_HPP_

// Helpers for distribution labels (one probability per class), shared by the
// JCDL loss layers and the Accuracy layer, on the host and in CUDA kernels.

namespace caffe {

#ifdef __CUDACC__
#define CAFFE_HOST_DEVICE __host__ __device__
#else
#define CAFFE_HOST_DEVICE
#endif

/// Index of the largest of the K values p[0], p[stride], ...; ties go to the
/// lowest index.
template <typename Dtype>
CAFFE_HOST_DEVICE inline int dominant_index(const Dtype* p, int K,
    int stride) {
  int best = 0;
  for (int k = 1; k < K; ++k) {
    if (p[k * stride] > p[best * stride]) best = k;
  }
  return best;
}

}  // namespace caffe

#endif  // CAFFE_UTIL_DISTRIBUTION_LABEL_HPP_
