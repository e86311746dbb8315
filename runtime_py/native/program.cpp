#include "program.h"

#include <executorch/extension/module/module.h>
#include <executorch/extension/tensor/tensor.h>
#include <executorch/runtime/backend/backend_options_map.h>
#include <executorch/runtime/backend/interface.h>
#include <executorch/runtime/backend/options.h>
#include <executorch/runtime/platform/runtime.h>
#include <fcntl.h>
#include <limits.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <future>

#include "errors.h"
#include "text_file.h"

// The thread pool's header is not in the wheel; these two members are exported by libexecutorch_threadpool.
namespace executorch::extension::threadpool {
class ThreadPool {
 public:
  size_t get_thread_count() const;
  bool _unsafe_reset_threadpool(uint32_t num_threads);
};
ThreadPool* get_threadpool();
}  // namespace executorch::extension::threadpool

namespace gemma_edge {

using executorch::aten::ScalarType;
using executorch::extension::from_blob;
using executorch::extension::module::Module;
using executorch::runtime::EValue;

namespace {

// ------------------------------------------------------------------------------------------------------
// XNNPACK's weight cache, checked before it is mapped.
//
// XNNPACK (ExecuTorch 1.5.1's `packed_cache_path`) maps a cache file it finds and uses its packed weights
// as they are: its own trailer bounds the entries but holds no checksum, so a flipped byte in a weight
// changes every later answer. The cache is named after the program's SHA-256 (a re-exported program never
// meets an old program's cache), and a sidecar `<cache>.sha256` holds the cache's own SHA-256 and size,
// written after XNNPACK wrote the cache (temporary name, fsync, rename). A cache whose sidecar is missing
// or does not match is discarded with a warning and packed again: it is derived data, rebuilt from the
// program just verified, at the cost of one packing load; refusing would leave an app that cannot run
// until someone finds and deletes a file it never named.
struct CacheFiles {
  std::string path, sidecar;
  bool existed = false;
  struct stat verified{};  // its state when checked: a load that rewrote it gets a new sidecar
};

std::string sidecar_line(const std::string& sha, int64_t bytes) { return sha + " " + std::to_string(bytes) + "\n"; }

// What an existing cache's check found: "" when it matched, else why it is discarded.
std::string check_weight_cache(CacheFiles& c) {
  int64_t bytes = regular_file_size("--weight-cache-dir: cache", c.path);
  if (bytes < 0) return "";
  int64_t side_bytes = regular_file_size("--weight-cache-dir: cache checksum", c.sidecar);
  if (side_bytes < 0) return c.sidecar + " missing (the cache was not finished, or was written by another host)";
  std::string want = read_text_file("--weight-cache-dir", c.sidecar, 256);
  std::string found = sidecar_line(sha256_file(c.path, bytes), bytes);
  if (want != found)
    return "sha256 and size " + found.substr(0, found.size() - 1) + " differ from " + c.sidecar + "'s " +
           want.substr(0, std::min(want.find('\n'), size_t(90)));
  c.existed = true;
  stat(c.path.c_str(), &c.verified);
  return "";
}

void write_file_atomically(const std::string& path, const std::string& text) {
  const std::string tmp = path + ".tmp-" + std::to_string(getpid());
  int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  bool ok = fd >= 0 && ::write(fd, text.data(), text.size()) == ssize_t(text.size()) && fsync(fd) == 0;
  if (fd >= 0) ok &= ::close(fd) == 0;
  if (!ok || rename(tmp.c_str(), path.c_str()) != 0) {
    std::string err = std::strerror(errno);
    unlink(tmp.c_str());
    throw BadInput(path + ": write failed: " + err);
  }
  std::string dir = path.find('/') == std::string::npos ? "." : path.substr(0, std::max<size_t>(1, path.find_last_of('/')));
  if (int d = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC); d >= 0) {  // the rename itself durable
    fsync(d);
    ::close(d);
  }
}

// After the load: a cache XNNPACK wrote (or extended) gets its sidecar.
void seal_weight_cache(const CacheFiles& c) {
  struct stat now{};
  if (lstat(c.path.c_str(), &now) != 0 || !S_ISREG(now.st_mode)) return;  // XNNPACK packed in RAM instead
  if (c.existed && now.st_size == c.verified.st_size && now.st_mtim.tv_sec == c.verified.st_mtim.tv_sec &&
      now.st_mtim.tv_nsec == c.verified.st_mtim.tv_nsec)
    return;
  write_file_atomically(c.sidecar, sidecar_line(sha256_file(c.path, int64_t(now.st_size)), int64_t(now.st_size)));
}

}  // namespace

