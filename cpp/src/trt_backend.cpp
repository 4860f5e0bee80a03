// UNVERIFIED: see trt_backend.hpp. Written against TensorRT 10's C++ API; not compiled here.
#include "visionforge/trt_backend.hpp"

#include <NvInferRuntime.h>
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <iterator>

#include "visionforge/errors.hpp"

namespace visionforge {
namespace {

class Logger : public nvinfer1::ILogger {
 public:
  void log(Severity severity, const char* message) noexcept override {
    if (severity <= Severity::kERROR) last_error = message;
    if (severity <= Severity::kWARNING) std::cerr << "TensorRT: " << message << "\n";
  }
  std::string last_error;
};

// TensorRT keeps the logger of the first runtime for the whole process: one instance.
Logger& logger() {
  static Logger instance;
  return instance;
}

void cuda_check(cudaError_t status, const std::string& what) {
  if (status != cudaSuccess) throw Error(what + " failed: " + cudaGetErrorString(status));
}

float half_to_float(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000) << 16;
  uint32_t exponent = (h >> 10) & 0x1f;
  uint32_t mantissa = h & 0x3ff;
  uint32_t bits;
  if (exponent == 0) {
    if (mantissa == 0) {
      bits = sign;
    } else {  // subnormal half: normalise
      exponent = 127 - 15 + 1;
      while (!(mantissa & 0x400)) {
        mantissa <<= 1;
        --exponent;
      }
      bits = sign | (exponent << 23) | ((mantissa & 0x3ff) << 13);
    }
  } else if (exponent == 31) {
    bits = sign | 0x7f800000 | (mantissa << 13);
  } else {
    bits = sign | ((exponent - 15 + 127) << 23) | (mantissa << 13);
  }
  float out;
  std::memcpy(&out, &bits, sizeof(out));
  return out;
}

size_t element_size(nvinfer1::DataType type) {
  switch (type) {
    case nvinfer1::DataType::kFLOAT: return 4;
    case nvinfer1::DataType::kHALF: return 2;
    default: return 0;
  }
}

int64_t volume(const nvinfer1::Dims& dims) {
  int64_t n = 1;
  for (int i = 0; i < dims.nbDims; ++i) n *= dims.d[i];
  return n;
}

std::string dims_text(const nvinfer1::Dims& dims) {
  std::string text = "(";
  for (int i = 0; i < dims.nbDims; ++i) text += (i ? ", " : "") + std::to_string(dims.d[i]);
  return text + ")";
}

}  // namespace

struct TrtBackend::State {
  std::unique_ptr<nvinfer1::IRuntime> runtime;
  std::unique_ptr<nvinfer1::ICudaEngine> engine;
  std::unique_ptr<nvinfer1::IExecutionContext> context;
  cudaStream_t stream = nullptr;
  void* device_input = nullptr;
  float* host_input = nullptr;  // pinned, so the upload is a true asynchronous DMA
  struct Output {
    std::string name;
    nvinfer1::DataType type = nvinfer1::DataType::kFLOAT;
    nvinfer1::Dims dims{};
    void* device = nullptr;
    void* host = nullptr;         // pinned, raw engine type
    std::vector<float> values;    // float32 view handed to the decoder
  };
  Output outputs[3];

  ~State() {
    if (stream) cudaStreamSynchronize(stream);
    for (Output& out : outputs) {
      if (out.device) cudaFree(out.device);
      if (out.host) cudaFreeHost(out.host);
    }
    if (device_input) cudaFree(device_input);
    if (host_input) cudaFreeHost(host_input);
    if (stream) cudaStreamDestroy(stream);
    // TensorRT 10 objects are released with delete, context before engine before runtime.
    context.reset();
    engine.reset();
    runtime.reset();
  }
};

std::string TrtBackend::runtime_version() {
  // TensorRT 10 encodes its version as major * 10000 + minor * 100 + patch.
  const int32_t v = getInferLibVersion();
  return std::to_string(v / 10000) + "." + std::to_string((v / 100) % 100) + "." + std::to_string(v % 100);
}

