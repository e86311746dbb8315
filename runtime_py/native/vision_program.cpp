#include "vision_program.h"

#include <executorch/extension/module/module.h>
#include <executorch/extension/tensor/tensor.h>

#include <algorithm>
#include <chrono>

#include "errors.h"
#include "tower_program.h"

namespace gemma_edge {

using executorch::aten::ScalarType;
using executorch::extension::from_blob;
using executorch::extension::module::Module;
using executorch::runtime::EValue;

namespace {
using Clock = std::chrono::steady_clock;
double seconds_since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }
}  // namespace

std::string budget_list(const VisionEntry& vision) {
  std::string s = "[";
  for (size_t i = 0; i < vision.budgets.size(); ++i) s += (i ? ", " : "") + std::to_string(vision.budgets[i]);
  return s + "]";
}

VisionProgram::~VisionProgram() = default;

VisionProgram::VisionProgram(const Manifest& m, int budget, const std::vector<PreparedImage>& images)
    : budget_(budget), images_(images) {
  if (!m.vision)
    throw LoopError("images", "images: " + m.dir + " has no vision tower (export a checkpoint with one, "
                              "without --no-vision)");
  const VisionEntry& v = *m.vision;
  if (!v.methods.count(budget))
    throw LoopError("image_budget", "image_budget: expected one of " + budget_list(v) + " (the budgets of " + m.dir +
                                        "'s vision program, manifest vision.budgets), found " + std::to_string(budget));
  if (v.patch_dim != kImagePatchDim)
    throw BadInput(m.where + ": vision.patch_dim: expected " + std::to_string(kImagePatchDim) +
                   " (16 × 16 × 3 values per patch, what the preprocessor gives), found " + std::to_string(v.patch_dim));
  const BundleFile& f = m.file("vision");
  path_ = f.path;
  sha256_ = f.sha256;
  bytes_ = f.bytes;
  method_ = v.methods.at(budget);
  hidden_ = v.hidden_size;
}

void VisionProgram::load() {
  auto t0 = Clock::now();
  auto module = load_tower_program(path_, bytes_, sha256_, "vision", method_,
                                   "vision.methods." + std::to_string(budget_), &verify_s_);
  // the signature of contract/bundle_format's vision entry: (pixel_values f32 [1, 9·b, 768], pixel_position_ids
  // i64 [1, 9·b, 2]) -> (soft f32 [1, b, H], valid bool [1, b])
  auto meta = module->method_meta(method_);
  const std::string where = path_ + ": method '" + method_ + "'";
  if (!meta.ok() || meta->num_inputs() != 2 || meta->num_outputs() != 2)
    throw BadInput(where + ": expected 2 inputs (pixel_values, pixel_position_ids) and 2 outputs (soft tokens, "
                   "valid), found " + (meta.ok() ? std::to_string(meta->num_inputs()) + " and " +
                                                       std::to_string(meta->num_outputs()) : std::string("none")));
  const int32_t patches = 9 * budget_, b = budget_, H = hidden_;
  struct Want {
    bool input;
    size_t index;
    const char* name;
    ScalarType type;
    std::vector<int32_t> sizes;
    const char* text;
  };
  for (const Want& w : {Want{true, 0, "pixel_values", ScalarType::Float, {1, patches, kImagePatchDim}, "float32"},
                        Want{true, 1, "pixel_position_ids", ScalarType::Long, {1, patches, 2}, "int64"},
                        Want{false, 0, "soft tokens", ScalarType::Float, {1, b, H}, "float32"},
                        Want{false, 1, "valid", ScalarType::Bool, {1, b}, "bool"}}) {
    auto t = w.input ? meta->input_tensor_meta(w.index) : meta->output_tensor_meta(w.index);
    const bool ok = t.ok() && t->scalar_type() == w.type &&
                    std::equal(t->sizes().begin(), t->sizes().end(), w.sizes.begin(), w.sizes.end());
    if (!ok) {
      std::string want = "[";
      for (size_t i = 0; i < w.sizes.size(); ++i) want += (i ? ", " : "") + std::to_string(w.sizes[i]);
      throw BadInput(where + (w.input ? " input " : " output ") + std::to_string(w.index) + " (" + w.name +
                     "): expected " + w.text + " " + want + "] (budget " + std::to_string(budget_) +
                     ", vision.hidden_size " + std::to_string(hidden_) + "), found " +
                     (t.ok() ? shape_text(t->sizes()) : std::string("no tensor")));
    }
  }
  module_ = std::move(module);
  ++loads_;
  load_s_ = seconds_since(t0);
}

void VisionProgram::encode(size_t k, float* out) {
  const PreparedImage& im = images_.at(k);
  if (im.budget != budget_)
    throw std::logic_error("VisionProgram: image " + std::to_string(k) + " preprocessed at budget " +
                           std::to_string(im.budget) + ", the program encodes at " + std::to_string(budget_));
  if (!module_) load();
  const int32_t patches = 9 * budget_;
  auto pv = from_blob(const_cast<float*>(im.pixel_values.data()), {1, patches, kImagePatchDim}, ScalarType::Float);
  auto pos = from_blob(const_cast<int64_t*>(im.positions.data()), {1, patches, 2}, ScalarType::Long);
  auto res = module_->execute(method_, std::vector<EValue>{*pv, *pos});
  if (!res.ok())
    throw std::runtime_error(path_ + ": method '" + method_ + "' failed with ExecuTorch error " +
                             std::to_string(int(res.error())) + " on image " + std::to_string(k));
  const auto& outs = res.get();
  // checked, not assumed: toTensor() and a mistyped data pointer abort the process
  if (outs.size() != 2 || !outs[0].isTensor() || !outs[1].isTensor() ||
      outs[0].toTensor().scalar_type() != ScalarType::Float || outs[1].toTensor().scalar_type() != ScalarType::Bool ||
      outs[0].toTensor().numel() != int64_t(budget_) * hidden_ || outs[1].toTensor().numel() != budget_)
    throw std::runtime_error(path_ + ": method '" + method_ + "' returned no (float32 [1, " + std::to_string(budget_) +
                             ", " + std::to_string(hidden_) + "], bool [1, " + std::to_string(budget_) + "])");
  const float* soft = outs[0].toTensor().const_data_ptr<float>();
  const bool* valid = outs[1].toTensor().const_data_ptr<bool>();
  // The tower pools to the preprocessor's grid, its soft tokens first and padding after: a mask that is not
  // that is a program of another preprocessing, whose rows would be spliced at the wrong placeholders.
  const int n_valid = int(std::count(valid, valid + budget_, true));
  if (n_valid != im.soft_tokens || !std::all_of(valid, valid + im.soft_tokens, [](bool v) { return v; }))
    throw std::runtime_error(path_ + ": method '" + method_ + "' marks " + std::to_string(n_valid) +
                             " soft tokens valid for image " + std::to_string(k) + " (" + std::to_string(im.height) +
                             "×" + std::to_string(im.width) + " after resizing), expected the first " +
                             std::to_string(im.soft_tokens) + " (the preprocessor's)");
  std::copy_n(soft, size_t(im.soft_tokens) * hidden_, out);
}

void VisionProgram::release() { module_.reset(); }

bool VisionProgram::mapped() const { return process_maps(path_); }

}  // namespace gemma_edge
