#include "visionforge/engine_sidecar.hpp"

#include <cctype>
#include <ctime>
#include <fstream>
#include <functional>
#include <iomanip>
#include <set>
#include <sstream>

#include <nlohmann/json.hpp>

#include "visionforge/errors.hpp"
#include "visionforge/sha256.hpp"

namespace visionforge {
namespace {

using nlohmann::json;

bool is_text(const json& v) { return v.is_string() && !v.get<std::string>().empty(); }
bool is_positive_int(const json& v) { return v.is_number_integer() && v.get<int64_t>() > 0; }
bool is_hex64(const json& v) { return v.is_string() && v.get<std::string>().size() == 64; }

bool is_capability(const json& v) {
  if (!v.is_string()) return false;
  const std::string s = v.get<std::string>();
  const auto dot = s.find('.');
  if (dot == std::string::npos || s.find('.', dot + 1) != std::string::npos) return false;
  for (size_t i = 0; i < s.size(); ++i) {
    if (i != dot && !std::isdigit(static_cast<unsigned char>(s[i]))) return false;
  }
  return true;
}

bool is_iso_time(const json& v) {
  // datetime.fromisoformat accepts more, but the builder writes "YYYY-MM-DDTHH:MM:SS+00:00".
  if (!v.is_string()) return false;
  std::tm tm{};
  std::istringstream in(v.get<std::string>());
  in >> std::get_time(&tm, "%Y-%m-%dT%H:%M:%S");
  return !in.fail();
}

bool string_object(const json& v) {
  if (!v.is_object()) return false;
  for (const auto& item : v.items()) {
    if (!item.value().is_string()) return false;
  }
  return true;
}

struct Rule {
  const char* key;
  std::function<bool(const json&)> check;
  const char* expected;
};

const std::vector<Rule>& rules() {
  static const std::vector<Rule> table = {
      {"tensorrt_version", is_text, "a version string"},
      {"gpu_name", is_text, "a GPU name"},
      {"compute_capability", is_capability, "'major.minor'"},
      {"precision", [](const json& v) { return v == "fp16" || v == "int8"; }, "one of ['fp16', 'int8']"},
      {"quantization", [](const json& v) { return v == "none" || v == "explicit" || v == "calibrated"; },
       "one of ['none', 'explicit', 'calibrated']"},
      {"input_name", is_text, "a tensor name"},
      {"min_batch", is_positive_int, "a positive integer"},
      {"opt_batch", is_positive_int, "a positive integer"},
      {"max_batch", is_positive_int, "a positive integer"},
      {"input_chw",
       [](const json& v) {
         return v.is_array() && v.size() == 3 && is_positive_int(v[0]) && is_positive_int(v[1]) &&
                is_positive_int(v[2]);
       },
       "[C, H, W] positive integers"},
      {"onnx_path", [](const json& v) { return v.is_string(); }, "a path string"},
      {"onnx_sha256", is_hex64, "a sha256 hex digest"},
      {"engine_sha256", is_hex64, "a sha256 hex digest"},
      {"engine_bytes", is_positive_int, "a positive integer"},
      {"built_at", is_iso_time, "an ISO 8601 time"},
      {"metadata", string_object, "an object of JSON-encoded strings (the ONNX metadata_props)"},
  };
  return table;
}

std::string join(const std::vector<std::string>& items) {
  std::ostringstream out;
  out << "[";
  for (size_t i = 0; i < items.size(); ++i) out << (i ? ", " : "") << "'" << items[i] << "'";
  out << "]";
  return out.str();
}

std::string release_of(const std::string& version) {
  // "10.3.0.26" -> "10.3.0": the first three dot-separated parts.
  std::istringstream in(version);
  std::string part, release;
  for (int i = 0; i < 3 && std::getline(in, part, '.'); ++i) release += (i ? "." : "") + part;
  return release;
}

}  // namespace

std::string sidecar_path(const std::string& engine_path) { return engine_path + ".json"; }

EngineSidecar parse_sidecar(const std::string& json_text, const std::string& source) {
  json raw;
  try {
    raw = json::parse(json_text);
  } catch (const json::parse_error& e) {
    throw Error("engine sidecar " + source + " is not valid JSON: " + e.what());
  }
  if (!raw.is_object()) {
    throw Error("engine sidecar " + source + " must hold a JSON object, got " + std::string(raw.type_name()));
  }
  // The version comes first: an older sidecar has other keys, and "rebuild the engine" is the
  // useful answer, not a list of them.
  if (raw.contains("schema_version") && raw["schema_version"] != kSidecarSchemaVersion) {
    throw Error("engine sidecar " + source + " has schema_version " + raw["schema_version"].dump() +
                "; this program reads version " + std::to_string(kSidecarSchemaVersion) + ": rebuild the engine");
  }
  std::set<std::string> expected{"schema_version"};
  for (const Rule& rule : rules()) expected.insert(rule.key);
  std::vector<std::string> missing, unknown;
  for (const auto& key : expected) {
    if (!raw.contains(key)) missing.push_back(key);
  }
  for (const auto& item : raw.items()) {
    if (!expected.count(item.key())) unknown.push_back(item.key());
  }
  if (!missing.empty() || !unknown.empty()) {
    std::string parts;
    if (!missing.empty()) parts += "missing keys " + join(missing);
    if (!unknown.empty()) parts += std::string(parts.empty() ? "" : "; ") + "unknown keys " + join(unknown);
    throw Error("engine sidecar " + source + " is malformed: " + parts);
  }
  std::vector<std::string> problems;
  for (const Rule& rule : rules()) {
    if (!rule.check(raw[rule.key])) {
      problems.push_back(std::string(rule.key) + ": expected " + rule.expected + ", got " + raw[rule.key].dump());
    }
  }
  if (problems.empty() && !(raw["min_batch"].get<int64_t>() <= raw["opt_batch"].get<int64_t>() &&
                            raw["opt_batch"].get<int64_t>() <= raw["max_batch"].get<int64_t>())) {
    problems.emplace_back("batch profile: expected min_batch <= opt_batch <= max_batch");
  }
  if (!problems.empty()) {
    std::string text;
    for (size_t i = 0; i < problems.size(); ++i) text += (i ? "; " : "") + problems[i];
    throw Error("engine sidecar " + source + " is malformed: " + text);
  }
  EngineSidecar s;
  s.schema_version = raw["schema_version"].get<int>();
  s.tensorrt_version = raw["tensorrt_version"].get<std::string>();
  s.gpu_name = raw["gpu_name"].get<std::string>();
  s.compute_capability = raw["compute_capability"].get<std::string>();
  s.precision = raw["precision"].get<std::string>();
  s.quantization = raw["quantization"].get<std::string>();
  s.input_name = raw["input_name"].get<std::string>();
  s.min_batch = raw["min_batch"].get<int>();
  s.opt_batch = raw["opt_batch"].get<int>();
  s.max_batch = raw["max_batch"].get<int>();
  for (int i = 0; i < 3; ++i) s.input_chw[i] = raw["input_chw"][i].get<int>();
  s.onnx_path = raw["onnx_path"].get<std::string>();
  s.onnx_sha256 = raw["onnx_sha256"].get<std::string>();
  s.engine_sha256 = raw["engine_sha256"].get<std::string>();
  s.engine_bytes = raw["engine_bytes"].get<int64_t>();
  s.built_at = raw["built_at"].get<std::string>();
  s.metadata = raw["metadata"].get<std::map<std::string, std::string>>();
  try {
    // The ONNX backend's parser: one reading of the metadata for both model formats.
    s.model_info = parse_onnx_metadata(s.metadata, source);
  } catch (const Error& e) {
    throw Error("engine sidecar " + source + " has bad metadata (" + e.what() + "): rebuild the engine");
  }
  const int size = s.model_info.input_size;
  if (s.input_chw[0] != 3 || s.input_chw[1] != size || s.input_chw[2] != size) {
    // parse_onnx_metadata accepts 3 channels only (the detector's), so C is checked here too.
    throw Error("engine sidecar " + source + " is malformed: metadata input_size " + std::to_string(size) +
                " (3-channel images) disagrees with input_chw [" + std::to_string(s.input_chw[0]) + ", " +
                std::to_string(s.input_chw[1]) + ", " + std::to_string(s.input_chw[2]) + "]");
  }
  return s;
}

EngineSidecar read_sidecar(const std::string& engine_path) {
  const std::string path = sidecar_path(engine_path);
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    throw Error("engine sidecar not found: " + path +
                " (every engine needs the JSON written beside it by build_engine; rebuild the engine)");
  }
  std::ostringstream text;
  text << in.rdbuf();
  return parse_sidecar(text.str(), path);
}