TrtBackend::TrtBackend(const std::string& engine_path) : state_(std::make_unique<State>()), path_(engine_path) {
  namespace fs = std::filesystem;
  std::error_code ec;
  if (!fs::is_regular_file(path_, ec)) throw Error("TensorRT engine not found: " + path_);
  sidecar_ = read_sidecar(path_);

  std::ifstream in(path_, std::ios::binary);
  std::vector<char> bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (!in.good() && !in.eof()) throw Error("cannot read TensorRT engine " + path_);
  check_engine_bytes(sidecar_, bytes, path_);

  const int32_t version = getInferLibVersion();
  if (version / 10000 != 10) {
    throw Error("TensorRT " + runtime_version() + " is loaded but this program is written for TensorRT 10.x");
  }
  int devices = 0;
  if (cudaGetDeviceCount(&devices) != cudaSuccess || devices == 0) {
    throw Error("no CUDA device: TensorRT engines need an NVIDIA GPU");
  }
  int device = 0;
  cuda_check(cudaGetDevice(&device), "cudaGetDevice");
  cudaDeviceProp prop{};
  cuda_check(cudaGetDeviceProperties(&prop, device), "cudaGetDeviceProperties");
  check_engine_compatible(sidecar_, runtime_version(), prop.name,
                          std::to_string(prop.major) + "." + std::to_string(prop.minor), path_);

  State& st = *state_;
  st.runtime.reset(nvinfer1::createInferRuntime(logger()));
  if (!st.runtime) throw Error("cannot create the TensorRT runtime");
  logger().last_error.clear();
  st.engine.reset(st.runtime->deserializeCudaEngine(bytes.data(), bytes.size()));
  if (!st.engine) {
    throw Error("TensorRT cannot deserialise " + path_ + ": " +
                (logger().last_error.empty() ? std::string("no reason given") : logger().last_error));
  }

  // The contract: input `images` (float32), outputs heatmap, wh, offset.
  std::vector<std::string> inputs, outputs;
  for (int32_t i = 0; i < st.engine->getNbIOTensors(); ++i) {
    const char* name = st.engine->getIOTensorName(i);
    (st.engine->getTensorIOMode(name) == nvinfer1::TensorIOMode::kINPUT ? inputs : outputs).push_back(name);
  }
  std::vector<std::string> sorted_outputs = outputs, expected = output_names();
  std::sort(sorted_outputs.begin(), sorted_outputs.end());
  std::sort(expected.begin(), expected.end());
  if (inputs != std::vector<std::string>{kInputName} || sorted_outputs != expected) {
    throw Error(path_ + ": engine tensors do not match the detector contract (input 'images'; outputs "
                "'heatmap', 'wh', 'offset')");
  }
  if (st.engine->getTensorDataType(kInputName) != nvinfer1::DataType::kFLOAT) {
    throw Error(path_ + ": engine input 'images' is not float32");
  }

  st.context.reset(st.engine->createExecutionContext());
  if (!st.context) throw Error("TensorRT cannot create an execution context for " + path_);
  // Everything about the input and outputs comes from the sidecar's metadata, parsed as the
  // ONNX backend parses metadata_props; nothing is inferred from the engine or assumed.
  info_ = sidecar_.model_info;
  const int s = info_.input_size;
  if (!st.context->setInputShape(kInputName, nvinfer1::Dims4{1, 3, s, s})) {
    throw Error(path_ + ": the engine's batch profile (" + std::to_string(sidecar_.min_batch) + ".." +
                std::to_string(sidecar_.max_batch) + ") does not admit one image per call");
  }

  cuda_check(cudaStreamCreate(&st.stream), "cudaStreamCreate");
  const size_t input_bytes = sizeof(float) * 3u * s * s;
  cuda_check(cudaMalloc(&st.device_input, input_bytes), "cudaMalloc");
  cuda_check(cudaMallocHost(reinterpret_cast<void**>(&st.host_input), input_bytes), "cudaMallocHost");
  if (!st.context->setTensorAddress(kInputName, st.device_input)) throw Error("cannot bind input 'images'");

  for (int i = 0; i < 3; ++i) {
    State::Output& out = st.outputs[i];
    out.name = output_names()[i];
    out.type = st.engine->getTensorDataType(out.name.c_str());
    out.dims = st.context->getTensorShape(out.name.c_str());
    const size_t bytes_per = element_size(out.type);
    if (bytes_per == 0 || out.dims.nbDims != 4 || volume(out.dims) <= 0) {
      throw Error(path_ + ": engine output '" + out.name + "' must be float32 or float16 (1, C, H, W), found " +
                  dims_text(out.dims));
    }
    const size_t count = static_cast<size_t>(volume(out.dims));
    cuda_check(cudaMalloc(&out.device, count * bytes_per), "cudaMalloc");
    cuda_check(cudaMallocHost(&out.host, count * bytes_per), "cudaMallocHost");
    out.values.resize(count);
    if (!st.context->setTensorAddress(out.name.c_str(), out.device)) throw Error("cannot bind output " + out.name);
  }
  const nvinfer1::Dims& heat = st.outputs[0].dims;
  const int cells = s / info_.output_stride;  // parse_onnx_metadata checked that the stride divides s
  if (heat.d[2] != cells || heat.d[3] != cells) {
    throw Error(path_ + ": heatmap " + dims_text(heat) + " disagrees with the sidecar's input_size " +
                std::to_string(s) + " / output_stride " + std::to_string(info_.output_stride) + " = " +
                std::to_string(cells) + " cells");
  }
  if (heat.d[1] != info_.num_classes()) {
    throw Error(path_ + ": heatmap has " + std::to_string(heat.d[1]) + " channels but the sidecar lists " +
                std::to_string(info_.num_classes()) + " classes");
  }
}

