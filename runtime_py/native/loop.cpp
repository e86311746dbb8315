#include "loop.h"

#include <algorithm>
#include <chrono>

namespace gemma_edge {

namespace {
using Clock = std::chrono::steady_clock;
double seconds_since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }
}  // namespace

Generation generate(Step& step, Sampler& sampler, const std::vector<int64_t>& prompt, const LoopSettings& s,
                    const TokenObserver& observe) {
  // The checks of gemma_edge/contract/loop.md, in its order: prompt, max_new_tokens, context.
  if (prompt.empty()) throw LoopError("prompt", "prompt: expected at least one token");
  step.check_prompt(prompt);
  if (s.max_new_tokens < 1)
    throw LoopError("max_new_tokens", "max_new_tokens: expected an integer ≥ 1, found " +
                                          std::to_string(s.max_new_tokens));
  if (int64_t(prompt.size()) + s.max_new_tokens > s.max_context)
    throw LoopError("context", "context: prompt " + std::to_string(prompt.size()) + " + max_new_tokens " +
                                   std::to_string(s.max_new_tokens) + " = " +
                                   std::to_string(prompt.size() + size_t(s.max_new_tokens)) +
                                   " tokens, expected ≤ max_context " + std::to_string(s.max_context));
  if (s.prefill_chunk < 1)
    throw LoopError("prefill_chunk", "prefill_chunk: expected an integer ≥ 1, found " + std::to_string(s.prefill_chunk));

  Generation g;
  const size_t rv = step.row_values(), V = step.vocab_size();
  auto t0 = Clock::now();
  std::vector<float> rows(prompt.size() * rv);
  g.prompt_fetch = step.fetch(prompt.data(), prompt.size(), rows.data());
  const float* logits = nullptr;
  for (size_t start = 0; start < prompt.size(); start += size_t(s.prefill_chunk)) {
    const size_t n = std::min(prompt.size() - start, size_t(s.prefill_chunk));
    logits = step.prefill(prompt.data() + start, n, int64_t(start), rows.data() + start * rv);
  }
  g.prefill_s = seconds_since(t0) - g.prompt_fetch.wall_s;
  auto is_eos = [&](int64_t t) { return s.stop_on_eos && std::find(s.eos.begin(), s.eos.end(), t) != s.eos.end(); };
  std::vector<float> row(rv);
  int64_t position = int64_t(prompt.size());
  Clock::time_point t1;
  for (;;) {
    const int64_t token = sampler(logits, V);
    g.tokens.push_back(token);
    if (observe) observe(token, logits, V);
    if (g.tokens.size() == 1) {
      g.ttft_s = seconds_since(t0);
      t1 = Clock::now();
    }
    if (is_eos(token)) {
      g.stop_reason = "eos";
      break;
    }
    if (int(g.tokens.size()) >= s.max_new_tokens) {
      g.stop_reason = "max_new_tokens";
      break;
    }
    step.fetch(&token, 1, row.data());
    logits = step.decode(token, position++, row.data());
  }
  g.decode_s = seconds_since(t1);
  return g;
}

}  // namespace gemma_edge
