// The generation loop, written against an abstract step so that a test drives it with recorded logits
// (gemma-edge-loop-golden over tests/golden/loop.json) and an app with the bundle's program (Program).
//
// The loop every host implements (Session._loop in Python, Generator in Java): refuse up front — before any
// fetch — a prompt that is empty, max_new_tokens < 1, or len(prompt) + max_new_tokens > max_context; fetch
// the prompt's PLE rows once; prefill in chunks of prefill_chunk; pick a token from the last chunk's logits;
// then per token: stop on EOS (when asked; the first token too) or at max_new_tokens, else fetch its row and
// decode it at the next position.
#pragma once

#include <cstdint>
#include <functional>
#include <stdexcept>
#include <string>
#include <vector>

#include "errors.h"
#include "ple_file.h"
#include "sampler.h"

namespace gemma_edge {

// What the loop needs of a model: the PLE fetch and the two step roles. The logits a call returns stay
// valid until the next call.
class Step {
 public:
  virtual ~Step() = default;
  virtual size_t row_values() const = 0;  // floats per token of a PLE row (L · P)
  virtual size_t vocab_size() const = 0;  // V of the logits
  // BadInput naming the first id the model cannot take (the loop calls it before any fetch).
  virtual void check_prompt(const std::vector<int64_t>& ids) const = 0;
  virtual FetchStats fetch(const int64_t* ids, size_t n, float* rows) = 0;
  virtual const float* prefill(const int64_t* tokens, size_t n, int64_t start, const float* rows) = 0;
  virtual const float* decode(int64_t token, int64_t position, const float* row) = 0;
};

// A refused request, naming the field the golden suite names ("prompt", "max_new_tokens", "context").
struct LoopError : BadInput {
  LoopError(std::string f, const std::string& message) : BadInput(message), field(std::move(f)) {}
  std::string field;
};

struct LoopSettings {
  int max_new_tokens = 32;
  int max_context = 0;
  int prefill_chunk = 0;
  std::vector<int64_t> eos;
  bool stop_on_eos = true;
};

struct Generation {
  std::vector<int64_t> tokens;
  std::string stop_reason;  // "eos" or "max_new_tokens"
  FetchStats prompt_fetch;
  double prefill_s = 0, ttft_s = 0, decode_s = 0;  // prefill_s excludes the fetch; decode_s after the 1st token
};

// Called once per generated token with the logits it was picked from (V floats).
using TokenObserver = std::function<void(int64_t token, const float* logits, size_t vocab)>;

Generation generate(Step& step, Sampler& sampler, const std::vector<int64_t>& prompt, const LoopSettings& settings,
                    const TokenObserver& observe = nullptr);

}  // namespace gemma_edge
