# metatape-bench-cuda-kernels: bandwidth of the CUDA kernels (bench/cuda_kernels_bench.cu), built
# when both the benchmarks and the CUDA backend are on. Included from the top-level
# CMakeLists.txt. The commit is taken at configure time (gpu-check.sh also passes --commit).
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
