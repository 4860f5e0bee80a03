// One exception type for every problem a user can cause (a wrong path, a model that breaks
// the ONNX contract, an engine built elsewhere, an unreadable video): the program prints its
// message, which says what and where, and exits non-zero. Programming errors stay
// std::logic_error and friends so they are never mistaken for bad input.
#pragma once

#include <stdexcept>
#include <string>

namespace visionforge {

class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

}  // namespace visionforge
