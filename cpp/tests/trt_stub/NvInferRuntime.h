// Declarations of the TensorRT 10 and CUDA runtime API surface that src/trt_backend.cpp uses,
// written from their documented signatures, so CTest can at least type-check the TensorRT
// backend on machines without TensorRT (test trt_backend_type_check). Never linked, never run.
// A check against these is not a check against TensorRT: the backend stays unverified.
#pragma once
#include <cstddef>
#include <cstdint>
#include <cuda_runtime_api.h>
namespace nvinfer1 {
using AsciiChar = char;
class Dims64 { public: static constexpr int32_t MAX_DIMS{8}; int32_t nbDims; int64_t d[MAX_DIMS]; };
using Dims = Dims64;
class Dims4 : public Dims { public: Dims4(int64_t d0, int64_t d1, int64_t d2, int64_t d3) { nbDims = 4; d[0]=d0; d[1]=d1; d[2]=d2; d[3]=d3; } };
enum class DataType : int32_t { kFLOAT = 0, kHALF = 1, kINT8 = 2, kINT32 = 3, kBOOL = 4, kUINT8 = 5, kFP8 = 6, kBF16 = 7, kINT64 = 8, kINT4 = 9 };
enum class TensorIOMode : int32_t { kNONE = 0, kINPUT = 1, kOUTPUT = 2 };
enum class ExecutionContextAllocationStrategy : int32_t { kSTATIC = 0, kON_PROFILE_CHANGE = 1, kUSER_MANAGED = 2 };
class ILogger { public: enum class Severity : int32_t { kINTERNAL_ERROR = 0, kERROR = 1, kWARNING = 2, kINFO = 3, kVERBOSE = 4 };
  virtual void log(Severity severity, AsciiChar const* msg) noexcept = 0; virtual ~ILogger() = default; };
class IExecutionContext { public: virtual ~IExecutionContext() noexcept = default;
  bool setInputShape(char const* tensorName, Dims const& dims) noexcept;
  Dims getTensorShape(char const* tensorName) const noexcept;
  bool setTensorAddress(char const* tensorName, void* data) noexcept;
  bool enqueueV3(cudaStream_t stream) noexcept; };
class ICudaEngine { public: virtual ~ICudaEngine() noexcept = default;
  int32_t getNbIOTensors() const noexcept; char const* getIOTensorName(int32_t index) const noexcept;
  TensorIOMode getTensorIOMode(char const* tensorName) const noexcept; DataType getTensorDataType(char const* tensorName) const noexcept;
  IExecutionContext* createExecutionContext(ExecutionContextAllocationStrategy strategy = ExecutionContextAllocationStrategy::kSTATIC) noexcept; };
class IRuntime { public: virtual ~IRuntime() noexcept = default; ICudaEngine* deserializeCudaEngine(void const* blob, std::size_t size) noexcept; };
IRuntime* createInferRuntime(ILogger& logger) noexcept;
}
extern "C" int32_t getInferLibVersion() noexcept;
