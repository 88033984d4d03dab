// The fused attention settings (attention_settings.h): process-wide atomics, the kernel choice
// initialised from METATAPE_FLASH_KERNELS and METATAPE_FLASH_KV_SPLITS.
#include "engine/core/attention_settings.h"

#include <array>
#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <cstring>

namespace mt {
namespace {

// A value the variable does not take: said and the process stops (at start-up, before main),
// rather than the default silently standing in for a typo.
[[noreturn]] void bad_env(const char* name, const char* value, const char* takes) {
  std::fprintf(stderr, "metatape: the environment variable %s='%s' is not %s; unset it or set "
               "it to such a value\n", name, value, takes);
  std::exit(2);
}

FlashKernels kernels_from_env() {
  const char* env = std::getenv("METATAPE_FLASH_KERNELS");
  if (env == nullptr || *env == '\0' || std::strcmp(env, "mma") == 0) return FlashKernels::mma;
  if (std::strcmp(env, "simple") == 0) return FlashKernels::simple;
  if (std::strcmp(env, "split") == 0) return FlashKernels::split;
  bad_env("METATAPE_FLASH_KERNELS", env, "one of mma, split, simple");
}

int splits_from_env() {
  const char* env = std::getenv("METATAPE_FLASH_KV_SPLITS");
  if (env == nullptr || *env == '\0') return 0;
  char* end = nullptr;
  const long n = std::strtol(env, &end, 10);
  if (*end != '\0' || n < 0 || n > 64)
    bad_env("METATAPE_FLASH_KV_SPLITS", env, "a whole number from 0 (automatic) to 64");
  return int(n);
}

bool f32_tensor_cores_from_env() {
  const char* env = std::getenv("METATAPE_FLASH_F32");
  if (env == nullptr || *env == '\0' || std::strcmp(env, "split") == 0) return false;
  if (std::strcmp(env, "tensor_cores") == 0) return true;
  bad_env("METATAPE_FLASH_F32", env, "one of split, tensor_cores");
}

std::atomic<FlashKernels> flash_kernels{kernels_from_env()};
std::atomic<bool> flash_f32_tensor_cores{f32_tensor_cores_from_env()};
std::atomic<int> flash_kv_splits{splits_from_env()};
std::array<std::atomic<long long>, 3> flash_mma_calls{};  // by FlashPass

}  // namespace

void set_cuda_flash_kernels(FlashKernels kernels) { flash_kernels.store(kernels); }
FlashKernels cuda_flash_kernels() { return flash_kernels.load(); }
void set_cuda_flash_f32_tensor_cores(bool on) { flash_f32_tensor_cores.store(on); }
bool cuda_flash_f32_tensor_cores() { return flash_f32_tensor_cores.load(); }
void set_cuda_flash_kv_splits(int splits) { flash_kv_splits.store(splits < 0 ? 0 : splits); }
int cuda_flash_kv_splits() { return flash_kv_splits.load(); }
void note_cuda_flash_mma(FlashPass pass) { flash_mma_calls[size_t(pass)].fetch_add(1); }
long long cuda_flash_mma_count(FlashPass pass) { return flash_mma_calls[size_t(pass)].load(); }

}  // namespace mt
