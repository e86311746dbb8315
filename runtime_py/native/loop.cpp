#include "loop.h"

#include <algorithm>
#include <chrono>

namespace gemma_edge {

namespace {
using Clock = std::chrono::steady_clock;
double seconds_since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

// The encoder gives its weights back however encoding ends (the Python session's try/finally).
struct ReleaseAfter {
  SoftEncoder* encoder;
  ~ReleaseAfter() {
    if (encoder) encoder->release();
  }
};

std::string count_of(size_t n, const char* what) { return std::to_string(n) + " " + what + (n == 1 ? "" : "s"); }

// The words a refusal of each kind of input uses (loop.md's messages, as the Python session words them).
struct Frame {
  const char* field;   // "images" / "audio"
  const char* kind;    // "image" / "audio": "... frame ids", "... placeholder"
  const char* item;    // "image" / "audio item"
  const char* per;     // "one per image" / "one per item"
  const char* first;   // "images first" / "audio first"
};
constexpr Frame kImageFrame{"images", "image", "image", "one per image", "images first"};
constexpr Frame kAudioFrame{"audio", "audio", "audio item", "one per item", "audio first"};

// loop.md's check of a prompt with n inputs of one kind framed by open … close: no frame id in it, and no
// placeholder or one per input.
void check_frames(const std::vector<int64_t>& prompt, size_t n, int64_t open, int64_t placeholder, int64_t close,
                  const Frame& w) {
  for (size_t i = 0; i < prompt.size(); ++i)
    if (prompt[i] == open || prompt[i] == close)
      throw LoopError(w.field, std::string(w.field) + ": the prompt holds " + w.kind + " frame ids (" +
                                   std::to_string(open) + " / " + std::to_string(close) + ", first at position " +
                                   std::to_string(i) + "); expected one placeholder " + std::to_string(placeholder) +
                                   " per " + w.item + ", which the loop expands");
  const size_t marks = size_t(std::count(prompt.begin(), prompt.end(), placeholder));
  if (marks != 0 && marks != n)
    throw LoopError(w.field, std::string(w.field) + ": the prompt has " +
                                 count_of(marks, (std::string(w.kind) + " placeholder").c_str()) + " (" +
                                 std::to_string(placeholder) + ") for " + count_of(n, w.item) + "; expected " +
                                 w.per + ", or none (" + w.first + ")");
}

// The prompt with each input's spans (open + n × placeholder + close per count of its list): at its placeholder, or,
// when the prompt has none, all of them at index `at`.
std::vector<int64_t> expand_spans(const std::vector<int64_t>& prompt, int64_t open, int64_t placeholder,
                                  int64_t close, const std::vector<std::vector<int>>& counts, size_t at) {
  auto spans = [&](std::vector<int64_t>& out, const std::vector<int>& ns) {
    for (int n : ns) {
      out.push_back(open);
      out.insert(out.end(), size_t(n), placeholder);
      out.push_back(close);
    }
  };
  std::vector<int64_t> out;
  if (std::count(prompt.begin(), prompt.end(), placeholder) == 0) {
    out.assign(prompt.begin(), prompt.begin() + long(at));
    for (const auto& ns : counts) spans(out, ns);
    out.insert(out.end(), prompt.begin() + long(at), prompt.end());
    return out;
  }
  size_t k = 0;
  for (int64_t id : prompt) {
    if (id == placeholder)
      spans(out, counts[k++]);
    else
      out.push_back(id);
  }
  return out;
}
}  // namespace

void check_image_prompt(const std::vector<int64_t>& prompt, size_t n_images,
                        const std::optional<ImageTokens>& tokens, const std::string& model) {
  if (n_images == 0) return;
  if (!tokens)
    throw LoopError("images", "images: " + model + " has no vision tower (export a checkpoint with one, "
                              "without --no-vision)");
  check_frames(prompt, n_images, tokens->boi, tokens->image, tokens->eoi, kImageFrame);
}

std::vector<int64_t> expand_image_prompt(const std::vector<int64_t>& prompt, const LoopImages& images) {
  if (images.soft_tokens.empty()) return prompt;
  check_image_prompt(prompt, images.soft_tokens.size(), images.tokens, images.model);
  const ImageTokens& t = *images.tokens;
  std::vector<std::vector<int>> counts;
  for (int n : images.soft_tokens) counts.push_back({n});
  const size_t at = !prompt.empty() && prompt[0] == images.bos ? 1 : 0;
  return expand_spans(prompt, t.boi, t.image, t.eoi, counts, at);
}

void check_audio_prompt(const std::vector<int64_t>& prompt, size_t n_items,
                        const std::optional<AudioTokens>& tokens, const std::string& model) {
  if (n_items == 0) return;
  if (!tokens)
    throw LoopError("audio", "audio: " + model + " has no audio tower (export a checkpoint with one, without "
                             "--no-audio)");
  check_frames(prompt, n_items, tokens->boa, tokens->audio, tokens->eoa, kAudioFrame);
}

std::vector<int64_t> expand_audio_prompt(const std::vector<int64_t>& prompt, const LoopAudio& audio,
                                         const std::optional<ImageTokens>& image_tokens) {
  if (audio.soft_tokens.empty()) return prompt;
  check_audio_prompt(prompt, audio.soft_tokens.size(), audio.tokens, audio.model);
  for (size_t i = 0; i < audio.soft_tokens.size(); ++i) {
    if (audio.soft_tokens[i].empty())
      throw LoopError("audio", "audio: item " + std::to_string(i) + " makes no soft token (no clip of 161 samples "
                               "or more at 16 kHz)");
    for (int n : audio.soft_tokens[i])
      if (n < 1 || n > 750)
        throw LoopError("audio", "audio: item " + std::to_string(i) + ": a clip of " + std::to_string(n) +
                                     " soft tokens, expected 1..750 (at most 30 s)");
  }
  const AudioTokens& t = *audio.tokens;
  size_t at = !prompt.empty() && prompt[0] == audio.bos ? 1 : 0;
  if (image_tokens)  // after the image spans that open the prompt, as the chat template puts items in order
    while (at < prompt.size() &&
           (prompt[at] == image_tokens->boi || prompt[at] == image_tokens->image || prompt[at] == image_tokens->eoi))
      ++at;
  return expand_spans(prompt, t.boa, t.audio, t.eoa, audio.soft_tokens, at);
}

std::vector<int64_t> expand_prompt(const std::vector<int64_t>& prompt, const LoopImages& images,
                                   const LoopAudio& audio) {
  return expand_audio_prompt(expand_image_prompt(prompt, images), audio, images.tokens);
}

Generation generate(Step& step, Sampler& sampler, const std::vector<int64_t>& request, const LoopSettings& s,
                    const TokenObserver& observe, const LoopImages& images, const LoopAudio& audio) {
  // The checks of gemma_edge/contract/loop.md, in its order: prompt, images, audio, max_new_tokens, context.
  if (request.empty()) throw LoopError("prompt", "prompt: expected at least one token");
  step.check_prompt(request);
  Generation g;
  g.prompt = expand_prompt(request, images, audio);
  const std::vector<int64_t>& prompt = g.prompt;
  if (prompt.size() != request.size()) step.check_prompt(prompt);  // the image and audio ids too
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
  struct Tower {  // the images', then the clips': their encoder, placeholder id and soft-token counts in order
    SoftEncoder* encoder;
    int64_t placeholder, pad;
    std::vector<int> counts;
  };
  std::vector<Tower> towers;
  if (!images.soft_tokens.empty())
    towers.push_back({images.encoder, images.tokens->image, images.pad_id, images.soft_tokens});
  if (!audio.soft_tokens.empty()) {
    std::vector<int> clips;
    for (const auto& item : audio.soft_tokens) clips.insert(clips.end(), item.begin(), item.end());
    towers.push_back({audio.encoder, audio.tokens->audio, audio.pad_id, clips});
  }
  for (const Tower& t : towers)
    if (!t.encoder) throw std::logic_error("generate: images or audio without an encoder");

  const size_t rv = step.row_values(), V = step.vocab_size();
  auto t0 = Clock::now();
  // soft [T, H]: zeros, each image's and clip's rows at its placeholders, in order
  std::vector<float> soft;
  size_t H = 0;
  for (const Tower& t : towers) {
    ReleaseAfter release{t.encoder};
    if (H == 0) {
      H = t.encoder->width();
      soft.assign(prompt.size() * H, 0.0f);
    } else if (t.encoder->width() != H) {
      throw std::logic_error("generate: the vision and audio encoders' widths differ");
    }
    std::vector<float> rows;
    size_t at = 0;  // the next placeholder position to fill
    for (size_t k = 0; k < t.counts.size(); ++k) {
      const size_t n = size_t(t.counts[k]);
      rows.resize(n * H);
      t.encoder->encode(k, rows.data());
      for (size_t r = 0; r < n; ++r, ++at) {
        while (prompt[at] != t.placeholder) ++at;  // the expansion put n_k placeholders per input
        std::copy_n(rows.data() + r * H, H, soft.data() + at * H);
      }
    }
  }
  if (!towers.empty()) g.encode_s = seconds_since(t0);
  // ONE batched fetch of the prompt; a placeholder's token half is the pad row (transformers' splice)
  std::vector<int64_t> fetched = prompt;
  for (const Tower& t : towers)
    std::replace(fetched.begin(), fetched.end(), t.placeholder, t.pad);
  std::vector<float> rows(prompt.size() * rv);
  g.prompt_fetch = step.fetch(fetched.data(), fetched.size(), rows.data());
  const float* logits = nullptr;
  for (size_t start = 0; start < prompt.size(); start += size_t(s.prefill_chunk)) {
    const size_t n = std::min(prompt.size() - start, size_t(s.prefill_chunk));
    logits = step.prefill(prompt.data() + start, n, int64_t(start), rows.data() + start * rv,
                          towers.empty() ? nullptr : soft.data() + start * H);
  }
  g.prefill_s = seconds_since(t0) - g.encode_s - g.prompt_fetch.wall_s;
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
