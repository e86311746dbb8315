// A bundle's vision program (files.vision, described by the manifest's `vision` entry) as the loop's image
// encoder: one request's images, preprocessed at one budget (image.h), through the method of that budget.
//
// Nothing of the file is read until the loop asks for the first image: then its size and SHA-256 must equal the
// manifest's before ExecuTorch parses it, it is loaded with internal-consistency verification, and the method's
// signature is checked against the budget and the entry's widths. release() — the loop calls it after the last
// image — unloads it, so a text prompt never maps the tower and an image prompt holds it only while encoding.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "image.h"
#include "loop.h"
#include "manifest.h"

namespace executorch::extension::module {
class Module;
}

namespace gemma_edge {

class VisionProgram : public ImageEncoder {
 public:
  // `images`, each preprocessed at `budget`, outlive this. LoopError "images" when the manifest has no vision
  // program, "image_budget" when `budget` is not one of its budgets; BadInput when its patch width is not the
  // preprocessor's.
  VisionProgram(const Manifest& manifest, int budget, const std::vector<PreparedImage>& images);
  ~VisionProgram() override;

  size_t width() const override { return size_t(hidden_); }
  // Image k's soft tokens [n_k, H]: the rows the method marks valid, which must be the first n_k, n_k the
  // preprocessor's count.
  void encode(size_t k, float* out) override;
  void release() override;

  const std::string& path() const { return path_; }
  const std::string& method() const { return method_; }
  bool loaded() const { return module_ != nullptr; }
  bool mapped() const;  // whether this process still maps the file (/proc/self/maps): false once released
  int loads() const { return loads_; }
  double verify_s() const { return verify_s_; }  // the last load's size + digest checks
  double load_s() const { return load_s_; }      // the last load, verification included

 private:
  void load();

  std::string path_, sha256_, method_;
  int64_t bytes_ = 0;
  int budget_ = 0, hidden_ = 0;
  const std::vector<PreparedImage>& images_;
  std::unique_ptr<executorch::extension::module::Module> module_;
  int loads_ = 0;
  double verify_s_ = 0, load_s_ = 0;
};

// The manifest's budgets as "[70, 280]", for messages.
std::string budget_list(const VisionEntry& vision);

}  // namespace gemma_edge
