// Backend queries of a build configured without CUDA (METATAPE_CUDA=OFF).
#include "engine/core/backend.h"

namespace mt {
bool built_with_cuda() { return false; }
int cuda_device_count() { return 0; }
std::string cuda_device_description(int) { return {}; }
void init_cuda_backend() {}
}  // namespace mt
