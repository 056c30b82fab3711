// Times JCDL's two loss layers inside GPU training of a net, two ways:
//
//   gpu  their CUDA kernels (Forward_gpu / Backward_gpu), as this project
//        runs them;
//   cpu  the original's way: the original layers had no GPU code, so in GPU
//        mode Caffe ran their Forward_cpu / Backward_cpu, copying the logits
//        and the labels to the host (cpu_data) and the gradient back to the
//        device (the next layer's gpu_diff) in every iteration. Here the
//        same layers are run in CPU mode inside the GPU net, and the
//        gradient is pushed back to the device at once, so the copies count
//        as the loss layers' time.
//
// usage: loss_layers_bench MODEL [ITERATIONS [REPS]]
//   MODEL       a net prototxt whose inputs need no feeding (DummyData)
//   ITERATIONS  forward + backward passes of the whole net per measurement
//               (default 30)
//   REPS        passes of the loss layers alone (default 2000)
//
// Prints one JSON object on stdout:
//   iteration_ms       whole forward + backward passes (no per-layer
//                      synchronisation), each way: median and mean;
//   layers_ms          each loss layer's forward and backward, synchronised
//                      before and after it, median over ITERATIONS passes;
//   loss_layers_ms     the sum of those (median of the per-pass sums);
//   isolated_us        the loss layers alone, REPS passes of: inputs marked
//                      fresh on the device, forwards, backwards, gradients
//                      on the device, synchronise; mean microseconds; also
//                      gpu_host_sum: the gpu way plus, after each forward,
//                      the per-sample losses copied to the host and summed
//                      there, as Forward_gpu did before it summed on the
//                      device;
//   share_of_iteration loss_layers_ms.gpu / iteration_ms.gpu.median;
//   cpu_over_gpu       isolated_us.cpu / isolated_us.gpu, and the same for
//                      loss_layers_ms;
//   host_sum_over_device_sum  isolated_us.gpu_host_sum / isolated_us.gpu.
// Glog's INFO lines go to its log files, not to stdout. Built against a
// CPU_ONLY Caffe it runs both ways on the CPU (a smoke test of the program).
#ifndef CPU_ONLY
#include <cuda_runtime.h>
#endif

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "caffe/caffe.hpp"
#include "caffe/layers/softmax_kl_loss_layer.hpp"

using caffe::Blob;
using caffe::Caffe;
using caffe::Layer;
using caffe::Net;

namespace {

typedef std::chrono::steady_clock Clock;

double ms_since(Clock::time_point t0) {
  return std::chrono::duration<double, std::milli>(Clock::now() - t0).count();
}

#ifndef CPU_ONLY
const Caffe::Brew kDevice = Caffe::GPU;
void sync() { CUDA_CHECK(cudaDeviceSynchronize()); }
#else
const Caffe::Brew kDevice = Caffe::CPU;
void sync() {}
#endif

double median(std::vector<double> v) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

double mean(const std::vector<double>& v) {
  double s = 0;
  for (size_t i = 0; i < v.size(); ++i) s += v[i];
  return v.empty() ? 0 : s / v.size();
}

// The per-sample losses of a JCDL loss layer, a protected member.
struct PerSample : caffe::SoftmaxWithKLLossLayer<float> {
  static Blob<float> caffe::SoftmaxWithKLLossLayer<float>::* member() {
    return &PerSample::loss_;
  }
};

bool is_jcdl_loss(const Layer<float>& layer) {
  const std::string t = layer.type();
  return t == "SoftmaxWithKLLoss" || t == "SoftmaxWithDominantLoss" ||
         t == "SoftmaxWithMyKLLoss";
}

class Runner {
 public:
  explicit Runner(Net<float>* net)
      : layers_(net->layers()), bottoms_(net->bottom_vecs()),
        tops_(net->top_vecs()), need_(net->bottom_need_backward()),
        layer_need_(net->layer_need_backward()) {
    for (size_t i = 0; i < layers_.size(); ++i) {
      if (is_jcdl_loss(*layers_[i])) losses_.push_back(i);
    }
  }

  const std::vector<int>& losses() const { return losses_; }
  const Layer<float>& layer(int i) const { return *layers_[i]; }

  // One layer's forward pass; the loss layers in CPU mode when cpu.
  void Forward(int i, bool cpu) {
    if (cpu && is_loss(i)) {
      Caffe::set_mode(Caffe::CPU);
      layers_[i]->Forward(bottoms_[i], tops_[i]);
      Caffe::set_mode(kDevice);
    } else {
      layers_[i]->Forward(bottoms_[i], tops_[i]);
    }
  }

  // One layer's backward pass (as Net::Backward: only layers that need it).
  // A CPU-mode loss layer's gradients go to the device at once.
  void Backward(int i, bool cpu) {
    if (!layer_need_[i]) return;
    if (cpu && is_loss(i)) {
      Caffe::set_mode(Caffe::CPU);
      layers_[i]->Backward(tops_[i], need_[i], bottoms_[i]);
      Caffe::set_mode(kDevice);
#ifndef CPU_ONLY
      for (size_t j = 0; j < bottoms_[i].size(); ++j) {
        if (need_[i][j]) bottoms_[i][j]->gpu_diff();
      }
#endif
    } else {
      layers_[i]->Backward(tops_[i], need_[i], bottoms_[i]);
    }
  }

