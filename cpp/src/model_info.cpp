#include "visionforge/model_info.hpp"

#include <cmath>
#include <sstream>

#include <nlohmann/json.hpp>

#include "visionforge/errors.hpp"

namespace visionforge {
namespace {

using nlohmann::json;

[[noreturn]] void fail(const std::string& where, const std::string& what) {
  throw Error(where + ": " + what);
}

json parse_value(const std::map<std::string, std::string>& props, const std::string& key,
                 const std::string& where) {
  try {
    return json::parse(props.at(key));
  } catch (const json::parse_error& e) {
    fail(where, "metadata_props['" + key + "'] is not JSON (" + e.what() + "): " + props.at(key));
  }
}

bool is_number(const json& v) { return v.is_number() && std::isfinite(v.get<double>()); }

int positive_int(const json& v, const std::string& key, const std::string& where) {
  if (!v.is_number_integer() || v.get<long long>() <= 0 || v.get<long long>() > 1 << 20) {
    fail(where, "metadata_props['" + key + "'] must be a positive integer, got " + v.dump());
  }
  return v.get<int>();
}

std::array<float, 3> three_numbers(const json& v, const std::string& key, bool positive,
                                   const std::string& where) {
  bool ok = v.is_array() && v.size() == 3;
  for (size_t i = 0; ok && i < v.size(); ++i) {
    ok = is_number(v[i]) && (!positive || v[i].get<double>() > 0);
  }
  if (!ok) {
    fail(where, "metadata_props['" + key + "'] must be a list of 3 " +
                    (positive ? std::string("positive numbers") : std::string("numbers")) + ", got " +
                    v.dump());
  }
  // float, as the Python side builds float32 tensors from these values.
  return {v[0].get<float>(), v[1].get<float>(), v[2].get<float>()};
}

}  // namespace

ModelInfo parse_onnx_metadata(const std::map<std::string, std::string>& props, const std::string& where) {
  static const char* const required[] = {"input_size", "mean", "std", "class_names", "output_stride"};
  std::vector<std::string> missing;
  for (const char* key : required) {
    if (props.find(key) == props.end()) missing.emplace_back(key);
  }
  if (!missing.empty()) {
    std::ostringstream list;
    for (size_t i = 0; i < missing.size(); ++i) list << (i ? ", " : "") << "'" << missing[i] << "'";
    fail(where, "metadata_props lacks [" + list.str() +
                    "]: the pre-processing travels inside the model; export it with `visionforge export`");
  }

  ModelInfo info;
  info.input_size = positive_int(parse_value(props, "input_size", where), "input_size", where);
  info.output_stride = positive_int(parse_value(props, "output_stride", where), "output_stride", where);
  if (info.input_size % info.output_stride != 0) {
    fail(where, "output_stride " + std::to_string(info.output_stride) + " does not divide input_size " +
                    std::to_string(info.input_size));
  }
  info.mean = three_numbers(parse_value(props, "mean", where), "mean", false, where);
  info.std = three_numbers(parse_value(props, "std", where), "std", true, where);

  const json names = parse_value(props, "class_names", where);
  bool names_ok = names.is_array() && !names.empty();
  for (size_t i = 0; names_ok && i < names.size(); ++i) names_ok = names[i].is_string();
  if (!names_ok) fail(where, "metadata_props['class_names'] must be a non-empty list of strings");
  for (const auto& name : names) info.class_names.push_back(name.get<std::string>());

  if (props.count("resize")) {
    const json v = parse_value(props, "resize", where);
    if (!v.is_string() || v.get<std::string>() != "letterbox") {
      fail(where, "metadata_props['resize'] is " + v.dump() +
                      "; this program implements the pipeline's only resize mode, \"letterbox\"");
    }
  }
  if (props.count("color_order")) {
    const json v = parse_value(props, "color_order", where);
    if (!v.is_string() || (v.get<std::string>() != "RGB" && v.get<std::string>() != "BGR")) {
      fail(where, "metadata_props['color_order'] must be \"RGB\" or \"BGR\", got " + v.dump());
    }
    info.color_order = v.get<std::string>();
  }
  if (props.count("pixel_scale")) {
    const json v = parse_value(props, "pixel_scale", where);
    if (!is_number(v) || v.get<double>() <= 0) {
      fail(where, "metadata_props['pixel_scale'] must be a positive number, got " + v.dump());
    }
    info.pixel_scale = v.get<double>();
  }
  if (props.count("pad_value")) {
    const json v = parse_value(props, "pad_value", where);
    if (!v.is_null()) {  // OnnxMetadata allows None: the pipeline then pads with PAD_VALUE
      bool ok = v.is_array() && v.size() == 3;
      for (size_t i = 0; ok && i < 3; ++i) ok = v[i].is_number_integer() && v[i] >= 0 && v[i] <= 255;
      if (!ok) fail(where, "metadata_props['pad_value'] must be 3 integers in 0..255, got " + v.dump());
      info.pad_value = {v[0].get<double>(), v[1].get<double>(), v[2].get<double>()};
    }
  }
  return info;
}

}  // namespace visionforge
