# Writes OUTPUT, a header defining METATAPE_GIT_COMMIT: the short hash of HEAD in SOURCE_DIR,
# with "-dirty" when tracked files differ from it, or "unknown" outside a git checkout or
# without git (GIT empty). Run at every build by the metatape_git_commit_header target (see the
# top-level CMakeLists.txt); the file is rewritten only when its text changes, so what includes
# it is recompiled only when the commit does. Benchmarks record this in their JSON.
set(commit "unknown")
if(GIT)
  execute_process(COMMAND ${GIT} rev-parse --short HEAD WORKING_DIRECTORY ${SOURCE_DIR}
                  RESULT_VARIABLE rc OUTPUT_VARIABLE out OUTPUT_STRIP_TRAILING_WHITESPACE
                  ERROR_QUIET)
  if(rc EQUAL 0 AND NOT out STREQUAL "")
    set(commit "${out}")
    execute_process(COMMAND ${GIT} status --porcelain --untracked-files=no
                    WORKING_DIRECTORY ${SOURCE_DIR} RESULT_VARIABLE rc OUTPUT_VARIABLE changes
                    OUTPUT_STRIP_TRAILING_WHITESPACE ERROR_QUIET)
    if(rc EQUAL 0 AND NOT changes STREQUAL "")
      string(APPEND commit "-dirty")
    endif()
  endif()
endif()
set(text "// Generated at build time by cmake/git_commit.cmake.\n#pragma once\n#define METATAPE_GIT_COMMIT \"${commit}\"\n")
if(EXISTS "${OUTPUT}")
  file(READ "${OUTPUT}" old)
endif()
if(NOT old STREQUAL text)
  file(WRITE "${OUTPUT}.tmp" "${text}")
  file(RENAME "${OUTPUT}.tmp" "${OUTPUT}")
endif()
