// The temporary file of an atomic write: .<name>.tmp.<pid>.<n> in the target's folder, created
// exclusively (O_EXCL), then written, synced and renamed over the target by the caller. The pid
// lets a later writer remove the leftovers of a process that was killed meanwhile; a leftover of
// an earlier process that had this pid is passed over (the next number).
#pragma once

#include <filesystem>
#include <string>

namespace mt::io {

// Opens a new temporary file for writing beside `target`; returns its descriptor and sets
// `tmp_path`, or returns -1 with errno set (as open(2) left it).
int create_temp_beside(const std::filesystem::path& target, std::string& tmp_path);

// Before the rename of a file another library wrote and closed (libzip's archives): fsyncs it so
// that its data is on disk before the name points at it; returns false (errno set) on failure.
bool sync_file(const std::filesystem::path& path);

// After the rename: fsyncs the target's folder so that the rename itself survives a power cut.
// The file is complete either way, so errors are ignored.
void sync_folder_of(const std::filesystem::path& target);

}  // namespace mt::io
