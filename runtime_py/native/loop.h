// The generation loop, written against an abstract step so that a test drives it with recorded logits
// (gemma-edge-loop-golden over tests/golden/loop.json) and an app with the bundle's program (Program).
//
// The loop every host implements (Session._loop in Python, Generator in Java): refuse up front — before any
// fetch — a prompt that is empty, images or audio the prompt cannot take, max_new_tokens < 1, or len(prompt) +
// max_new_tokens > max_context (the prompt with its spans); encode the images and clips; fetch the prompt's PLE
// rows once; prefill in chunks of prefill_chunk; pick a token from the last chunk's logits; then per token:
// stop on EOS (when asked; the first token too) or at max_new_tokens, else fetch its row and decode it at the
// next position. gemma_edge/contract/loop.md is the specification, its "Images" and "Audio" sections those paths.
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
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
  // soft: the chunk's soft tokens [n, H] (the images' and clips' rows at their placeholders, zeros elsewhere),
  // or null for a prompt without either (the step feeds zeros)
  virtual const float* prefill(const int64_t* tokens, size_t n, int64_t start, const float* rows,
                               const float* soft) = 0;
  virtual const float* decode(int64_t token, int64_t position, const float* row) = 0;
};

// The ids that frame an image in a prompt: boi, one `image` placeholder per soft token, eoi.
struct ImageTokens {
  int64_t boi = 0, image = 0, eoi = 0;
};

// The ids that frame an audio clip in a prompt: boa, one `audio` placeholder per soft token, eoa.
struct AudioTokens {
  int64_t boa = 0, audio = 0, eoa = 0;
};

// What the loop needs of a tower (the vision or the audio one): the soft tokens of the request's inputs (images,
// or audio clips counted over all items), asked for in order after every check, then released (a tower holds
// its weights only while it encodes).
class SoftEncoder {
 public:
  virtual ~SoftEncoder() = default;
  virtual size_t width() const = 0;  // H, floats per soft token (the decoder's hidden size)
  // Input k's soft tokens [n_k, H] into `out`, n_k the count the request gave for it.
  virtual void encode(size_t k, float* out) = 0;
  virtual void release() = 0;
};
using ImageEncoder = SoftEncoder;
using AudioEncoder = SoftEncoder;

// A request's images: what preprocessing at their budget gave (each one's soft-token count) and the model's
// side of them. `tokens` empty: the model has no vision tower, and an image is refused.
struct LoopImages {
  std::vector<int> soft_tokens;        // n_k per image, in prompt order; empty: a text prompt
  std::optional<ImageTokens> tokens;   // the model's image ids
  int64_t pad_id = 0;                  // the PLE row fetched at a placeholder (manifest pad_token_id, 0 if null)
  int64_t bos = -1;                    // a leading <bos> the spans follow when the prompt has no placeholder
  ImageEncoder* encoder = nullptr;
  std::string model = "the model";     // names it in a refusal
};

// A request's audio items, each read and cut into clips of at most 30 s (audio.h): per item the soft-token count
// of each of its clips, and the model's side of them. `tokens` empty: the model has no audio tower.
struct LoopAudio {
  std::vector<std::vector<int>> soft_tokens;  // per item, n_ij per clip, in prompt order; empty: no audio
  std::optional<AudioTokens> tokens;          // the model's audio ids
  int64_t pad_id = 0;                         // as LoopImages'
  int64_t bos = -1;                           // the spans of a placeholder-free prompt go after it and any image spans
  AudioEncoder* encoder = nullptr;            // encode(j): clip j counted over all items
  std::string model = "the model";
};

// A refused request, naming the field the golden suite names ("prompt", "images", "max_new_tokens", "context").
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
  std::vector<int64_t> prompt;  // the ids prefilled: the request's, each image and audio placeholder expanded
  std::vector<int64_t> tokens;
  std::string stop_reason;  // "eos" or "max_new_tokens"
  FetchStats prompt_fetch;
  double encode_s = 0;  // the images and clips through their encoders (loads included); counted in ttft_s
  double prefill_s = 0, ttft_s = 0, decode_s = 0;  // prefill_s excludes encode and fetch; decode_s after the 1st token
};

// Called once per generated token with the logits it was picked from (V floats).
using TokenObserver = std::function<void(int64_t token, const float* logits, size_t vocab)>;

// The images check of loop.md for a prompt with `n_images` images (none: nothing to check): LoopError
// "images" when the model has no vision tower (`tokens` empty; `model` names it), the prompt holds a boi or
// eoi id, or it has placeholders but not one per image.
void check_image_prompt(const std::vector<int64_t>& prompt, size_t n_images, const std::optional<ImageTokens>& tokens,
                        const std::string& model);

// The prompt with each image's span (boi + n_k × image + eoi): at its placeholder, one per image, or — when
// the prompt has none — all of them after a leading <bos> (at the start without one), once check_image_prompt
// let it through. The prompt itself when there are no images.
std::vector<int64_t> expand_image_prompt(const std::vector<int64_t>& prompt, const LoopImages& images);

// The audio check of loop.md for a prompt with `n_items` audio items: LoopError "audio" when the model has no
// audio tower, the prompt holds a boa or eoa id, or it has placeholders but not one per item.
void check_audio_prompt(const std::vector<int64_t>& prompt, size_t n_items, const std::optional<AudioTokens>& tokens,
                        const std::string& model);

// The prompt (its images already expanded) with each audio item's spans, one boa + n_ij × audio + eoa per clip: at
// its placeholder, or — without placeholders — all of them after a leading <bos> and the image spans that follow
// it. LoopError "audio" as check_audio_prompt, and for an item of no clip or a clip of no soft token.
std::vector<int64_t> expand_audio_prompt(const std::vector<int64_t>& prompt, const LoopAudio& audio,
                                         const std::optional<ImageTokens>& image_tokens);

// The request's prompt with the images' and then the audio's spans, after their checks (loop.md's order).
std::vector<int64_t> expand_prompt(const std::vector<int64_t>& prompt, const LoopImages& images,
                                   const LoopAudio& audio);

Generation generate(Step& step, Sampler& sampler, const std::vector<int64_t>& prompt, const LoopSettings& settings,
                    const TokenObserver& observe = nullptr, const LoopImages& images = {},
                    const LoopAudio& audio = {});

}  // namespace gemma_edge
