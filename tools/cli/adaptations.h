// The adaptations `metatape adapt` keeps in a run folder: one folder per adaptation,
// <run>/adapt/<label>/, holding adapt.json and the adapted models it names. The label is
// adapt's --label, by default the held-out sessions' names sorted and joined by '+'.
//
// An adaptation is written into a work folder, <run>/adapt/.<label>.partial, and put in place in
// one step once complete (replace_folder), so an adapt that fails or is killed leaves the
// adaptation of that name as it was; the next adapt tidies the work folders up. An earlier
// metatape wrote adapt.json and the models into the run folder itself (label "."): predict
// reads them there, and the next adapt moves them into a folder of their own.
//
// Only what these functions write is ever removed: a folder under adapt/ holding adapt.json, and
// the work folders; anything else a user keeps there is left alone.
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace mt::cli {

std::string adaptations_dir(const std::string& run_dir);  // <run>/adapt

// adapt's model files: adapted_<mode>.safetensors, adapted_inner-loop_<session>.safetensors.
bool is_adapted_model_file(const std::string& name);

// The held-out sessions' names, sorted, joined by '+'.
std::string default_adaptation_label(std::vector<std::string> sessions);

// A label names one folder: 1-200 bytes, no '/', not starting with '.' (the work folders).
bool is_adaptation_label(const std::string& label);

// Refuses a label that is not one, naming the fix (`given`: it came from --label); the message
// starts with `command` (adapt, online).
void check_adaptation_label(const std::string& label, bool given,
                            const std::string& command = "adapt");

struct Adaptation {
  std::string label;  // "." for the run folder itself (an earlier metatape's adapt)
  std::string dir;    // holds adapt.json and the models it names
  nlohmann::json adapt;               // adapt.json (null where unreadable)
  std::vector<std::string> sessions;  // its held-out sessions, as adapt.json names them
  std::string unreadable;             // why adapt.json could not be read; empty if it could
};

// The run's adaptations: the one an earlier metatape left in the run folder, then adapt/'s
// folders holding adapt.json, by label; an adaptation left aside by replace_folder's fallback
// (.<label>.partial.old, where <label> holds no adaptation) counts as <label>, with `dir` that
// folder. An unreadable adapt.json is listed with `unreadable` set, so one broken adaptation
// does not hide the others.
std::vector<Adaptation> find_adaptations(const std::string& run_dir);

// Whether the run folder holds adaptations (find_adaptations would list any, or work folders).
bool has_adaptations(const std::string& run_dir);

// `word` as a POSIX shell reads it back: as it is where it holds only safe characters, else in
// single quotes (a ' inside written '\'').
std::string shell_quote(const std::string& word);

// The adapt command, ready to paste into a shell, for `sessions` (none: the run's data.holdout)
// under `label` ("" or ".": the default name).
std::string adapt_command(const std::string& run_dir, const std::string& label,
                          const std::vector<std::string>& sessions);

// The command that adapts the run to `a`'s sessions again under its label: adapt's, or online's
// for an adaptation online kept (adapt.json's made_by), with the adapt.* or online.* settings it
// recorded where they are not the defaults.
std::string readapt_command(const std::string& run_dir, const Adaptation& a);

// Puts the complete folder `ready` at `dir`. A folder already there is exchanged with it in one
// step (renameat2's RENAME_EXCHANGE) and then removed. Where the file system cannot exchange
// (EINVAL, ENOSYS, EOPNOTSUPP; or `exchange` is false), the old folder is first renamed to
// <ready>.old: a second rename that fails puts it back before the error is thrown, and a process
// killed between the two leaves it there, where find_adaptations still finds it and
// tidy_adaptations puts it back.
void replace_folder(const std::filesystem::path& ready, const std::filesystem::path& dir,
                    bool exchange = true);

// Tidies adapt/ after adapts that failed or were killed: an adaptation left aside by
// replace_folder (.<label>.partial.old, with nothing at <label>) is put back, one whose
// replacement is in place is removed, one beside a user's file or folder of its name is left;
// the unfinished work folders (.<label>.partial) are removed. Returns the labels put back.
std::vector<std::string> tidy_adaptations(const std::string& run_dir);

// Removes the run's adaptations (and an earlier metatape's in the run folder), as a training
// that replaces or continues the model makes them stale; adapt/ itself goes once empty. Returns
// what was removed, for the note.
std::vector<std::string> remove_adaptations(const std::string& run_dir);

// Moves an earlier metatape's adaptation out of the run folder into adapt/<label>/ (the default
// label of its sessions, or the first free one of <label>-earlier, <label>-earlier-2, ...;
// never over an existing adaptation). Its files are linked into a work folder, which is renamed
// into place before the originals go (adapt.json last): a process killed at any point leaves
// one complete copy that the next call finishes with. Returns the label, or "" if there was
// none; throws where its adapt.json is unreadable.
std::string move_earlier_adaptation(const std::string& run_dir);

// The CRC-32 (8 hex digits) a checkpoint written by metatape records of its tensor bytes, read
// from its header alone: the identity of the model an adaptation started from. "" where the file
// records none (written by another program).
std::string checkpoint_data_crc32(const std::string& path);

}  // namespace mt::cli