void check_engine_compatible(const EngineSidecar& sidecar, const std::string& tensorrt_version,
                             const std::string& gpu_name, const std::string& compute_capability,
                             const std::string& engine_path) {
  std::vector<std::string> problems;
  if (release_of(sidecar.tensorrt_version) != release_of(tensorrt_version)) {
    problems.push_back("it was built with TensorRT " + sidecar.tensorrt_version + " but this machine runs TensorRT " +
                       tensorrt_version);
  }
  if (sidecar.gpu_name != gpu_name || sidecar.compute_capability != compute_capability) {
    problems.push_back("it was built on " + sidecar.gpu_name + " (compute capability " + sidecar.compute_capability +
                       ") but this machine has " + gpu_name + " (compute capability " + compute_capability + ")");
  }
  if (!problems.empty()) {
    std::string text;
    for (size_t i = 0; i < problems.size(); ++i) text += (i ? "; " : "") + problems[i];
    throw Error("TensorRT engine " + engine_path + " cannot run here: " + text +
                ". Engines are not portable across TensorRT versions or GPU models: rebuild it from the ONNX "
                "model on this machine");
  }
}

void check_engine_bytes(const EngineSidecar& sidecar, const std::vector<char>& bytes,
                        const std::string& engine_path) {
  const std::string digest = sha256_hex(bytes.data(), bytes.size());
  if (static_cast<int64_t>(bytes.size()) != sidecar.engine_bytes || digest != sidecar.engine_sha256) {
    throw Error("TensorRT engine " + engine_path + " is not the engine its sidecar describes: the file has " +
                std::to_string(bytes.size()) + " bytes with sha256 " + digest.substr(0, 12) +
                "..., its sidecar expects " + std::to_string(sidecar.engine_bytes) + " bytes with sha256 " +
                sidecar.engine_sha256.substr(0, 12) + "...; rebuild the engine or restore the matching sidecar");
  }
}

}  // namespace visionforge
