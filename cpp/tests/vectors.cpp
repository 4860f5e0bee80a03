#include "vectors.hpp"

#include <cstdlib>
#include <fstream>
#include <sstream>
#include <stdexcept>

namespace visionforge::testing {

std::string vectors_dir() {
  if (const char* env = std::getenv("VISIONFORGE_TEST_VECTORS")) return env;
  return VISIONFORGE_TEST_VECTORS_DEFAULT;
}

std::string vector_path(const std::string& relative) { return vectors_dir() + "/" + relative; }

const nlohmann::json& manifest() {
  static const nlohmann::json data = [] {
    std::ifstream in(vector_path("manifest.json"));
    if (!in) {
      throw std::runtime_error("no test vectors at " + vectors_dir() +
                               ": run tests/cpp/make_test_vectors.py --out " + vectors_dir() +
                               " (ctest runs it as the fixture `test_vectors`)");
    }
    return nlohmann::json::parse(in);
  }();
  return data;
}

std::vector<float> read_floats(const std::string& relative, size_t expected_count) {
  std::ifstream in(vector_path(relative), std::ios::binary);
  if (!in) throw std::runtime_error("cannot read " + vector_path(relative));
  std::vector<float> values(expected_count);
  in.read(reinterpret_cast<char*>(values.data()), static_cast<std::streamsize>(expected_count * sizeof(float)));
  if (in.gcount() != static_cast<std::streamsize>(expected_count * sizeof(float)) || in.peek() != EOF) {
    throw std::runtime_error(vector_path(relative) + " does not hold " + std::to_string(expected_count) + " floats");
  }
  return values;  // little-endian float32 on disk, as on every machine this runs on
}

}  // namespace visionforge::testing
