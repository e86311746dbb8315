// gemma-edge-loop-golden GOLDEN.json: the runner library's generation loop (loop.h) and sampler driven over
// the recorded logits of the shared golden suite (tests/golden/loop.json, written from the Python loop):
// each case's tokens, stop reason, fetch calls, prefill and decode calls — or its refusal — must be the
// recorded ones. Prints one line per case and exits 1 when any differs.
#include <cstdio>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <vector>

#include "errors.h"
#include "loop.h"
#include "sampler.h"
#include "text_file.h"

namespace {

using json = nlohmann::json;

// A Step that returns the case's recorded logits in order and records every call the loop makes.
class RecordedStep : public gemma_edge::Step {
 public:
  RecordedStep(std::vector<std::vector<float>> steps, size_t vocab) : steps_(std::move(steps)), vocab_(vocab) {}
  size_t row_values() const override { return 1; }
  size_t vocab_size() const override { return vocab_; }
  void check_prompt(const std::vector<int64_t>& ids) const override {
    for (size_t i = 0; i < ids.size(); ++i)
      if (ids[i] < 0 || size_t(ids[i]) >= vocab_)
        throw gemma_edge::LoopError("prompt", "prompt id " + std::to_string(ids[i]) + " at position " +
                                    std::to_string(i) + ": expected 0 ≤ id < vocab_size " + std::to_string(vocab_));
  }
  gemma_edge::FetchStats fetch(const int64_t* ids, size_t n, float* rows) override {
    fetches.emplace_back(ids, ids + n);
    for (size_t i = 0; i < n; ++i) rows[i] = 0.0f;
    return {};
  }
  const float* prefill(const int64_t*, size_t n, int64_t start, const float*) override {
    prefill_calls.push_back({start, int64_t(n)});
    return next_logits();
  }
  const float* decode(int64_t token, int64_t position, const float*) override {
    decode_calls.push_back({token, position});
    return next_logits();
  }
  std::vector<std::vector<int64_t>> fetches, prefill_calls, decode_calls;

 private:
  // step 0 is what the last prefill chunk returns: every earlier chunk's logits are not read by the loop
  const float* next_logits() {
    const size_t k = decode_calls.size();
    if (k >= steps_.size())
      throw std::runtime_error("the loop asked for step " + std::to_string(k) + "; the case records " +
                               std::to_string(steps_.size()));
    return steps_[k].data();
  }
  std::vector<std::vector<float>> steps_;
  size_t vocab_;
};

std::string show(const json& v) {
  std::string s = v.dump();
  return s.size() > 200 ? s.substr(0, 197) + "..." : s;
}

// "" when the case holds, else what differs.
std::string run_case(const json& c, size_t vocab) {
  std::vector<std::vector<float>> steps;
  for (const auto& s : c.value("steps", json::array())) {  // a refused case may record none
    steps.push_back(s.get<std::vector<float>>());  // float32-exact numbers: float(double) is exact
    if (steps.back().size() != vocab) return "steps: expected rows of vocab_size " + std::to_string(vocab);
  }
  RecordedStep step(std::move(steps), vocab);
  const json& sm = c.at("sampler");
  gemma_edge::LoopSettings settings{c.at("max_new_tokens").get<int>(), c.at("max_context").get<int>(),
                                    c.at("prefill_chunk").get<int>(), c.at("eos").get<std::vector<int64_t>>(),
                                    c.at("stop_on_eos").get<bool>()};
  const std::vector<int64_t> prompt = c.at("prompt").get<std::vector<int64_t>>();
  try {
    gemma_edge::Sampler sampler(sm.at("temperature").get<float>(), sm.at("top_k").get<int64_t>(),
                                sm.at("top_p").get<float>(), sm.at("seed").get<uint64_t>());
    gemma_edge::Generation g = gemma_edge::generate(step, sampler, prompt, settings);
    if (c.contains("error")) return "expected a refusal (" + show(c["error"]) + "), generated " + show(json(g.tokens));
    const json& e = c.at("expect");
    const json got = {{"tokens", g.tokens}, {"stop_reason", g.stop_reason}, {"fetches", step.fetches},
                      {"prefill_calls", step.prefill_calls}, {"decode_calls", step.decode_calls}};
    for (const char* k : {"tokens", "stop_reason", "fetches", "prefill_calls", "decode_calls"})
      if (got[k] != e.at(k)) return std::string(k) + ": expected " + show(e[k]) + ", found " + show(got[k]);
    return "";
  } catch (const gemma_edge::LoopError& err) {
    if (!c.contains("error")) return std::string("refused: ") + err.what();
    const json& e = c["error"];
    if (err.field != e.at("field").get<std::string>())
      return "refusal field: expected " + show(e["field"]) + ", found '" + err.field + "' (" + err.what() + ")";
    if (std::string(err.what()).find(e.at("message_contains").get<std::string>()) == std::string::npos)
      return "refusal message: expected it to contain " + show(e["message_contains"]) + ", found '" + err.what() + "'";
    if (!step.fetches.empty() || !step.prefill_calls.empty()) return "refused after fetching or stepping";
    return "";
  } catch (const gemma_edge::BadInput& err) {  // the sampler's settings
    if (!c.contains("error")) return std::string("refused: ") + err.what();
    const json& e = c["error"];
    if (std::string(err.what()).find(e.at("message_contains").get<std::string>()) == std::string::npos)
      return "refusal message: expected it to contain " + show(e["message_contains"]) + ", found '" + err.what() + "'";
    return "";
  }
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: gemma-edge-loop-golden GOLDEN.json\n");
    return 2;
  }
  json g;
  try {
    g = json::parse(gemma_edge::read_text_file("", argv[1], size_t(1) << 30));
  } catch (const std::exception& e) {
    std::fprintf(stderr, "gemma-edge-loop-golden: %s: %s\n", argv[1], e.what());
    return 2;
  }
  if (g.value("format", "") != "gemma-edge-loop-golden" || g.value("version", 0) != 1) {
    std::fprintf(stderr, "gemma-edge-loop-golden: %s: expected format gemma-edge-loop-golden version 1\n", argv[1]);
    return 2;
  }
  const size_t vocab = g.at("vocab_size").get<size_t>();
  int failed = 0, n = 0;
  for (const auto& c : g.at("cases")) {
    ++n;
    std::string problem;
    try {
      problem = run_case(c, vocab);
    } catch (const std::exception& e) {
      problem = std::string("failed: ") + e.what();
    }
    std::printf("%s %s%s%s\n", problem.empty() ? "ok  " : "FAIL", c.value("name", "?").c_str(),
                problem.empty() ? "" : ": ", problem.c_str());
    failed += !problem.empty();
  }
  std::printf("%d of %d cases hold\n", n - failed, n);
  return failed || n == 0 ? 1 : 0;
}
