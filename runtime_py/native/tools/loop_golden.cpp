// gemma-edge-loop-golden GOLDEN.json: the runner library's generation loop (loop.h) and sampler driven over
// the recorded logits of the shared golden suite (tests/golden/loop.json, written from the Python loop):
// each case's tokens, stop reason, fetch calls, prefill and decode calls — or its refusal — must be the
// recorded ones; an image or audio case's expanded prompt, encoder calls and the soft tokens each prefill call
// was handed too. Prints one line per case and exits 1 when any differs.
#include <algorithm>
#include <cstdio>
#include <memory>
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
  // soft_width > 0 (an image or audio case): each prefill call's soft tokens recorded as one value per position,
  // its row's first — a row whose values differ is recorded as NaN, which no case holds
  const float* prefill(const int64_t*, size_t n, int64_t start, const float*, const float* soft) override {
    prefill_calls.push_back({start, int64_t(n)});
    if (soft_width > 0) {
      json values = json::array();
      for (size_t i = 0; i < n && soft; ++i) {
        const float* r = soft + i * soft_width;
        const bool same = std::all_of(r, r + soft_width, [&](float v) { return v == r[0]; });
        values.push_back(same ? json(r[0]) : json("row " + std::to_string(start + int64_t(i)) + " not uniform"));
      }
      prefill_soft.push_back(soft ? values : json(nullptr));
    }
    return next_logits();
  }
  const float* decode(int64_t token, int64_t position, const float*) override {
    decode_calls.push_back({token, position});
    return next_logits();
  }
  std::vector<std::vector<int64_t>> fetches, prefill_calls, decode_calls;
  size_t soft_width = 0;
  json prefill_soft = json::array();

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

// The suite's encoders: image k's rows all equal k + 1, audio clip j's all −(j + 1) (0 in a soft row is text),
// `hidden` wide; each records its calls' soft-token counts.
class ReplayEncoder : public gemma_edge::SoftEncoder {
 public:
  ReplayEncoder(std::vector<int> counts, size_t hidden, float sign)
      : counts_(std::move(counts)), hidden_(hidden), sign_(sign) {}
  size_t width() const override { return hidden_; }
  void encode(size_t k, float* out) override {
    calls.push_back(counts_.at(k));
    std::fill_n(out, size_t(counts_[k]) * hidden_, sign_ * float(k + 1));
  }
  void release() override { ++releases; }
  std::vector<int> calls;
  int releases = 0;

 private:
  std::vector<int> counts_;
  size_t hidden_;
  float sign_;
};

std::string show(const json& v) {
  std::string s = v.dump();
  return s.size() > 200 ? s.substr(0, 197) + "..." : s;
}

