// The adaptation folders of a run (tools/cli/adaptations.h): labels, replacing a folder in one
// step and the recovery from a process killed half-way, what is removed and what is left alone,
// and moving an earlier metatape's adaptation out of the run folder.
#include <cstdio>
#include <fstream>
#include <string>
#include <vector>

#include <catch2/catch.hpp>
#include <fmt/format.h>

#include <unistd.h>

#include "engine/core/tensor.h"
#include "engine/io/safetensors.h"
#include "tools/cli/adaptations.h"
#include "tools/cli/config.h"

namespace fs = std::filesystem;
using namespace mt;
using Catch::Contains;

namespace {

void write(const fs::path& path, const std::string& text) {
  fs::create_directories(path.parent_path());
  std::ofstream(path, std::ios::binary) << text;
}

std::string read(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

// A fresh run folder under the temp directory, removed at the end of the test.
struct RunFolder {
  fs::path path;
  explicit RunFolder(const std::string& name)
      : path(fs::temp_directory_path() / fmt::format("metatape_adaptations_{}_{}", name, getpid())) {
    fs::remove_all(path);
    fs::create_directories(path);
  }
  ~RunFolder() { fs::remove_all(path); }
  std::string str() const { return path.string(); }
};

std::string adapt_json(const std::string& sessions) {
  return R"({"sessions": [)" + sessions + R"(], "methods": []})";
}

}  // namespace

TEST_CASE("cli adaptations: labels", "[cli][adapt]") {
  CHECK(cli::default_adaptation_label({"b", "a", "c"}) == "a+b+c");
  CHECK(cli::is_adaptation_label("animal_7"));
  for (const std::string& bad :
       std::vector<std::string>{"", ".", "..", ".x", "a/b", std::string(201, 'a')}) {
    INFO(bad);
    CHECK_FALSE(cli::is_adaptation_label(bad));
  }
  REQUIRE_THROWS_WITH(cli::check_adaptation_label("../x", true),
                      Contains("neither start with '.' nor hold '/'") &&
                          Contains("give another --label"));
  REQUIRE_THROWS_WITH(cli::check_adaptation_label(std::string(300, 'a'), false),
                      Contains("300 bytes long") && Contains("--label NAME"));
}

TEST_CASE("cli adaptations: found by label, unreadable ones listed as such", "[cli][adapt]") {
  RunFolder run("found");
  const fs::path top = cli::adaptations_dir(run.str());
  write(top / "b" / "adapt.json", adapt_json(R"({"name": "s2"}, {"name": "s3"})"));
  write(top / "a" / "adapt.json", adapt_json(R"({"name": "s2"})"));
  write(top / "broken" / "adapt.json", "{\"sessions\": [");
  write(top / "no_sessions" / "adapt.json", "{}");
  write(top / "notes" / "readme.txt", "a user's folder without adapt.json");
  write(top / ".c.partial" / "adapt.json", adapt_json(R"({"name": "s9"})"));
  write(run.path / "adapt.json", adapt_json(R"({"name": "s4"})"));
  const auto all = cli::find_adaptations(run.str());
  REQUIRE(all.size() == 5);
  CHECK(all[0].label == ".");
  CHECK(all[0].dir == run.str());
  CHECK(all[0].sessions == std::vector<std::string>{"s4"});
  CHECK(all[1].label == "a");
  CHECK(all[2].label == "b");
  CHECK(all[2].sessions == std::vector<std::string>{"s2", "s3"});
  CHECK(all[2].unreadable.empty());
  CHECK(all[3].label == "broken");
  CHECK_FALSE(all[3].unreadable.empty());
  CHECK(all[3].sessions.empty());
  CHECK(all[4].label == "no_sessions");
  CHECK_THAT(all[4].unreadable, Contains("names no sessions"));
  CHECK(cli::readapt_command("r", all[2]) ==
        R"(metatape adapt --run r --label b --set 'data.holdout=["s2","s3"]')");
  CHECK(cli::readapt_command("r", all[0]) == R"(metatape adapt --run r --set 'data.holdout=["s4"]')");
}

// The command that makes an adaptation again gives the settings it was made with where they
// differ from the run's own (config.json, which adapt and online start from).
TEST_CASE("cli adaptations: the re-adapt command gives the recorded settings", "[cli][adapt]") {
  RunFolder run("readapt");
  // The run's config sets adapt.train.lr to 0.05; the adaptation set it back to 0.01 (the
  // built-in default), emptied adapt.lr_by_mode (every mode at adapt.train.lr) and took 4 steps.
  nlohmann::json config = cli::config_from_json(nlohmann::json::object()).to_json();
  config["adapt"]["train"]["lr"] = 0.05;
  config["sessions"] = nlohmann::json::array();  // train's descriptive fields
  write(run.path / "config.json", config.dump());
  nlohmann::json recorded = cli::config_from_json(nlohmann::json::object()).to_json()["adapt"];
  recorded["train"]["steps"] = 4;
  recorded["lr_by_mode"] = nlohmann::json::object();
  cli::Adaptation a;
  a.label = "x";
  a.sessions = {"s1"};
  a.adapt = {{"adapt", recorded}};
  CHECK(cli::readapt_command(run.str(), a) ==
        R"(metatape adapt --run )" + run.str() +
            R"( --label x --set 'data.holdout=["s1"]' --set 'adapt.lr_by_mode={}')"
            R"( --set adapt.train.lr=0.01 --set adapt.train.steps=4)");
  // One mode's step size added: the map whole, as set_path replaces it.
  recorded["lr_by_mode"] = {{"all", 1e30}};
  recorded["train"]["lr"] = 0.05;
  recorded["train"]["steps"] = config["adapt"]["train"]["steps"];
  a.adapt = {{"adapt", recorded}};
  CHECK(cli::readapt_command(run.str(), a) ==
        R"(metatape adapt --run )" + run.str() +
            R"( --label x --set 'data.holdout=["s1"]' --set 'adapt.lr_by_mode={"all":1e+30}')");
  // online's: online.* and the two adapt.* settings it records.
  a.adapt = {{"made_by", "online"},
             {"adapt", {{"new_session_init", "random"}, {"train", {{"seed", 0}}}}},
             {"online", {{"lr", 0.05}, {"stride", 1}}}};
  CHECK(cli::readapt_command(run.str(), a) ==
        R"(metatape online --run )" + run.str() +
            R"( --label x --set 'data.holdout=["s1"]' --set 'adapt.new_session_init="random"')"
            R"( --set online.lr=0.05)");
  // An adaptation of an earlier metatape records none.
  a.adapt = nlohmann::json::object();
  CHECK(cli::readapt_command(run.str(), a) ==
        R"(metatape adapt --run )" + run.str() + R"( --label x --set 'data.holdout=["s1"]')");
}

TEST_CASE("cli adaptations: suggested commands are quoted for a POSIX shell", "[cli][adapt]") {
  CHECK(cli::shell_quote("runs/r1") == "runs/r1");
  CHECK(cli::shell_quote("") == "''");
  CHECK(cli::shell_quote("my runs") == "'my runs'");
  CHECK(cli::shell_quote("it's") == R"('it'\''s')");
  CHECK(cli::adapt_command("my runs/r1", "x y", {"q it's", "a\"b"}) ==
        R"(metatape adapt --run 'my runs/r1' --label 'x y' --set 'data.holdout=["q it'\''s","a\"b"]')");
  CHECK(cli::adapt_command("r", ".", {}) == "metatape adapt --run r");
  CHECK(cli::shell_quote(std::string("a\0b", 3)) == std::string("'a\0b'", 5));
  // Read back by sh, each word is what it quoted.
  const std::string words[] = {"my runs/r1", "it's", "a\"b$c`d\\e", "data.holdout=[\"x y\"]"};
  std::string command = "printf '%s\\n'";
  for (const auto& w : words) {
    command += ' ';
    command += cli::shell_quote(w);
  }
  FILE* out = popen(command.c_str(), "r");
  REQUIRE(out != nullptr);
  std::string printed;
  char buffer[256];
  while (size_t n = fread(buffer, 1, sizeof(buffer), out)) printed.append(buffer, n);
  REQUIRE(pclose(out) == 0);
  std::string expected;
  for (const auto& w : words) {
    expected += w;
    expected += '\n';
  }
  CHECK(printed == expected);
}

TEST_CASE("cli adaptations: a folder replaced in one step, or put back after a kill",
          "[cli][adapt]") {
  for (const bool exchange : {true, false}) {
    INFO("exchange " << exchange);
    RunFolder run(exchange ? "replace_x" : "replace_r");
    const fs::path top = cli::adaptations_dir(run.str());
    write(top / "a" / "adapt.json", "old");
    write(top / "a" / "adapted_all.safetensors", "old model");
    write(top / ".a.partial" / "adapt.json", "new");
    cli::replace_folder(top / ".a.partial", top / "a", exchange);
    CHECK(read(top / "a" / "adapt.json") == "new");
    CHECK_FALSE(fs::exists(top / "a" / "adapted_all.safetensors"));  // no file of the old one
    CHECK_FALSE(fs::exists(top / ".a.partial"));
    CHECK_FALSE(fs::exists(top / ".a.partial.old"));
    // Into a place that is free: a rename.
    write(top / ".b.partial" / "adapt.json", "b");
    cli::replace_folder(top / ".b.partial", top / "b", exchange);
    CHECK(read(top / "b" / "adapt.json") == "b");
    // A replacement that fails (here: nothing to put in place) leaves the old folder in place,
    // by either path (the exchange fails at once; the fallback's second rename fails and the
    // old folder is put back).
    CHECK_THROWS(cli::replace_folder(top / ".b.partial", top / "b", exchange));
    CHECK(read(top / "b" / "adapt.json") == "b");
    CHECK_FALSE(fs::exists(top / ".b.partial.old"));
  }

  RunFolder run("tidy");
  const fs::path top = cli::adaptations_dir(run.str());
  // Killed between the fallback's two renames: the old adaptation aside, the new one unfinished.
  write(top / ".a.partial.old" / "adapt.json", "a, kept");
  write(top / ".a.partial" / "adapt.json", "a, unfinished");
  // Killed after them: the old one aside beside its replacement.
  write(top / "b" / "adapt.json", "b, new");
  write(top / ".b.partial.old" / "adapt.json", "b, old");
  // Killed while writing an adaptation of a new name.
  write(top / ".c.partial" / "adapted_all.safetensors", "c, unfinished");
  // Left aside, and a user's folder of its name made since: left aside, still found as "d".
  write(top / ".d.partial.old" / "adapt.json", adapt_json(R"({"name": "s5"})"));
  write(top / "d" / "mine.txt", "a user's file");
  // A user's files.
  write(top / ".gitignore", "*");
  write(top / ".notes" / "x.txt", "x");
  CHECK(cli::has_adaptations(run.str()));
  // Until then the one left aside is the adaptation of its name.
  {
    write(top / ".a.partial.old" / "adapt.json", adapt_json(R"({"name": "s1"})"));
    const auto all = cli::find_adaptations(run.str());
    REQUIRE(all.size() == 3);
    CHECK(all[0].label == "a");
    CHECK(all[0].dir == (top / ".a.partial.old").string());
    CHECK(all[0].sessions == std::vector<std::string>{"s1"});
    CHECK(all[1].label == "b");
    CHECK(all[2].label == "d");
    CHECK(all[2].dir == (top / ".d.partial.old").string());
    write(top / ".a.partial.old" / "adapt.json", "a, kept");
  }
  CHECK(cli::tidy_adaptations(run.str()) == std::vector<std::string>{"a"});
  CHECK(read(top / "a" / "adapt.json") == "a, kept");
  CHECK(read(top / "b" / "adapt.json") == "b, new");
  for (const char* gone : {".a.partial.old", ".a.partial", ".b.partial.old", ".c.partial"})
    CHECK_FALSE(fs::exists(top / gone));
  CHECK(fs::exists(top / ".gitignore"));
  CHECK(fs::exists(top / ".notes" / "x.txt"));
  CHECK(fs::exists(top / ".d.partial.old" / "adapt.json"));
  CHECK(fs::exists(top / "d" / "mine.txt"));
  // Removing the run's adaptations takes the one left aside too, and only the user's files stay.
  const auto removed = cli::remove_adaptations(run.str());
  CHECK(removed.size() == 3);  // a, b, d
  CHECK_FALSE(fs::exists(top / ".d.partial.old"));
  CHECK_FALSE(fs::exists(top / "a"));
  CHECK(fs::exists(top / "d" / "mine.txt"));
  CHECK(fs::exists(top / ".gitignore"));
}

TEST_CASE("cli adaptations: only adapt's folders are removed", "[cli][adapt]") {
  RunFolder run("remove");
  const fs::path top = cli::adaptations_dir(run.str());
  write(top / "a" / "adapt.json", adapt_json(R"({"name": "s2"})"));
  write(top / ".b.partial" / "adapt.json", "unfinished");
  write(top / "notes.txt", "a user's file");
  write(run.path / "adapt.json", adapt_json(R"({"name": "s4"})"));
  write(run.path / "adapted_embeddings.safetensors", "m");
  write(run.path / "model.safetensors", "the run's model");
  const auto removed = cli::remove_adaptations(run.str());
  CHECK(removed.size() == 2);
  CHECK_FALSE(fs::exists(top / "a"));
  CHECK_FALSE(fs::exists(top / ".b.partial"));
  CHECK_FALSE(fs::exists(run.path / "adapt.json"));
  CHECK_FALSE(fs::exists(run.path / "adapted_embeddings.safetensors"));
  CHECK(fs::exists(run.path / "model.safetensors"));
  CHECK(fs::exists(top / "notes.txt"));  // and so adapt/ stays
  CHECK_FALSE(cli::has_adaptations(run.str()));
  fs::remove(top / "notes.txt");
  write(top / "c" / "adapt.json", adapt_json(R"({"name": "s2"})"));
  cli::remove_adaptations(run.str());
  CHECK_FALSE(fs::exists(top));  // empty: removed
}

TEST_CASE("cli adaptations: an earlier metatape's adaptation moves into its own folder",
          "[cli][adapt]") {
  RunFolder run("move");
  const fs::path top = cli::adaptations_dir(run.str());
  const std::string earlier = adapt_json(R"({"name": "s3"}, {"name": "s2"})");
  auto make_earlier = [&] {
    write(run.path / "adapt.json", earlier);
    write(run.path / "adapted_embeddings.safetensors", "emb");
    write(run.path / "adapted_inner-loop_s2.safetensors", "inner");
  };
  CHECK(cli::move_earlier_adaptation(run.str()).empty());  // none there
  make_earlier();
  REQUIRE(cli::move_earlier_adaptation(run.str()) == "s2+s3");
  CHECK(read(top / "s2+s3" / "adapt.json") == earlier);
  CHECK(read(top / "s2+s3" / "adapted_embeddings.safetensors") == "emb");
  CHECK(read(top / "s2+s3" / "adapted_inner-loop_s2.safetensors") == "inner");
  CHECK_FALSE(fs::exists(run.path / "adapt.json"));
  CHECK_FALSE(fs::exists(run.path / "adapted_embeddings.safetensors"));

  // Never over an adaptation of that name: the next free one.
  write(top / "s2+s3" / "adapt.json", adapt_json(R"({"name": "s2"}, {"name": "s3"})"));
  make_earlier();
  CHECK(cli::move_earlier_adaptation(run.str()) == "s2+s3-earlier");
  make_earlier();
  write(run.path / "adapt.json", earlier + " ");  // another file than the one moved above
  CHECK(cli::move_earlier_adaptation(run.str()) == "s2+s3-earlier-2");

  // Killed after the copy was put in place, before the originals went: finished, no second copy.
  write(run.path / "adapt.json", earlier);
  write(run.path / "adapted_embeddings.safetensors", "emb");
  CHECK(cli::move_earlier_adaptation(run.str()) == "s2+s3-earlier");
  CHECK_FALSE(fs::exists(run.path / "adapt.json"));
  CHECK_FALSE(fs::exists(run.path / "adapted_embeddings.safetensors"));
  CHECK_FALSE(fs::exists(top / "s2+s3-earlier-3"));

  // Killed while linking into the work folder: the originals are all still there.
  make_earlier();
  write(run.path / "adapt.json", earlier + "  ");  // not one moved above
  write(top / ".s2+s3-earlier-3.partial" / "adapted_embeddings.safetensors", "emb");
  cli::tidy_adaptations(run.str());
  CHECK(cli::move_earlier_adaptation(run.str()) == "s2+s3-earlier-3");
  CHECK(read(top / "s2+s3-earlier-3" / "adapted_inner-loop_s2.safetensors") == "inner");

  // An unreadable one is refused, naming the file and the fix.
  write(run.path / "adapt.json", "{");
  REQUIRE_THROWS_WITH(cli::move_earlier_adaptation(run.str()),
                      Contains("adapt.json") && Contains("remove it"));
}

TEST_CASE("cli adaptations: a checkpoint's identity is the CRC-32 its header records",
          "[cli][adapt]") {
  RunFolder run("crc");
  const std::vector<double> values = {1.5, -2, 0.25};
  const std::string a = (run.path / "a.safetensors").string(), b = (run.path / "b.safetensors").string();
  io::save_safetensors(a, {{"w", from_vector(values, Shape{3}, DType::f32)}});
  const std::vector<float> bytes(values.begin(), values.end());  // f32, as written
  CHECK(cli::checkpoint_data_crc32(a) ==
        fmt::format("{:08x}", io::crc32_of_bytes(bytes.data(), bytes.size() * sizeof(float))));
  // Other metadata, same tensors: the same model; one value changed: another.
  io::save_safetensors(b, {{"w", from_vector(values, Shape{3}, DType::f32)}}, {{"note", "x"}});
  CHECK(cli::checkpoint_data_crc32(b) == cli::checkpoint_data_crc32(a));
  io::save_safetensors(b, {{"w", from_vector(std::vector<double>{1.5, -2, 0.5}, Shape{3}, DType::f32)}});
  CHECK(cli::checkpoint_data_crc32(b) != cli::checkpoint_data_crc32(a));
  CHECK_THROWS(cli::checkpoint_data_crc32((run.path / "missing").string()));
}
