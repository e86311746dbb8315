// A bundle's program and PLE file, verified and loaded, as a Step of the generation loop: what an app on a
// phone runs. ExecuTorch's C++ Module runs the program (mmapped, as an Android app loads it: no mlock).
//
// Nothing of a program runs before its size and SHA-256 equal the manifest's, and it is loaded with
// ExecuTorch's internal-consistency verification; the .ple's header and identity are checked on open.
// Optionally XNNPACK's packed weights live in a cache file (see WeightCache in program.cpp), named after
// the verified digest and checked against its sidecar checksum before it is mapped.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "loop.h"
#include "manifest.h"
#include "ple_file.h"

namespace executorch::extension::module {
class Module;
}

namespace gemma_edge {

struct LoadOptions {
  std::string weight_cache_dir;  // "" : pack the weights in RAM at every load
  int threads = 0;               // ExecuTorch's thread pool size (0: its default)
};

struct WeightCacheState {
  std::string path;
  bool existed = false;     // a cache whose sidecar matched was there before the load
  std::string discarded;    // why an existing cache was discarded ("" : it was not)
};

class Program : public Step {
 public:
  // Verifies and loads `manifest`'s program and PLE file; BadInput names what does not match.
  Program(const Manifest& manifest, const LoadOptions& options);
  ~Program() override;

  size_t row_values() const override { return ple_->row_values(); }
  size_t vocab_size() const override { return size_t(vocab_); }
  void check_prompt(const std::vector<int64_t>& ids) const override;
  FetchStats fetch(const int64_t* ids, size_t n, float* rows) override { return ple_->fetch(ids, n, rows); }
  const float* prefill(const int64_t* tokens, size_t n, int64_t start, const float* rows,
                       const float* soft) override {
    return step(prefill_method_, tokens, n, start, rows, soft);
  }
  const float* decode(int64_t token, int64_t position, const float* row) override {
    return step(decode_method_, &token, 1, position, row, nullptr);
  }

  const std::string& program_path() const { return program_; }  // its real path (as /proc names its mapping)
  const std::string& program_sha256() const { return sha256_; }
  const WeightCacheState& weight_cache() const { return cache_; }
  double verify_s() const { return verify_s_; }  // size + digest checks (and the cache's)
  size_t threads() const;
  int64_t soft_width() const { return soft_width_; }  // H of its soft_embeds input; 0: it takes none (revision < 6)

 private:
  const float* step(const std::string& method, const int64_t* tokens, size_t n, int64_t start, const float* rows,
                    const float* soft);

  std::string program_, sha256_, prefill_method_, decode_method_;
  int64_t manifest_vocab_ = 0, vocab_ = 0;  // the manifest's, and V of the program's logits [1, V]
  std::unique_ptr<PleFile> ple_;
  std::unique_ptr<executorch::extension::module::Module> module_;
  bool attend_len_ = false;  // the program takes attend_len (revision >= 5)
  int64_t soft_width_ = 0;   // the program takes soft_embeds [1, T, soft_width_] (revision >= 6); 0: it does not
  std::vector<int64_t> pos_, attend_;  // inputs' storage; attend_len's length (last position + 1) is read
  std::vector<float> soft_;  // soft_embeds' storage: zeros, a text step's (no placeholder reads it)
  WeightCacheState cache_;
  double verify_s_ = 0;
};

// The ExecuTorch kernels the runner registers itself (cache_ops.cpp): true once registered. Program's
// constructor calls it, so a static link keeps them.
bool cache_kernels_registered();

}  // namespace gemma_edge