size_t Program::threads() const { return executorch::extension::threadpool::get_threadpool()->get_thread_count(); }

Program::~Program() = default;

Program::Program(const Manifest& manifest, const LoadOptions& options)
    : prefill_method_(manifest.prefill_method), decode_method_(manifest.decode_method),
      manifest_vocab_(manifest.vocab_size) {
  if (!cache_kernels_registered()) throw std::runtime_error("llama::update_cache kernels: registration failed");
  const BundleFile& pte = manifest.file("program");
  const BundleFile& plef = manifest.file("ple");
  if (options.threads > 0)
    executorch::extension::threadpool::get_threadpool()->_unsafe_reset_threadpool(uint32_t(options.threads));
  char real[PATH_MAX];
  if (!realpath(pte.path.c_str(), real)) throw BadInput(pte.path + ": " + std::strerror(errno));
  program_ = real;
  sha256_ = pte.sha256;
  executorch::runtime::runtime_init();
  auto t0 = std::chrono::steady_clock::now();

  // The program must be the manifest's, byte for byte, before ExecuTorch parses any of it.
  const int64_t program_bytes = regular_file_size("program", program_);
  if (program_bytes != pte.bytes)
    throw BadInput(program_ + ": bytes: expected " + std::to_string(pte.bytes) + " (the manifest's), found " +
                   std::to_string(program_bytes));
  CacheFiles cache;
  if (!options.weight_cache_dir.empty()) {
    const std::string base = program_.substr(program_.find_last_of('/') + 1);
    // named after the digest checked below: the program is refused unless its real digest is this one
    cache.path = options.weight_cache_dir + "/" + base + "." + sha256_.substr(0, 16) + ".xnnpack_cache";
    cache.sidecar = cache.path + ".sha256";
  }
  // the program's digest and the cache's are independent reads: hashed side by side
  auto program_digest = std::async(std::launch::async, sha256_file, program_, program_bytes);
  std::string cache_problem;
  try {
    if (!cache.path.empty()) cache_problem = check_weight_cache(cache);
  } catch (...) {
    program_digest.wait();
    throw;
  }
  if (const std::string found = program_digest.get(); found != sha256_)
    throw BadInput(program_ + ": sha256: expected " + sha256_ + " (the manifest's), found " + found);
  if (!cache_problem.empty()) {
    std::fprintf(stderr, "gemma-edge-run: warning: weight cache %s: %s; discarded, packing it again\n",
                 cache.path.c_str(), cache_problem.c_str());
    unlink(cache.sidecar.c_str());
    if (unlink(cache.path.c_str()) != 0)
      throw BadInput("--weight-cache-dir: " + cache.path + ": cannot discard it: " + std::strerror(errno));
  } else if (!cache.path.empty() && !cache.existed) {
    unlink(cache.sidecar.c_str());  // a sidecar without its cache describes nothing
  }
  verify_s_ = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  cache_ = {cache.path, cache.existed, cache_problem};

  ple_ = std::make_unique<PleFile>(plef.path, plef.identity);
  // Mapped, never mlocked (as an Android app loads it). share_memory_arenas: a two-method program's prefill
  // and decode share their KV-cache buffers (planned into one arena); without it each gets its own copy.
  module_ = std::make_unique<Module>(program_, Module::LoadMode::Mmap, nullptr, nullptr, nullptr,
                                     /*share_memory_arenas=*/true);
  // Internal consistency: the flatbuffer's offsets and sizes are checked before any are followed (the
  // default checks only the header), so a program the digest let through cannot make the parser read wild.
  if (auto e = module_->load(executorch::runtime::Program::Verification::InternalConsistency);
      e != executorch::runtime::Error::Ok)
    throw BadInput(program_ + ": not a program this runtime can run (ExecuTorch error " + std::to_string(int(e)) +
                   " while verifying it)");
  int arity = 0;  // inputs the methods take
  for (const auto& m : {prefill_method_, decode_method_}) {
    // the weight cache: XNNPACK's packed weights in a file (as LiteRT-LM keeps its `.xnnpack_cache`). The
    // first load packs into it; later loads map it instead of packing: no source weights held beside packed
    // ones, no packing time, and the packed pages are clean file pages the kernel can page out.
    executorch::runtime::BackendOptions<3> xopts;
    executorch::runtime::LoadBackendOptionsMap load_opts;
    if (!cache.path.empty()) {
      xopts.set_option("weight_cache_enabled", true);
      xopts.set_option("save_weight_cache_on_disk", true);
      xopts.set_option("packed_cache_path", cache.path.c_str());
      if (load_opts.set_options("XnnpackBackend", xopts.view()) != executorch::runtime::Error::Ok)
        throw BadInput("--weight-cache-dir: the XNNPACK backend options could not be set");
    }
    if (module_->load_method(m, nullptr, nullptr, cache.path.empty() ? nullptr : &load_opts) !=
        executorch::runtime::Error::Ok)
      throw BadInput(program_ + ": cannot load method '" + m + "' (missing, or not a program this runtime runs)");
    auto meta = module_->method_meta(m);
    if (!meta.ok() || meta->num_inputs() < 3 || meta->num_inputs() > 5)
      throw BadInput(program_ + ": method '" + m + "': expected 5 inputs (tokens, input_pos, ple_rows, attend_len, "
                     "soft_embeds), or 4 / 3 (a revision < 6 / < 5 program), found " +
                     (meta.ok() ? std::to_string(meta->num_inputs()) : "none"));
    if (arity != 0 && size_t(arity) != meta->num_inputs())
      throw BadInput(program_ + ": methods '" + prefill_method_ + "' and '" + decode_method_ + "' take different inputs");
    arity = int(meta->num_inputs());
    auto rows_meta = meta->input_tensor_meta(2);
    if (!rows_meta.ok()) throw BadInput(program_ + ": method '" + m + "' input 2 (ple_rows): not a tensor");
    auto sizes = rows_meta->sizes();
    if (sizes.size() != 4 || sizes[2] != int32_t(ple_->num_layers()) || sizes[3] != int32_t(ple_->ple_dim()))
      throw BadInput(program_ + ": method '" + m + "' input ple_rows: expected [1, T, " +
                     std::to_string(ple_->num_layers()) + ", " + std::to_string(ple_->ple_dim()) + "] as " +
                     ple_->path() + " holds, found another shape");
    if (meta->num_outputs() != 1)
      throw BadInput(program_ + ": method '" + m + "': expected one output (logits), found " +
                     std::to_string(meta->num_outputs()));
    auto out_meta = meta->output_tensor_meta(0);
    if (!out_meta.ok() || out_meta->sizes().size() != 2 || out_meta->sizes()[0] != 1 || out_meta->sizes()[1] < 1 ||
        out_meta->scalar_type() != ScalarType::Float)
      throw BadInput(program_ + ": method '" + m + "': expected one output, float32 logits [1, V]");
    if (vocab_ != 0 && vocab_ != out_meta->sizes()[1])
      throw BadInput(program_ + ": methods '" + prefill_method_ + "' and '" + decode_method_ +
                     "' return logits of different widths");
    vocab_ = out_meta->sizes()[1];  // the program's own vocabulary: the width of its logits [1, V]
    if (meta->num_inputs() == 5) {
      auto soft = meta->input_tensor_meta(4);
      if (!soft.ok() || soft->sizes().size() != 3 || soft->sizes()[2] < 1 || soft->scalar_type() != ScalarType::Float)
        throw BadInput(program_ + ": method '" + m + "' input 4 (soft_embeds): expected float32 [1, T, H]");
      soft_width_ = soft->sizes()[2];
    }
  }
  attend_len_ = arity >= 4;
  // the images' soft tokens go into soft_embeds as they are: as wide as the vision entry says they are
  if (manifest.vision && soft_width_ != manifest.vision->hidden_size)
    throw BadInput(program_ + ": soft_embeds: expected [1, T, " + std::to_string(manifest.vision->hidden_size) +
                   "] (" + manifest.where + " vision.hidden_size), found " +
                   (soft_width_ ? "[1, T, " + std::to_string(soft_width_) + "]" : std::string("no such input")));
  if (!cache.path.empty()) seal_weight_cache(cache);
}

