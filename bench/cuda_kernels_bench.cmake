# The CUDA benchmarks, built when both the benchmarks and the CUDA backend are on (included from
# the top-level CMakeLists.txt): metatape-bench-cuda-kernels, bandwidth of the CUDA kernels
# (bench/cuda_kernels_bench.cu), and metatape-bench-embedding-update, the sparse row updates of
# an embedding table with the gather and scatter-add (bench/embedding_update_bench.cu); both use
# bench/cuda_bench.h. The commit is taken at configure time (gpu-check.sh also passes --commit).
set(metatape_cuda_bench_commit "unknown")
find_package(Git QUIET)
if(GIT_FOUND)
  execute_process(
    COMMAND ${GIT_EXECUTABLE} rev-parse --short HEAD
    WORKING_DIRECTORY ${PROJECT_SOURCE_DIR}
    RESULT_VARIABLE metatape_cuda_bench_git_result
    OUTPUT_VARIABLE metatape_cuda_bench_git_output
    OUTPUT_STRIP_TRAILING_WHITESPACE
    ERROR_QUIET)
  if(metatape_cuda_bench_git_result EQUAL 0 AND NOT metatape_cuda_bench_git_output STREQUAL "")
    set(metatape_cuda_bench_commit "${metatape_cuda_bench_git_output}")
  endif()
endif()
add_executable(metatape-bench-cuda-kernels ${PROJECT_SOURCE_DIR}/bench/cuda_kernels_bench.cu)
target_link_libraries(metatape-bench-cuda-kernels PRIVATE metatape metatape_warnings CUDA::cudart)
target_compile_definitions(metatape-bench-cuda-kernels
  PRIVATE METATAPE_GIT_COMMIT="${metatape_cuda_bench_commit}")

add_executable(metatape-bench-embedding-update ${PROJECT_SOURCE_DIR}/bench/embedding_update_bench.cu)
target_link_libraries(metatape-bench-embedding-update PRIVATE metatape metatape_warnings CUDA::cudart)
target_compile_definitions(metatape-bench-embedding-update
  PRIVATE METATAPE_GIT_COMMIT="${metatape_cuda_bench_commit}")
