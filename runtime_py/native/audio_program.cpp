#include "audio_program.h"

#include <executorch/extension/module/module.h>
#include <executorch/extension/tensor/tensor.h>

#include <algorithm>
#include <chrono>
#include <cmath>

#include "errors.h"
#include "tower_program.h"

namespace gemma_edge {

using executorch::aten::ScalarType;
using executorch::extension::from_blob;
using executorch::runtime::EValue;

AudioProgram::~AudioProgram() = default;

AudioProgram::AudioProgram(const Manifest& m, const std::vector<AudioClip>& clips) : clips_(clips) {
  if (!m.audio)
    throw LoopError("audio", "audio: " + m.dir + " has no audio tower (export a checkpoint with one, without "
                             "--no-audio)");
  const BundleFile& f = m.file("audio");
  path_ = f.path;
  sha256_ = f.sha256;
  bytes_ = f.bytes;
  method_ = m.audio->method;
  hidden_ = m.audio->hidden_size;
  max_tokens_ = m.audio->max_tokens;
}

void AudioProgram::load() {
  auto t0 = std::chrono::steady_clock::now();
  auto module = load_tower_program(path_, bytes_, sha256_, "audio", method_, "audio.method", nullptr);
  // the signature of contract/bundle_format's audio entry: (rows f32 [1, R, 160], valid f32 [1, R]) ->
  // soft f32 [1, 12m, H], R = 48m − 3 dynamic (the metadata gives the planned upper bound)
  auto meta = module->method_meta(method_);
  const std::string where = path_ + ": method '" + method_ + "'";
  if (!meta.ok() || meta->num_inputs() != 2 || meta->num_outputs() < 1)
    throw BadInput(where + ": expected 2 inputs (rows, valid) and a soft-token output, found " +
                   (meta.ok() ? std::to_string(meta->num_inputs()) + " inputs and " +
                                    std::to_string(meta->num_outputs()) + " outputs" : std::string("none")));
  auto rows = meta->input_tensor_meta(0), valid = meta->input_tensor_meta(1);
  if (!rows.ok() || rows->scalar_type() != ScalarType::Float || rows->sizes().size() != 3 ||
      rows->sizes()[2] != kAudioHop)
    throw BadInput(where + " input 0 (rows): expected float32 [1, R, 160], found " +
                   (rows.ok() ? shape_text(rows->sizes()) : std::string("no tensor")));
  if (!valid.ok() || valid->scalar_type() != ScalarType::Float || valid->sizes().size() != 2)
    throw BadInput(where + " input 1 (valid): expected float32 [1, R], found " +
                   (valid.ok() ? shape_text(valid->sizes()) : std::string("no tensor")));
  module_ = std::move(module);
  ++loads_;
  load_s_ = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

void AudioProgram::encode(size_t k, float* out) {
  const AudioClip& c = clips_.at(k);
  if (c.soft_tokens > max_tokens_)
    throw LoopError("audio", "audio: a clip of " + std::to_string(c.soft_tokens) + " soft tokens, expected ≤ " +
                                 std::to_string(max_tokens_) + " (manifest audio.max_tokens)");
  if (!module_) load();
  const int32_t R = c.program_frames;
  auto rows = from_blob(const_cast<float*>(c.rows.data()), {1, R, kAudioHop}, ScalarType::Float);
  auto valid = from_blob(const_cast<float*>(c.valid.data()), {1, R}, ScalarType::Float);
  auto res = module_->execute(method_, std::vector<EValue>{*rows, *valid});
  if (!res.ok())
    throw std::runtime_error(path_ + ": method '" + method_ + "' failed with ExecuTorch error " +
                             std::to_string(int(res.error())) + " on clip " + std::to_string(k) + " (" +
                             std::to_string(R) + " rows)");
  const auto& outs = res.get();
  const int64_t positions = int64_t(kAudioBlock) * (R + 3) / kAudioBlockRows;  // 12 per block of 48 rows
  // checked, not assumed: toTensor() and a mistyped data pointer abort the process
  if (outs.empty() || !outs[0].isTensor() || outs[0].toTensor().scalar_type() != ScalarType::Float ||
      outs[0].toTensor().numel() != positions * hidden_)
    throw std::runtime_error(path_ + ": method '" + method_ + "' returned no float32 [1, " + std::to_string(positions) +
                             ", " + std::to_string(hidden_) + "] (the clip's " + std::to_string(c.soft_tokens) +
                             " soft tokens first)");
  const float* soft = outs[0].toTensor().const_data_ptr<float>();
  std::copy_n(soft, size_t(c.soft_tokens) * size_t(hidden_), out);
}

void AudioProgram::release() { module_.reset(); }

bool AudioProgram::mapped() const { return process_maps(path_); }

}  // namespace gemma_edge