  // Marks what the data layers produce as fresh on the device, as a Data
  // layer leaves each new batch (DummyData with constant fillers does not
  // rewrite it), so a CPU-mode loss layer copies its labels every pass.
  void FreshInputs() {
#ifndef CPU_ONLY
    for (size_t i = 0; i < layers_.size(); ++i) {
      if (!bottoms_[i].empty()) continue;
      for (size_t j = 0; j < tops_[i].size(); ++j) {
        tops_[i][j]->mutable_gpu_data();
      }
    }
#endif
  }

  // A whole forward + backward pass, synchronised once at the end.
  double Iteration(bool cpu) {
    sync();
    const Clock::time_point t0 = Clock::now();
    FreshInputs();
    for (size_t i = 0; i < layers_.size(); ++i) Forward(i, cpu);
    for (int i = layers_.size() - 1; i >= 0; --i) Backward(i, cpu);
    sync();
    return ms_since(t0);
  }

  // A whole pass timing each loss layer's forward and backward alone
  // (synchronised before and after); adds them to fwd / bwd by position.
  void TimedIteration(bool cpu, std::vector<std::vector<double> >* fwd,
                      std::vector<std::vector<double> >* bwd) {
    FreshInputs();
    for (size_t i = 0; i < layers_.size(); ++i) {
      const int k = loss_index(i);
      if (k < 0) { Forward(i, cpu); continue; }
      sync();
      const Clock::time_point t0 = Clock::now();
      Forward(i, cpu);
      sync();
      (*fwd)[k].push_back(ms_since(t0));
    }
    for (int i = layers_.size() - 1; i >= 0; --i) {
      const int k = loss_index(i);
      if (k < 0) { Backward(i, cpu); continue; }
      sync();
      const Clock::time_point t0 = Clock::now();
      Backward(i, cpu);
      sync();
      (*bwd)[k].push_back(ms_since(t0));
    }
    sync();
  }

  // The loss layers alone, as in one training iteration: their inputs
  // marked fresh on the device (as the layers below leave them), forwards
  // in order, backwards in reverse, gradients on the device; microseconds.
  double LossesOnly(bool cpu, bool host_sum = false) {
    sync();
    const Clock::time_point t0 = Clock::now();
#ifndef CPU_ONLY
    for (size_t k = 0; k < losses_.size(); ++k) {
      const std::vector<Blob<float>*>& b = bottoms_[losses_[k]];
      for (size_t j = 0; j < b.size(); ++j) b[j]->mutable_gpu_data();
    }
#endif
    for (size_t k = 0; k < losses_.size(); ++k) {
      Forward(losses_[k], cpu);
      if (host_sum) sink_ += HostSum(losses_[k]);
    }
    for (int k = losses_.size() - 1; k >= 0; --k) Backward(losses_[k], cpu);
    sync();
    return 1000 * ms_since(t0);
  }

  // The sum, on the host, of layer i's per-sample losses (copied there).
  float HostSum(int i) {
    caffe::SoftmaxWithKLLossLayer<float>* l =
        dynamic_cast<caffe::SoftmaxWithKLLossLayer<float>*>(layers_[i].get());
    const Blob<float>& per_sample = l->*PerSample::member();
    const float* v = per_sample.cpu_data();
    float sum = 0;
    for (int j = 0; j < per_sample.count(); ++j) sum += v[j];
    return sum;
  }

  float sink() const { return sink_; }

 private:
  bool is_loss(int i) const { return loss_index(i) >= 0; }
  int loss_index(int i) const {
    for (size_t k = 0; k < losses_.size(); ++k) {
      if (losses_[k] == i) return k;
    }
    return -1;
  }

  const std::vector<boost::shared_ptr<Layer<float> > >& layers_;
  const std::vector<std::vector<Blob<float>*> >& bottoms_;
  const std::vector<std::vector<Blob<float>*> >& tops_;
  const std::vector<std::vector<bool> >& need_;
  const std::vector<bool>& layer_need_;
  std::vector<int> losses_;
  float sink_ = 0;
};

std::string quoted(const std::string& s) {
  std::string out = "\"";
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] == '"' || s[i] == '\\') out += '\\';
    out += s[i];
  }
  return out + "\"";
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2 || argc > 4) {
    std::fprintf(stderr, "usage: %s MODEL [ITERATIONS [REPS]]\n", argv[0]);
    return 2;
  }
  const std::string model = argv[1];
  const int iterations = argc > 2 ? std::atoi(argv[2]) : 30;
  const int reps = argc > 3 ? std::atoi(argv[3]) : 2000;
  if (iterations < 1 || reps < 1) {
    std::fprintf(stderr, "%s: ITERATIONS and REPS must be positive\n",
                 argv[0]);
    return 2;
  }
  ::google::InitGoogleLogging(argv[0]);

