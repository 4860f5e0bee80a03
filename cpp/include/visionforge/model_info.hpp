// What a consumer needs to feed the detector and read its outputs. It travels inside the model
// (ONNX metadata_props, written by ops/deploy/export.py) or beside it (the TensorRT engine's JSON
// sidecar, written by ops/deploy/tensorrt.py), so nothing here is ever hard-coded by the program.
#pragma once

#include <array>
#include <map>
#include <string>
#include <vector>

namespace visionforge {

// The ONNX contract's tensor names (ops/deploy/runtime.py: INPUT_NAME, OUTPUT_NAMES).
inline constexpr const char* kInputName = "images";
inline const std::vector<std::string>& output_names();  // heatmap, wh, offset

// Letterbox padding when a model does not state one: ops/data/detection.py PAD_VALUE.
inline constexpr std::array<double, 3> kDefaultPadValue{114.0, 114.0, 114.0};

struct ModelInfo {
  int input_size = 0;                 // square network input, pixels
  std::array<float, 3> mean{};        // per channel, in color_order, on 0..1 pixels
  std::array<float, 3> std{};
  std::vector<std::string> class_names;
  int output_stride = 0;              // input pixels per output-map cell
  std::string resize = "letterbox";   // the only mode the pipeline trains with
  std::array<double, 3> pad_value = kDefaultPadValue;  // in color_order
  std::string color_order = "RGB";    // channel order the network expects
  double pixel_scale = 1.0 / 255.0;   // uint8 * pixel_scale, then (x - mean) / std

  int num_classes() const { return static_cast<int>(class_names.size()); }
};

// Parse metadata_props values (each a JSON document, as OnnxMetadata.to_props writes them).
// `where` names the model file in error messages. Throws visionforge::Error.
ModelInfo parse_onnx_metadata(const std::map<std::string, std::string>& props, const std::string& where);

}  // namespace visionforge

inline const std::vector<std::string>& visionforge::output_names() {
  static const std::vector<std::string> names{"heatmap", "wh", "offset"};
  return names;
}
