# The CUDA benchmarks, built when both the benchmarks and the CUDA backend are on (included from
# the top-level CMakeLists.txt): metatape-bench-cuda-kernels, bandwidth of the CUDA kernels
# (bench/cuda_kernels_bench.cu), and metatape-bench-embedding-update, the sparse row updates of
# an embedding table with the gather and scatter-add (bench/embedding_update_bench.cu); both use
# bench/cuda_bench.h. The commit comes from metatape_git_commit.h (gpu-check.sh also passes --commit).
add_executable(metatape-bench-cuda-kernels ${PROJECT_SOURCE_DIR}/bench/cuda_kernels_bench.cu)
target_link_libraries(metatape-bench-cuda-kernels PRIVATE metatape metatape_warnings CUDA::cudart)
target_link_libraries(metatape-bench-cuda-kernels PRIVATE metatape_git_commit)

add_executable(metatape-bench-embedding-update ${PROJECT_SOURCE_DIR}/bench/embedding_update_bench.cu)
target_link_libraries(metatape-bench-embedding-update PRIVATE metatape metatape_warnings CUDA::cudart)
target_link_libraries(metatape-bench-embedding-update PRIVATE metatape_git_commit)
