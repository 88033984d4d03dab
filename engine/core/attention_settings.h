// Global settings of the fused attention kernels (kernels/cuda/flash_attention.cu). Kept apart
// from backend.h, like matmul_settings.h, so that changing them rebuilds little.
#pragma once

namespace mt {

// Which CUDA kernels the fused attention ops run.
//   split: the query-side kernels (forward, dq, the double backward's query side)
//          split the keys of a sample over several CTAs when the grid is too small for the
//          device, then a combine kernel sums the splits in a fixed order (deterministic).
//   simple: the one-CTA-per-16-queries kernels with no split, the fallback. The environment
//          variable METATAPE_FLASH_KERNELS=simple selects it at start-up.
//   mma (default): the split kernels, except that the forward, the first-order backward and
//          (since 2026-11-25, not yet timed on a GPU) the double backward of 16-bit
//          storage (bf16, f16) with head dim 32, 64 or 128 run on tensor cores (mma.sync
//          m16n8k16, f32 accumulation; the pair coefficients P, dS (and gS, gdP) rounded to the
//          storage type before their second product), split-KV like the split setting (flash_attention.md). The default since
//          its first H100 run (every [cuda][flash] comparison passed, memcheck clean; 16-bit
//          forward+backward 1.3-4.4x faster than the split kernels). f32 storage takes them
//          only where cuda_flash_f32_tensor_cores() (below). METATAPE_FLASH_KERNELS=split
//          selects the split kernels for every dtype at start-up.
enum class FlashKernels { split, simple, mma };
void set_cuda_flash_kernels(FlashKernels kernels);
FlashKernels cuda_flash_kernels();

// Whether, under FlashKernels::mma, f32 storage runs the tensor-core kernels too (the double
// backward up to head dim 64): each product as three TF32 products (3xTF32, about f32 accuracy,
// as PyTorch's memory-efficient attention computes f32), or as one (TF32) under
// set_cuda_matmul_allow_tf32(true). Written on 2026-12-06 and not yet run on a GPU, so off by
// default (f32 runs the split kernels) until a GPU run has verified them: the [cuda][flash] tests
// turn it on with the mma setting. The environment variable METATAPE_FLASH_F32=tensor_cores
// turns it on at start-up (=split, the default, keeps it off).
void set_cuda_flash_f32_tensor_cores(bool on);
bool cuda_flash_f32_tensor_cores();

// Key splits per sample for the split kernels: 0 (default) chooses from the grid size and the
// device's SM count; n > 0 forces n (tests use it to reach empty and one-key splits). The
// environment variable METATAPE_FLASH_KV_SPLITS=n sets it at start-up (benchmark sweeps). A value
// one of the three METATAPE_FLASH_* variables does not take (a typo) stops the process at
// start-up with a message naming it.
void set_cuda_flash_kv_splits(int splits);
int cuda_flash_kv_splits();

// Debug counters: how many calls of each pass ran the tensor-core kernels (incremented by the
// CUDA launcher; tests check that the mma setting does not silently fall back to SIMT).
enum class FlashPass { forward, backward, double_backward };
void note_cuda_flash_mma(FlashPass pass);
long long cuda_flash_mma_count(FlashPass pass);

}  // namespace mt
