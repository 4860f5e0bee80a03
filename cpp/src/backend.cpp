#include "visionforge/backend.hpp"

#include <algorithm>
#include <cctype>
#include <filesystem>

#include "visionforge/engine_sidecar.hpp"
#include "visionforge/errors.hpp"
#include "visionforge/ort_backend.hpp"
#ifdef VISIONFORGE_WITH_TENSORRT
#include "visionforge/trt_backend.hpp"
#endif

namespace visionforge {

std::unique_ptr<InferenceBackend> open_backend(const std::string& model_path, const BackendOptions& options) {
  std::string ext = std::filesystem::path(model_path).extension().string();
  std::transform(ext.begin(), ext.end(), ext.begin(), [](unsigned char c) { return std::tolower(c); });
  if (ext == ".engine" || ext == ".plan") {
#ifdef VISIONFORGE_WITH_TENSORRT
    return std::make_unique<TrtBackend>(model_path);
#else
    std::error_code ec;
    if (!std::filesystem::is_regular_file(model_path, ec)) throw Error("TensorRT engine not found: " + model_path);
    // Read the sidecar anyway: a broken one is reported as such, and its onnx_path names the
    // model this build can run instead.
    const EngineSidecar sidecar = read_sidecar(model_path);
    throw Error("TensorRT engine " + model_path +
                " needs the TensorRT backend, which this build does not include: configure with "
                "-DVISIONFORGE_TENSORRT=ON on a machine with TensorRT 10 and CUDA, or run the ONNX model it was "
                "built from (" + sidecar.onnx_path + ") with ONNX Runtime");
#endif
  }
  return std::make_unique<OrtBackend>(model_path, options);
}

}  // namespace visionforge
