// SHA-256 of a byte buffer, lower-case hex: the engine sidecar records the engine's digest so
// a truncated or swapped engine is refused before TensorRT sees it. Computed by OpenSSL's
// libcrypto (Debian's libssl-dev), a reviewed and accelerated implementation.
#pragma once

#include <cstddef>
#include <string>

namespace visionforge {

std::string sha256_hex(const void* data, size_t size);

}  // namespace visionforge