void Program::check_prompt(const std::vector<int64_t>& ids) const {
  // No id outside every vocabulary reaches the program: its embedding lookup does not bound them.
  for (size_t i = 0; i < ids.size(); ++i) {
    for (auto [name, v] : {std::pair<std::string, int64_t>{program_ + " logits [1, V]", vocab_},
                           {ple_->path() + " vocab_size", int64_t(ple_->vocab_size())},
                           {"the manifest's vocab_size", manifest_vocab_}}) {
      if (ids[i] < 0 || (v > 0 && ids[i] >= v))
        throw LoopError("prompt", "prompt id " + std::to_string(ids[i]) + " at position " + std::to_string(i) +
                                      ": expected 0 ≤ id < vocab_size " + std::to_string(v) + " (" + name + ")");
    }
  }
}

// One call of `method` on tokens [T] from position `start`, with their PLE rows; the logits [V] (valid until
// the next call: the output tensor's own storage, not a copy).
const float* Program::step(const std::string& method, const int64_t* tokens, size_t T, int64_t start,
                           const float* r, const float* soft_rows) {
  if (soft_rows && soft_width_ == 0)
    throw BadInput(program_ + ": method '" + method + "' takes no soft_embeds (a revision < 6 program): it cannot "
                   "read images");
  pos_.resize(T);
  for (size_t i = 0; i < T; ++i) pos_[i] = start + int64_t(i);
  const auto L = int32_t(ple_->num_layers()), P = int32_t(ple_->ple_dim());
  auto tok = from_blob(const_cast<int64_t*>(tokens), {1, int32_t(T)}, ScalarType::Long);
  auto ps = from_blob(pos_.data(), {int32_t(T)}, ScalarType::Long);
  auto pr = from_blob(const_cast<float*>(r), {1, int32_t(T), L, P}, ScalarType::Float);
  std::vector<EValue> inputs{*tok, *ps, *pr};
  const auto n = int32_t(start + int64_t(T));
  if (attend_len_ && attend_.size() < size_t(n)) attend_.resize(size_t(n));
  auto al = attend_len_ ? from_blob(attend_.data(), {n}, ScalarType::Long) : nullptr;
  if (al) inputs.push_back(*al);
  if (soft_width_ > 0 && soft_.size() < T * size_t(soft_width_)) soft_.resize(T * size_t(soft_width_), 0.0f);
  // the images' rows when the chunk has any (the loop's [T, H] slice, H checked against the vision entry when
  // the bundle was opened), else the zeros of a text step
  float* soft_data = soft_rows ? const_cast<float*>(soft_rows) : soft_.data();
  auto soft = soft_width_ > 0 ? from_blob(soft_data, {1, int32_t(T), int32_t(soft_width_)}, ScalarType::Float)
                              : nullptr;
  if (soft) inputs.push_back(*soft);
  auto out = module_->execute(method, inputs);
  if (!out.ok())
    throw std::runtime_error(program_ + ": method '" + method + "' failed with ExecuTorch error " +
                             std::to_string(int(out.error())) + " at position " + std::to_string(start));
  // checked, not assumed: toTensor() and a mistyped data pointer abort the process
  if (out.get().empty() || !out.get()[0].isTensor() || out.get()[0].toTensor().scalar_type() != ScalarType::Float ||
      out.get()[0].toTensor().numel() != vocab_)
    throw std::runtime_error(program_ + ": method '" + method + "' returned no float32 logits [1, " +
                             std::to_string(vocab_) + "] at position " + std::to_string(start));
  return out.get()[0].toTensor().const_data_ptr<float>();
}

}  // namespace gemma_edge
