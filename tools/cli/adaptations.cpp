#include "tools/cli/adaptations.h"

#include <fcntl.h>  // AT_FDCWD
#include <stdio.h>  // renameat2, RENAME_EXCHANGE

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cstring>
#include <fstream>

#include <fmt/format.h>
#include <fmt/ranges.h>

#include "engine/core/error.h"
#include "engine/io/safetensors.h"
#include "engine/io/temp_file.h"
#include "tools/cli/config.h"

namespace fs = std::filesystem;
using nlohmann::json;

namespace mt::cli {

namespace {

constexpr const char* kPartial = ".partial";
constexpr const char* kPartialOld = ".partial.old";

bool ends_with(const std::string& s, const std::string& tail) {
  return s.size() >= tail.size() && s.compare(s.size() - tail.size(), tail.size(), tail) == 0;
}

// A work folder of adapt (.<label>.partial or .<label>.partial.old): its label, or "".
std::string work_folder_label(const std::string& name) {
  if (name.size() < 2 || name.front() != '.') return "";
  for (const std::string tail : {kPartialOld, kPartial})
    if (ends_with(name, tail) && name.size() > tail.size() + 1) {
      const std::string label = name.substr(1, name.size() - tail.size() - 1);
      return is_adaptation_label(label) ? label : "";
    }
  return "";
}

Adaptation read_adaptation(const std::string& label, const std::string& dir) {
  Adaptation a{label, dir, json(), {}, {}};
  try {
    a.adapt = read_json_file(dir + "/adapt.json");
    MT_CHECK(a.adapt.is_object() && a.adapt.contains("sessions") && a.adapt["sessions"].is_array(),
             "{}/adapt.json names no sessions (a 'sessions' list): it is not adapt's", dir);
    for (const auto& s : a.adapt["sessions"]) {
      MT_CHECK(s.is_object() && s.contains("name") && s["name"].is_string(),
               "{}/adapt.json: an entry of 'sessions' has no name", dir);
      a.sessions.push_back(s["name"].get<std::string>());
    }
  } catch (const std::exception& e) {
    a.adapt = json();
    a.sessions.clear();
    a.unreadable = e.what();
  }
  return a;
}

std::vector<std::string> sorted(std::vector<std::string> v) {
  std::sort(v.begin(), v.end());
  return v;
}

// Links `from` to `to` (the same file system, so no bytes are copied), or copies it where the
// file system has no hard links.
void link_or_copy(const fs::path& from, const fs::path& to) {
  std::error_code ec;
  fs::create_hard_link(from, to, ec);
  if (ec) fs::copy_file(from, to, fs::copy_options::overwrite_existing);
}

}  // namespace

std::string adaptations_dir(const std::string& run_dir) {
  return run_dir + "/adapt";
}

bool is_adapted_model_file(const std::string& name) {
  return name.rfind("adapted_", 0) == 0 && name.size() > 20 && ends_with(name, ".safetensors");
}

std::string default_adaptation_label(std::vector<std::string> sessions) {
  return fmt::format("{}", fmt::join(sorted(std::move(sessions)), "+"));
}

bool is_adaptation_label(const std::string& label) {
  return !label.empty() && label.size() <= 200 && label.front() != '.' &&
         label.find('/') == std::string::npos && label.find('\0') == std::string::npos;
}

void check_adaptation_label(const std::string& label, bool given, const std::string& command) {
  const char* fix = given ? "give another --label" : "name the adaptation with --label NAME";
  MT_CHECK(!label.empty() && label.size() <= 200,
           "{}: the adaptation's name '{}' is {} bytes long (1 to 200 allowed: it names its "
           "folder under {{run}}/adapt/); {}",
           command, label.size() > 60 ? label.substr(0, 60) + "..." : label, label.size(), fix);
  MT_CHECK(is_adaptation_label(label),
           "{}: the adaptation's name '{}' names its folder under {{run}}/adapt/, so it may "
           "neither start with '.' nor hold '/'; {}",
           command, label, fix);
}

std::vector<Adaptation> find_adaptations(const std::string& run_dir) {
  std::vector<Adaptation> out;
  if (fs::exists(run_dir + "/adapt.json")) out.push_back(read_adaptation(".", run_dir));
  const std::string top = adaptations_dir(run_dir);
  if (!fs::is_directory(top)) return out;
  std::vector<std::pair<std::string, std::string>> found;  // label, folder
  for (const auto& e : fs::directory_iterator(top)) {
    if (!e.is_directory() || !fs::exists(e.path() / "adapt.json")) continue;
    const std::string name = e.path().filename().string(), aside = work_folder_label(name);
    if (is_adaptation_label(name)) {
      found.emplace_back(name, e.path().string());
    } else if (!aside.empty() && ends_with(name, kPartialOld) &&
               !fs::exists(top + "/" + aside + "/adapt.json")) {
      // Left aside by replace_folder's fallback (killed between its two renames): still the
      // adaptation of that name until the next adapt puts it back.
      found.emplace_back(aside, e.path().string());
    }
  }
  std::sort(found.begin(), found.end());
  for (const auto& [label, dir] : found) out.push_back(read_adaptation(label, dir));
  return out;
}

bool has_adaptations(const std::string& run_dir) {
  if (!find_adaptations(run_dir).empty()) return true;
  const std::string top = adaptations_dir(run_dir);
  if (!fs::is_directory(top)) return false;
  for (const auto& e : fs::directory_iterator(top))
    if (e.is_directory() && !work_folder_label(e.path().filename().string()).empty()) return true;
  return false;
}

std::string shell_quote(const std::string& word) {
  const bool safe = !word.empty() && std::all_of(word.begin(), word.end(), [](char ch) {
    return std::isalnum(static_cast<unsigned char>(ch)) ||
           (ch != '\0' && std::strchr("_-./+:=@%,", ch) != nullptr);
  });
  if (safe) return word;
  std::string quoted = "'";
  for (const char ch : word) quoted += ch == '\'' ? std::string("'\\''") : std::string(1, ch);
  return quoted + "'";
}

std::string adapt_command(const std::string& run_dir, const std::string& label,
                          const std::vector<std::string>& sessions) {
  std::string command = "metatape adapt --run " + shell_quote(run_dir);
  if (!label.empty() && label != ".") command += " --label " + shell_quote(label);
  if (!sessions.empty()) {
    std::vector<std::string> names;
    for (const auto& s : sessions) names.push_back(json(s).dump());
    command += " --set " + shell_quote(fmt::format("data.holdout=[{}]", fmt::join(names, ",")));
  }
  return command;
}

namespace {
// " --set 'path=value'" for each setting of `recorded` (a config section as adapt.json holds it)
// that differs from `reference` (the run's): a section by its leaves (adapt.train.steps=...;
// one it lacks, recorded by an earlier metatape, left as the run has it), a map setting whole
// (every entry recorded: a --set of a map sets the entries it gives, over the defaults).
void append_changed(std::string& command, const std::string& path, const json& recorded,
                    const json& reference) {
  const bool map = path == "adapt.lr_by_mode";
  if (!map && recorded.is_object() && reference.is_object()) {
    for (const auto& [key, value] : recorded.items())
      if (reference.contains(key)) append_changed(command, path + "." + key, value, reference[key]);
    return;
  }
  if (recorded != reference) command += " --set " + shell_quote(path + "=" + recorded.dump());
}

// The run's settings as adapt and online start from them (config.json); the defaults when it
// cannot be read (predict refuses such a run before it needs this).
json run_settings(const std::string& run_dir) {
  try {
    json j = read_json_file(run_dir + "/config.json");
    j.erase("sessions");  // descriptive fields written by train
    j.erase("holdout_sessions");
    fill_settings_of_older_runs(j);
    return config_from_json(j).to_json();
  } catch (const std::exception&) {
    return config_from_json(json::object()).to_json();
  }
}
}  // namespace

std::string readapt_command(const std::string& run_dir, const Adaptation& a) {
  // Each command records its settings (adapt: adapt.*; online: online.* and the adapt.* that
  // start a new session's rows; adaptations of earlier metatapes, none): those that differ from
  // the run's are given again.
  const bool by_online =
      a.adapt.is_object() && a.adapt.contains("made_by") && a.adapt["made_by"] == "online";
  std::string command = adapt_command(run_dir, a.label, a.sessions);
  // online keeps models under the --label it was given, of data.holdout's sessions.
  if (by_online) command.replace(0, std::string("metatape adapt").size(), "metatape online");
  if (!a.adapt.is_object()) return command;
  const json run = run_settings(run_dir);
  if (a.adapt.contains("adapt") && a.adapt["adapt"].is_object()) {
    const json& recorded = a.adapt["adapt"];
    if (!by_online) {
      append_changed(command, "adapt", recorded, run["adapt"]);
    } else {
      // online records the two adapt.* settings it uses: the new rows' start and its seed.
      if (recorded.contains("new_session_init"))
        append_changed(command, "adapt.new_session_init", recorded["new_session_init"],
                       run["adapt"]["new_session_init"]);
      if (recorded.contains("train") && recorded["train"].is_object() &&
          recorded["train"].contains("seed"))
        append_changed(command, "adapt.train.seed", recorded["train"]["seed"],
                       run["adapt"]["train"]["seed"]);
    }
  }
  if (by_online && a.adapt.contains("online") && a.adapt["online"].is_object())
    append_changed(command, "online", a.adapt["online"], run["online"]);
  return command;
}

void replace_folder(const fs::path& ready, const fs::path& dir, bool exchange) {
  // The files in `ready` are synced as written (write_file_atomic, safetensors); after each
  // rename below, the folder holding `dir` is too, so the new name survives a power cut.
  if (!fs::exists(dir)) {
    fs::rename(ready, dir);
    io::sync_folder_of(dir);
    return;
  }
  if (exchange) {
    if (::renameat2(AT_FDCWD, ready.c_str(), AT_FDCWD, dir.c_str(), RENAME_EXCHANGE) == 0) {
      io::sync_folder_of(dir);
      fs::remove_all(ready);  // the replaced folder, now here
      return;
    }
    // Only a file system that cannot exchange takes the fallback; other failures are errors.
    const int error = errno;
    if (error != EINVAL && error != ENOSYS && error != EOPNOTSUPP)
      throw fs::filesystem_error("cannot put the new adaptation in place", ready, dir,
                                 std::error_code(error, std::generic_category()));
  }
  // ready = <top>/.<label>.partial: the old folder goes to <top>/.<label>.partial.old.
  const fs::path old = ready.string() + ".old";
  fs::remove_all(old);
  fs::rename(dir, old);
  try {
    fs::rename(ready, dir);
  } catch (...) {
    std::error_code ignored;        // the first error is the one to report
    fs::rename(old, dir, ignored);  // the old folder back where it was
    throw;
  }
  io::sync_folder_of(dir);
  fs::remove_all(old);
}

std::vector<std::string> tidy_adaptations(const std::string& run_dir) {
  const std::string top = adaptations_dir(run_dir);
  std::vector<std::string> restored;
  if (!fs::is_directory(top)) return restored;
  std::vector<fs::path> entries;
  for (const auto& e : fs::directory_iterator(top))
    if (e.is_directory()) entries.push_back(e.path());
  // The adaptations left aside first: their work folder .<label>.partial may be the newer,
  // unfinished one and goes below.
  for (const auto& p : entries) {
    const std::string name = p.filename().string(), label = work_folder_label(name);
    if (label.empty() || !ends_with(name, kPartialOld)) continue;
    const std::string dir = top + "/" + label;
    if (!fs::exists(dir)) {
      fs::rename(p, dir);
      restored.push_back(label);
    } else if (fs::exists(dir + "/adapt.json")) {
      fs::remove_all(p);  // replaced: the new one is in place
    }
    // else: a user's file or folder of that name; the adaptation stays aside (find lists it).
  }
  for (const auto& p : entries)
    if (fs::exists(p) && ends_with(p.filename().string(), kPartial) &&
        !work_folder_label(p.filename().string()).empty())
      fs::remove_all(p);
  return restored;
}

std::vector<std::string> remove_adaptations(const std::string& run_dir) {
  std::vector<std::string> removed;
  for (const auto& a : find_adaptations(run_dir)) {
    if (a.label == ".") {
      std::vector<fs::path> models;  // listed before any is removed
      for (const auto& e : fs::directory_iterator(run_dir))
        if (is_adapted_model_file(e.path().filename().string())) models.push_back(e.path());
      for (const auto& m : models) fs::remove(m);
      fs::remove(run_dir + "/adapt.json");
      removed.push_back(run_dir + "/adapt.json and its models");
    } else {
      // Renamed to a work folder first (one step), so a process killed while removing it leaves
      // what the next tidy-up removes, not a folder of models without adapt.json.
      const fs::path doomed = fs::path(adaptations_dir(run_dir)) / ("." + a.label + kPartial);
      fs::remove_all(doomed);
      fs::rename(a.dir, doomed);
      fs::remove_all(doomed);
      removed.push_back(a.dir + "/");
    }
  }
  const std::string top = adaptations_dir(run_dir);
  if (fs::is_directory(top)) {
    std::vector<fs::path> work;  // listed before any is removed
    for (const auto& e : fs::directory_iterator(top))
      if (e.is_directory() && !work_folder_label(e.path().filename().string()).empty())
        work.push_back(e.path());
    for (const auto& p : work) fs::remove_all(p);
    if (fs::is_empty(top)) fs::remove(top);
  }
  return removed;
}

std::string move_earlier_adaptation(const std::string& run_dir) {
  const std::string legacy = run_dir + "/adapt.json";
  if (!fs::exists(legacy)) return "";
  const Adaptation earlier = read_adaptation(".", run_dir);
  MT_CHECK(earlier.unreadable.empty(),
           "adapt: {} (an adaptation an earlier metatape wrote into the run folder) cannot be "
           "read: {}; remove it and the adapted_*.safetensors beside it to go on",
           legacy, earlier.unreadable);
  const std::string top = adaptations_dir(run_dir);
  fs::create_directories(top);
  std::vector<fs::path> files;
  for (const auto& e : fs::directory_iterator(run_dir))
    if (e.is_regular_file() && is_adapted_model_file(e.path().filename().string()))
      files.push_back(e.path());

  std::string base = default_adaptation_label(earlier.sessions);
  if (!is_adaptation_label(base) || base.size() > 180) base = "earlier";
  const std::string legacy_text = [&] {
    std::ifstream in(legacy, std::ios::binary);
    return std::string(std::istreambuf_iterator<char>(in), {});
  }();
  std::string label;
  for (int k = 0; label.empty(); ++k) {
    const std::string candidate = k == 0   ? base
                                  : k == 1 ? base + "-earlier"
                                           : fmt::format("{}-earlier-{}", base, k);
    const std::string dir = top + "/" + candidate;
    if (!fs::exists(dir)) {
      label = candidate;
      break;
    }
    // A copy a killed process put in place before the originals went: finish with it.
    std::ifstream in(dir + "/adapt.json", std::ios::binary);
    if (in && std::string(std::istreambuf_iterator<char>(in), {}) == legacy_text) {
      for (const auto& f : files) fs::remove(f);
      fs::remove(legacy);
      return candidate;
    }
  }
  const fs::path moving = top + "/." + label + kPartial;
  fs::remove_all(moving);
  fs::create_directories(moving);
  for (const auto& f : files) link_or_copy(f, moving / f.filename());
  link_or_copy(legacy, moving / "adapt.json");
  fs::rename(moving, top + "/" + label);
  io::sync_folder_of(top + "/" + label);
  for (const auto& f : files) fs::remove(f);
  fs::remove(legacy);
  return label;
}

std::string checkpoint_data_crc32(const std::string& path) {
  const io::SafetensorsHeader header = io::read_safetensors_header(path);
  return header.has_data_crc32 ? fmt::format("{:08x}", header.data_crc32) : "";
}

}  // namespace mt::cli
