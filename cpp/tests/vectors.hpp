// Access to the shared test vectors written by tests/cpp/make_test_vectors.py (the CTest
// fixture `test_vectors` runs it before the tests that need it).
#pragma once

#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace visionforge::testing {

// The vectors folder: $VISIONFORGE_TEST_VECTORS, else the path configured at build time.
std::string vectors_dir();
std::string vector_path(const std::string& relative);
const nlohmann::json& manifest();
std::vector<float> read_floats(const std::string& relative, size_t expected_count);

}  // namespace visionforge::testing
