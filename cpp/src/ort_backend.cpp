#include "visionforge/ort_backend.hpp"

#include <onnxruntime_c_api.h>

#include <algorithm>
#include <filesystem>
#include <map>
#include <sstream>

#include "visionforge/errors.hpp"

namespace visionforge {
namespace {

const OrtApi& api() {
  // The header is older than or equal to the library (API versions only ever grow), so the
  // library serves this header's API version; a null answer means a library older than it.
  static const OrtApi* table = OrtGetApiBase()->GetApi(ORT_API_VERSION);
  if (table == nullptr) {
    throw Error("the ONNX Runtime library (" + std::string(OrtGetApiBase()->GetVersionString()) +
                ") does not provide C API version " + std::to_string(ORT_API_VERSION));
  }
  return *table;
}

void check(OrtStatus* status, const std::string& context) {
  if (status == nullptr) return;
  const std::string message = api().GetErrorMessage(status);
  api().ReleaseStatus(status);
  throw Error(context + " (" + message + ")");
}

// One environment per process: it owns ONNX Runtime's logging and global thread state.
OrtEnv* environment() {
  static OrtEnv* env = [] {
    OrtEnv* created = nullptr;
    check(api().CreateEnv(ORT_LOGGING_LEVEL_ERROR, "visionforge", &created), "cannot start ONNX Runtime");
    return created;
  }();
  return env;
}

OrtAllocator* default_allocator() {
  OrtAllocator* allocator = nullptr;
  check(api().GetAllocatorWithDefaultOptions(&allocator), "ONNX Runtime has no default allocator");
  return allocator;
}

// Memory ONNX Runtime allocates for us is freed with the allocator that made it.
void release(void* memory) {
  if (memory == nullptr) return;
  if (OrtStatus* status = api().AllocatorFree(default_allocator(), memory)) api().ReleaseStatus(status);
}

std::string take_string(char* text) {
  std::string copy = text ? text : "";
  release(text);
  return copy;
}

std::string join_quoted(const std::vector<std::string>& items) {
  std::ostringstream out;
  out << "[";
  for (size_t i = 0; i < items.size(); ++i) out << (i ? ", " : "") << "'" << items[i] << "'";
  out << "]";
  return out.str();
}

struct TensorSignature {
  bool is_tensor = false;
  ONNXTensorElementDataType type = ONNX_TENSOR_ELEMENT_DATA_TYPE_UNDEFINED;
  std::vector<int64_t> dims;  // -1 (or 0) for symbolic dimensions
};

TensorSignature signature(OrtTypeInfo* type_info) {
  TensorSignature sig;
  const OrtTensorTypeAndShapeInfo* tensor = nullptr;
  OrtStatus* status = api().CastTypeInfoToTensorInfo(type_info, &tensor);
  if (status != nullptr || tensor == nullptr) {
    if (status) api().ReleaseStatus(status);
    api().ReleaseTypeInfo(type_info);
    return sig;
  }
  sig.is_tensor = true;
  size_t rank = 0;
  check(api().GetTensorElementType(tensor, &sig.type), "cannot read a tensor type");
  check(api().GetDimensionsCount(tensor, &rank), "cannot read a tensor rank");
  sig.dims.resize(rank);
  check(api().GetDimensions(tensor, sig.dims.data(), rank), "cannot read tensor dimensions");
  api().ReleaseTypeInfo(type_info);
  return sig;
}

std::string shape_text(const std::vector<int64_t>& dims) {
  std::ostringstream out;
  out << "(";
  for (size_t i = 0; i < dims.size(); ++i) {
    out << (i ? ", " : "");
    if (dims[i] > 0) out << dims[i]; else out << "?";
  }
  out << ")";
  return out.str();
}

}  // namespace

std::string OrtBackend::runtime_version() { return OrtGetApiBase()->GetVersionString(); }

OrtBackend::OrtBackend(const std::string& model_path, const BackendOptions& options)
    : path_(model_path), threads_(options.threads) {
  namespace fs = std::filesystem;
  std::error_code ec;
  if (!fs::is_regular_file(path_, ec)) {
    throw Error(path_ + ": ONNX model not found" + (fs::exists(path_, ec) ? " (not a regular file)" : ""));
  }
  const OrtApi& ort = api();

  OrtSessionOptions* session_options = nullptr;
  check(ort.CreateSessionOptions(&session_options), "cannot create ONNX Runtime session options");
  std::unique_ptr<OrtSessionOptions, void (*)(OrtSessionOptions*)> options_guard(
      session_options, [](OrtSessionOptions* o) { api().ReleaseSessionOptions(o); });
  check(ort.SetSessionGraphOptimizationLevel(session_options, ORT_ENABLE_ALL), "session options");
  if (threads_ > 0) {
    check(ort.SetIntraOpNumThreads(session_options, threads_), "session options");
    check(ort.SetInterOpNumThreads(session_options, 1), "session options");
  }
  // No spinning: idle worker threads would otherwise keep cores busy between frames, time the
  // video decoder and the pre-processing need (and Python's sessions are configured the same).
  check(ort.AddSessionConfigEntry(session_options, "session.intra_op.allow_spinning", "0"), "session options");
  check(ort.SetSessionLogSeverityLevel(session_options, ORT_LOGGING_LEVEL_ERROR), "session options");

  OrtStatus* status = ort.CreateSession(environment(), path_.c_str(), session_options, &session_);
  if (status != nullptr) {
    const std::string message = ort.GetErrorMessage(status);
    ort.ReleaseStatus(status);
    session_ = nullptr;
    throw Error(path_ + ": ONNX Runtime cannot load this model (" + message + ")");
  }

  try {
    // The I/O contract, checked by name first so the message lists everything that is wrong.
    size_t num_inputs = 0, num_outputs = 0;
    check(ort.SessionGetInputCount(session_, &num_inputs), path_);
    check(ort.SessionGetOutputCount(session_, &num_outputs), path_);
    std::vector<std::string> inputs, outputs;
    for (size_t i = 0; i < num_inputs; ++i) {
      char* name = nullptr;
      check(ort.SessionGetInputName(session_, i, default_allocator(), &name), path_);
      inputs.push_back(take_string(name));
    }
    for (size_t i = 0; i < num_outputs; ++i) {
      char* name = nullptr;
      check(ort.SessionGetOutputName(session_, i, default_allocator(), &name), path_);
      outputs.push_back(take_string(name));
    }
    std::vector<std::string> sorted_outputs = outputs, expected = output_names();
    std::sort(sorted_outputs.begin(), sorted_outputs.end());
    std::sort(expected.begin(), expected.end());
    if (inputs != std::vector<std::string>{kInputName} || sorted_outputs != expected) {
      throw Error(path_ + ": inputs " + join_quoted(inputs) + " / outputs " + join_quoted(outputs) +
                  " do not match the detector contract (input '" + kInputName + "'; outputs " +
                  join_quoted(output_names()) + ")");
    }

    // Metadata: the pre-processing travels inside the model.
    OrtModelMetadata* metadata = nullptr;
    check(ort.SessionGetModelMetadata(session_, &metadata), path_ + ": cannot read the model's metadata");
    std::map<std::string, std::string> props;
    char** keys = nullptr;
    int64_t num_keys = 0;
    OrtStatus* keys_status = ort.ModelMetadataGetCustomMetadataMapKeys(metadata, default_allocator(), &keys, &num_keys);
    if (keys_status == nullptr) {
      for (int64_t i = 0; i < num_keys; ++i) {
        char* value = nullptr;
        OrtStatus* lookup = ort.ModelMetadataLookupCustomMetadataMap(metadata, default_allocator(), keys[i], &value);
        if (lookup == nullptr) props[keys[i]] = take_string(value); else ort.ReleaseStatus(lookup);
        release(keys[i]);
      }
      release(keys);
    } else {
      ort.ReleaseStatus(keys_status);
    }
    ort.ReleaseModelMetadata(metadata);
    info_ = parse_onnx_metadata(props, path_);

    // Types and static shapes against the metadata.
    OrtTypeInfo* type_info = nullptr;
    check(ort.SessionGetInputTypeInfo(session_, 0, &type_info), path_);
    const TensorSignature in = signature(type_info);
    const int64_t s = info_.input_size;
    const auto fixed_or = [](int64_t dim, int64_t want) { return dim <= 0 || dim == want; };
    if (!in.is_tensor || in.type != ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT || in.dims.size() != 4 ||
        !fixed_or(in.dims[1], 3) || !fixed_or(in.dims[2], s) || !fixed_or(in.dims[3], s)) {
      throw Error(path_ + ": input '" + std::string(kInputName) + "' must be float32 (N, 3, " +
                  std::to_string(s) + ", " + std::to_string(s) + ") as metadata_props input_size says, found " +
                  (in.is_tensor ? shape_text(in.dims) : std::string("a non-tensor")) +
                  (in.is_tensor && in.type != ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT ? " of another type" : ""));
    }
    for (size_t i = 0; i < num_outputs; ++i) {
      check(ort.SessionGetOutputTypeInfo(session_, i, &type_info), path_);
      const TensorSignature out = signature(type_info);
      const int64_t channels = outputs[i] == "heatmap" ? info_.num_classes() : 2;
      if (!out.is_tensor || out.type != ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT || out.dims.size() != 4 ||
          !fixed_or(out.dims[1], channels)) {
        throw Error(path_ + ": output '" + outputs[i] + "' must be float32 (N, " + std::to_string(channels) +
                    ", H, W)" + (outputs[i] == "heatmap" ? " (one channel per class in metadata_props class_names)"
                                                         : std::string()) +
                    ", found " + (out.is_tensor ? shape_text(out.dims) : std::string("a non-tensor")));
      }
    }

    input_.assign(static_cast<size_t>(3 * s * s), 0.0f);
    OrtMemoryInfo* memory = nullptr;
    check(ort.CreateCpuMemoryInfo(OrtArenaAllocator, OrtMemTypeDefault, &memory), "ONNX Runtime memory info");
    const int64_t shape[4] = {1, 3, s, s};
    OrtStatus* tensor_status = ort.CreateTensorWithDataAsOrtValue(
        memory, input_.data(), input_.size() * sizeof(float), shape, 4, ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT,
        &input_value_);
    ort.ReleaseMemoryInfo(memory);
    check(tensor_status, "cannot wrap the input buffer");
  } catch (...) {
    if (input_value_) ort.ReleaseValue(input_value_);
    ort.ReleaseSession(session_);
    throw;
  }
}

OrtBackend::~OrtBackend() {
  release_outputs();
  if (input_value_) api().ReleaseValue(input_value_);
  if (session_) api().ReleaseSession(session_);
}

void OrtBackend::release_outputs() {
  for (OrtValue*& value : outputs_) {
    if (value) api().ReleaseValue(value);
    value = nullptr;
  }
}

std::string OrtBackend::name() const {
  return "onnxruntime " + runtime_version() + " cpu, " +
         (threads_ > 0 ? std::to_string(threads_) + " threads" : std::string("default threads"));
}

HeadOutputs OrtBackend::infer() {
  const OrtApi& ort = api();
  release_outputs();
  static const char* const names[3] = {"heatmap", "wh", "offset"};
  const char* input_names[1] = {kInputName};
  check(ort.Run(session_, nullptr, input_names, &input_value_, 1, names, 3, outputs_),
        path_ + ": inference failed");

  float* data[3] = {nullptr, nullptr, nullptr};
  std::vector<int64_t> dims[3];
  for (int i = 0; i < 3; ++i) {
    check(ort.GetTensorMutableData(outputs_[i], reinterpret_cast<void**>(&data[i])), path_);
    OrtTensorTypeAndShapeInfo* shape_info = nullptr;
    check(ort.GetTensorTypeAndShape(outputs_[i], &shape_info), path_);
    size_t rank = 0;
    OrtStatus* status = ort.GetDimensionsCount(shape_info, &rank);
    if (status == nullptr) {
      dims[i].resize(rank);
      status = ort.GetDimensions(shape_info, dims[i].data(), rank);
    }
    ort.ReleaseTensorTypeAndShapeInfo(shape_info);
    check(status, path_);
  }
  const int64_t cells = info_.input_size / info_.output_stride;
  const bool ok = dims[0].size() == 4 && dims[0][0] == 1 && dims[0][1] == info_.num_classes() &&
                  dims[0][2] == cells && dims[0][3] == cells && dims[1] == std::vector<int64_t>{1, 2, cells, cells} &&
                  dims[2] == std::vector<int64_t>{1, 2, cells, cells};
  if (!ok) {
    throw Error(path_ + ": outputs heatmap " + shape_text(dims[0]) + ", wh " + shape_text(dims[1]) + ", offset " +
                shape_text(dims[2]) + " do not fit metadata_props (" + std::to_string(info_.num_classes()) +
                " classes, input_size " + std::to_string(info_.input_size) + " / output_stride " +
                std::to_string(info_.output_stride) + " = " + std::to_string(cells) + " cells)");
  }
  HeadOutputs heads;
  heads.heatmap = data[0];
  heads.wh = data[1];
  heads.offset = data[2];
  heads.num_classes = info_.num_classes();
  heads.height = static_cast<int>(cells);
  heads.width = static_cast<int>(cells);
  return heads;
}

}  // namespace visionforge
