// One inference interface for every engine, as ops/deploy/runtime.py's Predictor is for Python: a
// normalised NCHW float32 image in (the ONNX contract's `images`), heatmap/wh/offset out.
// The pipeline only sees this interface, so no code special-cases a backend.
#pragma once

#include <memory>
#include <string>

#include "visionforge/decoder.hpp"
#include "visionforge/model_info.hpp"

namespace visionforge {

class InferenceBackend {
 public:
  virtual ~InferenceBackend() = default;

  // Pre-processing facts and class names, read from the model or its sidecar.
  virtual const ModelInfo& model_info() const = 0;
  // For messages and benchmark tables, e.g. "onnxruntime-cpu (2 threads)".
  virtual std::string name() const = 0;
  // Where the caller writes one image (3 x S x S floats) before calling infer(). Owned by the
  // backend so it can sit in memory the runtime reads directly (pinned memory for a GPU).
  virtual float* input_buffer() = 0;
  // Run the network on input_buffer(); the views stay valid until the next call.
  virtual HeadOutputs infer() = 0;
};

struct BackendOptions {
  int threads = 0;  // ONNX Runtime intra-op threads; 0 lets ONNX Runtime choose
};

// Pick the backend from the file: .onnx -> ONNX Runtime; .engine / .plan -> TensorRT (in builds
// configured with -DVISIONFORGE_TENSORRT=ON). Throws visionforge::Error with a clear message.
std::unique_ptr<InferenceBackend> open_backend(const std::string& model_path, const BackendOptions& options);

}  // namespace visionforge