#ifndef CPU_ONLY
  Caffe::SetDevice(0);
  cudaDeviceProp prop;
  CUDA_CHECK(cudaGetDeviceProperties(&prop, 0));
  const std::string device = prop.name;
#else
  const std::string device = "CPU (CPU_ONLY build)";
#endif
  Caffe::set_mode(kDevice);
  Net<float> net(model, caffe::TRAIN);
  Runner run(&net);
  if (run.losses().empty()) {
    std::fprintf(stderr, "%s: %s has no JCDL loss layer\n", argv[0],
                 model.c_str());
    return 1;
  }
  const int n_loss = run.losses().size();

  // warm-up: allocations, cuBLAS / cuDNN set-up, both ways
  for (int w = 0; w < 3; ++w) { run.Iteration(false); run.Iteration(true); }

  // whole passes, the two ways interleaved so drift affects both alike
  std::vector<double> it_gpu, it_cpu;
  for (int n = 0; n < iterations; ++n) {
    it_gpu.push_back(run.Iteration(false));
    it_cpu.push_back(run.Iteration(true));
  }

  // each loss layer's forward and backward, synchronised around it
  std::vector<std::vector<double> > fg(n_loss), bg(n_loss), fc(n_loss),
      bc(n_loss);
  for (int n = 0; n < iterations; ++n) {
    run.TimedIteration(false, &fg, &bg);
    run.TimedIteration(true, &fc, &bc);
  }
  std::vector<double> sum_gpu(iterations, 0), sum_cpu(iterations, 0);
  for (int k = 0; k < n_loss; ++k) {
    for (int n = 0; n < iterations; ++n) {
      sum_gpu[n] += fg[k][n] + bg[k][n];
      sum_cpu[n] += fc[k][n] + bc[k][n];
    }
  }

  // the loss layers alone
  for (int w = 0; w < 20; ++w) { run.LossesOnly(false); run.LossesOnly(true); }
  std::vector<double> iso_gpu, iso_cpu, iso_host_sum;
  for (int r = 0; r < reps; ++r) {
    iso_gpu.push_back(run.LossesOnly(false));
    iso_cpu.push_back(run.LossesOnly(true));
    iso_host_sum.push_back(run.LossesOnly(false, true));
  }

  const double iter_gpu = median(it_gpu), iter_cpu = median(it_cpu);
  const double loss_gpu = median(sum_gpu), loss_cpu = median(sum_cpu);
  const double us_gpu = mean(iso_gpu), us_cpu = mean(iso_cpu);
  const double us_host_sum = mean(iso_host_sum);
  std::printf("{\n  \"device\": %s,\n  \"model\": %s,\n",
              quoted(device).c_str(), quoted(model).c_str());
  std::printf("  \"iterations\": %d,\n  \"reps\": %d,\n", iterations, reps);
  std::printf("  \"iteration_ms\": {\"gpu\": {\"median\": %.4f, \"mean\": "
              "%.4f}, \"cpu\": {\"median\": %.4f, \"mean\": %.4f}},\n",
              iter_gpu, mean(it_gpu), iter_cpu, mean(it_cpu));
  std::printf("  \"layers_ms\": {");
  for (int way = 0; way < 2; ++way) {
    std::printf("%s\"%s\": {", way ? ", " : "", way ? "cpu" : "gpu");
    for (int k = 0; k < n_loss; ++k) {
      const Layer<float>& l = run.layer(run.losses()[k]);
      std::printf("%s%s: {\"type\": %s, \"forward\": %.4f, \"backward\": "
                  "%.4f}", k ? ", " : "",
                  quoted(l.layer_param().name()).c_str(),
                  quoted(l.type()).c_str(),
                  median(way ? fc[k] : fg[k]), median(way ? bc[k] : bg[k]));
    }
    std::printf("}");
  }
  std::printf("},\n");
  std::printf("  \"loss_layers_ms\": {\"gpu\": %.4f, \"cpu\": %.4f},\n",
              loss_gpu, loss_cpu);
  std::printf("  \"isolated_us\": {\"gpu\": %.3f, \"cpu\": %.3f, "
              "\"gpu_host_sum\": %.3f},\n", us_gpu, us_cpu, us_host_sum);
  std::printf("  \"share_of_iteration\": {\"gpu\": %.6f, \"cpu\": %.6f},\n",
              loss_gpu / iter_gpu, loss_cpu / iter_cpu);
  std::printf("  \"cpu_over_gpu\": {\"isolated\": %.3f, \"in_net\": %.3f},\n",
              us_cpu / us_gpu, loss_cpu / loss_gpu);
  std::printf("  \"host_sum_over_device_sum\": %.3f\n}\n",
              us_host_sum / us_gpu);
  LOG(INFO) << "host sums (ignore): " << run.sink();
  return 0;
}
