// A bundle's audio program (files.audio, described by the manifest's `audio` entry) as the loop's audio encoder:
// one request's clips (audio.h), each through the program's one method, dynamic in the clip length.
//
// As VisionProgram: nothing of the file is read until the loop asks for the first clip; then its size and SHA-256
// must equal the manifest's before ExecuTorch parses it, it is loaded with internal-consistency verification and
// its method's signature checked; release() — the loop calls it after the last clip — unloads it, so a text prompt
// never maps the tower and an audio prompt holds it only while encoding.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "audio.h"
#include "loop.h"
#include "manifest.h"

namespace executorch::extension::module {
class Module;
}

namespace gemma_edge {

class AudioProgram : public AudioEncoder {
 public:
  // `clips` (all items' clips, in prompt order) outlive this. LoopError "audio" when the manifest has no audio
  // program.
  AudioProgram(const Manifest& manifest, const std::vector<AudioClip>& clips);
  ~AudioProgram() override;

  size_t width() const override { return size_t(hidden_); }
  // Clip k's soft tokens [n_k, H]: the first n_k of the method's 12 · m outputs (m = the clip's attention blocks).
  void encode(size_t k, float* out) override;
  void release() override;

  const std::string& path() const { return path_; }
  const std::string& method() const { return method_; }
  bool loaded() const { return module_ != nullptr; }
  bool mapped() const;  // whether this process still maps the file (/proc/self/maps): false once released
  int loads() const { return loads_; }
  double load_s() const { return load_s_; }  // the last load, size + digest checks included

 private:
  void load();

  std::string path_, sha256_, method_;
  int64_t bytes_ = 0;
  int hidden_ = 0, max_tokens_ = 0;
  const std::vector<AudioClip>& clips_;
  std::unique_ptr<executorch::extension::module::Module> module_;
  int loads_ = 0;
  double load_s_ = 0;
};

}  // namespace gemma_edge
