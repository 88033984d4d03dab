// The fused attention settings (attention_settings.h): process-wide atomics, the kernel choice
// initialised from METATAPE_FLASH_KERNELS and METATAPE_FLASH_KV_SPLITS.
#include "engine/core/attention_settings.h"

#include <atomic>
#include <cstdlib>
#include <cstring>

namespace mt {
namespace {

FlashKernels kernels_from_env() {
  const char* env = std::getenv("METATAPE_FLASH_KERNELS");
  if (env != nullptr && std::strcmp(env, "simple") == 0) return FlashKernels::simple;
  if (env != nullptr && std::strcmp(env, "split") == 0) return FlashKernels::split;
  return FlashKernels::mma;
}

int splits_from_env() {
  const char* env = std::getenv("METATAPE_FLASH_KV_SPLITS");
  const int n = env != nullptr ? std::atoi(env) : 0;
  return n > 0 ? n : 0;
}

std::atomic<FlashKernels> flash_kernels{kernels_from_env()};
std::atomic<int> flash_kv_splits{splits_from_env()};
std::atomic<long long> flash_mma_double_backward{0};

}  // namespace

void set_cuda_flash_kernels(FlashKernels kernels) { flash_kernels.store(kernels); }
FlashKernels cuda_flash_kernels() { return flash_kernels.load(); }
void set_cuda_flash_kv_splits(int splits) { flash_kv_splits.store(splits < 0 ? 0 : splits); }
int cuda_flash_kv_splits() { return flash_kv_splits.load(); }
void note_cuda_flash_mma_double_backward() { flash_mma_double_backward.fetch_add(1); }
long long cuda_flash_mma_double_backward_count() { return flash_mma_double_backward.load(); }

}  // namespace mt
