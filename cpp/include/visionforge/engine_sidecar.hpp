// The JSON sidecar ops/deploy/tensorrt.py writes beside every engine (`model.engine` ->
// `model.engine.json`): the TensorRT version and GPU the engine was built for, the hashes of
// its bytes and of its ONNX source, and the ONNX model's metadata_props, key for key, so the
// pre- and post-processing are read by the same parser as an ONNX model's (parse_onnx_metadata).
// TensorRT engines only run on the exact TensorRT release and GPU model they were built with,
// so the sidecar is what lets the program refuse a foreign engine with a message instead of a
// crash. Parsing and the checks need no TensorRT and are tested in every build.
#pragma once

#include <array>
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "visionforge/model_info.hpp"

namespace visionforge {

// 2: the ONNX metadata_props as one `metadata` object instead of mean/std/input_size/class_names.
inline constexpr int kSidecarSchemaVersion = 2;  // ops/deploy/tensorrt.py SIDECAR_SCHEMA_VERSION

struct EngineSidecar {
  int schema_version = 0;
  std::string tensorrt_version;
  std::string gpu_name;
  std::string compute_capability;  // "major.minor"
  std::string precision;           // fp16 | int8
  std::string quantization;        // none | explicit | calibrated
  std::string input_name;
  int min_batch = 0, opt_batch = 0, max_batch = 0;
  std::array<int, 3> input_chw{};
  std::string onnx_path;
  std::string onnx_sha256;
  std::string engine_sha256;
  int64_t engine_bytes = 0;
  std::string built_at;
  // The ONNX metadata_props as the sidecar carries them (each value a JSON document).
  std::map<std::string, std::string> metadata;
  // `metadata` parsed by parse_onnx_metadata, and checked against input_chw by parse_sidecar.
  ModelInfo model_info;
};

// `<engine>.json`, beside the engine (ops/deploy/tensorrt.py sidecar_path).
std::string sidecar_path(const std::string& engine_path);

// Parse and validate every field as EngineSidecar.from_dict does (schema version first, so an
// older sidecar is answered with "rebuild the engine"; exact key set; types; the metadata with
// parse_onnx_metadata, agreeing with input_chw). `source` names the file in messages. Throws
// visionforge::Error.
EngineSidecar parse_sidecar(const std::string& json_text, const std::string& source);
EngineSidecar read_sidecar(const std::string& engine_path);

// Refuse an engine built by another TensorRT release or on another GPU model; both sides are
// named and the fix (rebuild here) is stated. Releases compare on major.minor.patch: the
// runtime library reports no build number, and engines are compatible within a patch release.
void check_engine_compatible(const EngineSidecar& sidecar, const std::string& tensorrt_version,
                             const std::string& gpu_name, const std::string& compute_capability,
                             const std::string& engine_path);

// Refuse engine bytes that are not the ones the sidecar describes (truncated or replaced).
void check_engine_bytes(const EngineSidecar& sidecar, const std::vector<char>& bytes,
                        const std::string& engine_path);

}  // namespace visionforge