TrtBackend::~TrtBackend() = default;

std::string TrtBackend::name() const {
  return "tensorrt " + runtime_version() + " " + sidecar_.precision + " on " + sidecar_.gpu_name;
}

float* TrtBackend::input_buffer() { return state_->host_input; }

HeadOutputs TrtBackend::infer() {
  State& st = *state_;
  const int s = info_.input_size;
  cuda_check(cudaMemcpyAsync(st.device_input, st.host_input, sizeof(float) * 3u * s * s, cudaMemcpyHostToDevice,
                             st.stream),
             "upload");
  if (!st.context->enqueueV3(st.stream)) {
    throw Error(path_ + ": TensorRT inference failed: " + logger().last_error);
  }
  for (State::Output& out : st.outputs) {
    cuda_check(cudaMemcpyAsync(out.host, out.device, out.values.size() * element_size(out.type),
                               cudaMemcpyDeviceToHost, st.stream),
               "download");
  }
  cuda_check(cudaStreamSynchronize(st.stream), "cudaStreamSynchronize");
  for (State::Output& out : st.outputs) {
    if (out.type == nvinfer1::DataType::kFLOAT) {
      std::memcpy(out.values.data(), out.host, out.values.size() * sizeof(float));
    } else {
      const auto* half = static_cast<const uint16_t*>(out.host);
      for (size_t i = 0; i < out.values.size(); ++i) out.values[i] = half_to_float(half[i]);
    }
  }
  HeadOutputs heads;
  heads.heatmap = st.outputs[0].values.data();
  heads.wh = st.outputs[1].values.data();
  heads.offset = st.outputs[2].values.data();
  heads.num_classes = info_.num_classes();
  heads.height = static_cast<int>(st.outputs[0].dims.d[2]);
  heads.width = static_cast<int>(st.outputs[0].dims.d[3]);
  return heads;
}

}  // namespace visionforge
