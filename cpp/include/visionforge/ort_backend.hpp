// ONNX Runtime on the CPU, through its C API (the library shipped in the onnxruntime wheel).
// Session options mirror ops/deploy/runtime.py ort_session_options so C++ and Python run the same
// graph the same way: full graph optimisation, the given intra-op threads, one inter-op
// thread, no spinning.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "visionforge/backend.hpp"

struct OrtSession;
struct OrtValue;

namespace visionforge {

class OrtBackend : public InferenceBackend {
 public:
  // Loads the model and checks the contract (input `images` float32 (N, 3, S, S); outputs
  // heatmap, wh, offset; metadata present and consistent). Throws visionforge::Error.
  OrtBackend(const std::string& model_path, const BackendOptions& options);
  ~OrtBackend() override;
  OrtBackend(const OrtBackend&) = delete;
  OrtBackend& operator=(const OrtBackend&) = delete;

  const ModelInfo& model_info() const override { return info_; }
  std::string name() const override;
  float* input_buffer() override { return input_.data(); }
  HeadOutputs infer() override;

  // The runtime's version string, e.g. "1.31.1".
  static std::string runtime_version();

 private:
  std::string path_;
  int threads_;
  ModelInfo info_;
  OrtSession* session_ = nullptr;
  OrtValue* input_value_ = nullptr;
  std::vector<float> input_;
  OrtValue* outputs_[3] = {nullptr, nullptr, nullptr};  // heatmap, wh, offset from the last run
  void release_outputs();
};

}  // namespace visionforge
