// TensorRT 10 on an NVIDIA GPU. Built only with -DVISIONFORGE_TENSORRT=ON.
//
// Before TensorRT sees the engine, its sidecar (engine_sidecar.hpp) is read and checked: the
// engine's bytes must be the ones the sidecar hashes, and the TensorRT release and the GPU
// model must be the ones it was built with; otherwise the engine is refused with a message
// naming both sides. Pre- and post-processing come from the sidecar's copy of the ONNX
// metadata_props, parsed by parse_onnx_metadata exactly as for an ONNX model.
//
// UNVERIFIED: written against TensorRT 10's documented C++ API (IRuntime,
// deserializeCudaEngine, named I/O tensors, enqueueV3) but never compiled or run here:
// TensorRT cannot be installed on the machines this project is developed on.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "visionforge/backend.hpp"
#include "visionforge/engine_sidecar.hpp"

namespace visionforge {

class TrtBackend : public InferenceBackend {
 public:
  explicit TrtBackend(const std::string& engine_path);
  ~TrtBackend() override;
  TrtBackend(const TrtBackend&) = delete;
  TrtBackend& operator=(const TrtBackend&) = delete;

  const ModelInfo& model_info() const override { return info_; }
  std::string name() const override;
  float* input_buffer() override;
  HeadOutputs infer() override;

  // "major.minor.patch" of the TensorRT library this process loaded.
  static std::string runtime_version();

 private:
  struct State;  // TensorRT and CUDA objects, kept out of this header
  std::unique_ptr<State> state_;
  std::string path_;
  EngineSidecar sidecar_;
  ModelInfo info_;
};

}  // namespace visionforge