// "" when the case holds, else what differs.
std::string run_case(const json& c, size_t vocab, int64_t bos) {
  std::vector<std::vector<float>> steps;
  for (const auto& s : c.value("steps", json::array())) {  // a refused case may record none
    steps.push_back(s.get<std::vector<float>>());  // float32-exact numbers: float(double) is exact
    if (steps.back().size() != vocab) return "steps: expected rows of vocab_size " + std::to_string(vocab);
  }
  RecordedStep step(std::move(steps), vocab);
  // an image case: the images' soft-token counts, the model's image ids (null: no vision tower), pad id; an
  // audio case the same of its items' clips
  gemma_edge::LoopImages images;
  gemma_edge::LoopAudio audio;
  std::unique_ptr<ReplayEncoder> encoder, audio_encoder;
  const int64_t pad = c.value("pad_token_id", json(nullptr)).is_null() ? 0 : c["pad_token_id"].get<int64_t>();
  if (c.contains("images") || c.contains("audio")) step.soft_width = c.at("hidden").get<size_t>();
  if (c.contains("images")) {
    images.soft_tokens = c.at("images").get<std::vector<int>>();
    if (const json& t = c.value("image_tokens", json(nullptr)); !t.is_null())
      images.tokens = gemma_edge::ImageTokens{t.at("boi").get<int64_t>(), t.at("image").get<int64_t>(),
                                              t.at("eoi").get<int64_t>()};
    images.pad_id = pad;
    images.bos = bos;
    encoder = std::make_unique<ReplayEncoder>(images.soft_tokens, step.soft_width, 1.0f);
    images.encoder = encoder.get();
  }
  if (c.contains("audio")) {
    audio.soft_tokens = c.at("audio").get<std::vector<std::vector<int>>>();
    if (const json& t = c.value("audio_tokens", json(nullptr)); !t.is_null())
      audio.tokens = gemma_edge::AudioTokens{t.at("boa").get<int64_t>(), t.at("audio").get<int64_t>(),
                                             t.at("eoa").get<int64_t>()};
    audio.pad_id = pad;
    audio.bos = bos;
    std::vector<int> clips;
    for (const auto& item : audio.soft_tokens) clips.insert(clips.end(), item.begin(), item.end());
    audio_encoder = std::make_unique<ReplayEncoder>(clips, step.soft_width, -1.0f);
    audio.encoder = audio_encoder.get();
  }
  const json& sm = c.at("sampler");
  gemma_edge::LoopSettings settings{c.at("max_new_tokens").get<int>(), c.at("max_context").get<int>(),
                                    c.at("prefill_chunk").get<int>(), c.at("eos").get<std::vector<int64_t>>(),
                                    c.at("stop_on_eos").get<bool>()};
  const std::vector<int64_t> prompt = c.at("prompt").get<std::vector<int64_t>>();
  try {
    gemma_edge::Sampler sampler(sm.at("temperature").get<float>(), sm.at("top_k").get<int64_t>(),
                                sm.at("top_p").get<float>(), sm.at("seed").get<uint64_t>());
    gemma_edge::Generation g = gemma_edge::generate(step, sampler, prompt, settings, nullptr, images, audio);
    if (c.contains("error")) return "expected a refusal (" + show(c["error"]) + "), generated " + show(json(g.tokens));
    const json& e = c.at("expect");
    json got = {{"tokens", g.tokens}, {"stop_reason", g.stop_reason}, {"fetches", step.fetches},
                {"prefill_calls", step.prefill_calls}, {"decode_calls", step.decode_calls}};
    std::vector<std::string> keys{"tokens", "stop_reason", "fetches", "prefill_calls", "decode_calls"};
    if (encoder || audio_encoder) {
      got["expanded_prompt"] = g.prompt;
      got["encode_calls"] = encoder ? encoder->calls : std::vector<int>{};
      got["prefill_soft"] = step.prefill_soft;
      keys.insert(keys.end(), {"expanded_prompt", "encode_calls", "prefill_soft"});
      for (const ReplayEncoder* e : {encoder.get(), audio_encoder.get()})
        if (e && e->releases != 1) return "an encoder was released " + std::to_string(e->releases) + " times";
    }
    if (audio_encoder) {
      got["audio_encode_calls"] = audio_encoder->calls;
      keys.push_back("audio_encode_calls");
    }
    for (const auto& k : keys)
      if (got[k] != e.at(k)) return k + ": expected " + show(e[k]) + ", found " + show(got[k]);
    return "";
  } catch (const gemma_edge::LoopError& err) {
    if (!c.contains("error")) return std::string("refused: ") + err.what();
    const json& e = c["error"];
    if (err.field != e.at("field").get<std::string>())
      return "refusal field: expected " + show(e["field"]) + ", found '" + err.field + "' (" + err.what() + ")";
    if (std::string(err.what()).find(e.at("message_contains").get<std::string>()) == std::string::npos)
      return "refusal message: expected it to contain " + show(e["message_contains"]) + ", found '" + err.what() + "'";
    if (!step.fetches.empty() || !step.prefill_calls.empty()) return "refused after fetching or stepping";
    if (encoder && !encoder->calls.empty()) return "refused after encoding an image";
    if (audio_encoder && !audio_encoder->calls.empty()) return "refused after encoding an audio clip";
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
  // version 2 added the image cases, version 3 the audio cases
  const int version = g.value("version", 0);
  if (g.value("format", "") != "gemma-edge-loop-golden" || version < 1 || version > 3) {
    std::fprintf(stderr, "gemma-edge-loop-golden: %s: expected format gemma-edge-loop-golden version 1, 2 or 3\n",
                 argv[1]);
    return 2;
  }
  const size_t vocab = g.at("vocab_size").get<size_t>();
  // the suite's <bos> (make_loop_golden.BOS), which an image placeholder-free prompt's spans follow
  const int64_t bos = g.value("bos_token_id", int64_t(2));
  int failed = 0, n = 0;
  for (const auto& c : g.at("cases")) {
    ++n;
    std::string problem;
    try {
      problem = run_case(c, vocab, bos);
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
