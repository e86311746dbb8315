// gemma-edge-run: a bundle's program and PLE file run by a native host — no Python, no libtorch.
//
// What an app on a phone does with an export bundle, on this machine: ExecuTorch's C++ Module runs the
// program (mmapped, as an Android app loads it: no mlock), the PLE rows of a whole prompt come from the
// .ple file in one batched fetch, then one row per generated token. Greedy; the manifest is read by the
// caller (gemma_edge.runtime.native, or an app), which passes what it says as flags:
//
//   gemma-edge-run --program B/model.pte --program-sha256 HEX --program-bytes N --ple B/model.ple
//       --ple-identity HEX --prefill-method forward --decode-method forward --prefill-chunk 128
//       --max-context 1024 --ids-file IDS --new-tokens 128 [--vocab-size V] [--repeats 3] [--warmup 1]
//       [--threads 2] [--eos 1,106] [--logits-out FILE] [--weight-cache-dir DIR]
//   gemma-edge-run --ple B/model.ple --ids 2,818,... --rows-out FILE     (the fetch alone: no program)
//
// The prompt's ids come from --ids-file (decimal ids separated by commas, '-' for stdin: no argv length
// limit) or, for short ones, from --ids. Nothing of a program runs before its size and SHA-256 equal the
// manifest's, and it is loaded with ExecuTorch's internal-consistency verification; prompt ids are bounded
// by the program's own logits width, the .ple's vocabulary and --vocab-size.
//
// Prints one JSON object on stdout: load time, each timed run (TTFT, prefill / decode tok/s, tokens, the
// prompt's fetch), and this process's memory before loading (the host) and at the end (VmHWM, RssAnon,
// RssFile). --logits-out writes the first run's logits of every step (float32 [steps, V], little-endian);
// --rows-out (fetch only) the prompt's PLE rows (float32 [T, L, P]) and prints the fetch's I/O accounting.
// A bad argument or file exits with status 2 and one line naming it.
#include <executorch/extension/module/module.h>
#include <executorch/extension/tensor/tensor.h>
#include <executorch/runtime/backend/backend_options_map.h>
#include <executorch/runtime/backend/interface.h>
#include <executorch/runtime/backend/options.h>
#include <executorch/runtime/platform/runtime.h>
#include <fcntl.h>
#include <openssl/evp.h>
#include <limits.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <future>
#include <map>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "ple_file.h"

// The thread pool's header is not in the wheel; these two members are exported by libexecutorch_threadpool.
namespace executorch::extension::threadpool {
class ThreadPool {
 public:
  size_t get_thread_count() const;
  bool _unsafe_reset_threadpool(uint32_t num_threads);
};
ThreadPool* get_threadpool();
}  // namespace executorch::extension::threadpool

namespace {

using executorch::aten::ScalarType;
using executorch::extension::from_blob;
using executorch::extension::module::Module;
using executorch::runtime::EValue;
using Clock = std::chrono::steady_clock;

struct UsageError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

double seconds_since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

// Comma-separated decimal integers (surrounding whitespace and one trailing newline allowed); each one
// non-negative and below 2^63. `source` names the flag or file in the message.
std::vector<int64_t> parse_ids(const std::string& source, const std::string& s) {
  std::vector<int64_t> out;
  size_t end_of_text = s.find_last_not_of(" \t\r\n");
  std::stringstream in(end_of_text == std::string::npos ? "" : s.substr(0, end_of_text + 1));
  std::string item;
  while (std::getline(in, item, ',')) {
    size_t a = item.find_first_not_of(" \t\r\n"), b = item.find_last_not_of(" \t\r\n");
    std::string digits = a == std::string::npos ? "" : item.substr(a, b - a + 1);
    const std::string where = source + ": id " + std::to_string(out.size());
    if (digits.empty() || digits.find_first_not_of("0123456789") != std::string::npos)
      throw UsageError(where + ": expected comma-separated integers, found '" + item.substr(0, 40) + "'");
    errno = 0;
    long long v = std::strtoll(digits.c_str(), nullptr, 10);
    if (errno == ERANGE)
      throw UsageError(where + ": expected an id below 2^63, found '" + digits.substr(0, 40) + "'");
    out.push_back(v);
  }
  return out;
}

// The whole of a small regular file (or stdin for "-"), at most `limit` bytes; a FIFO or device is refused
// without blocking on it.
std::string read_small_file(const std::string& flag, const std::string& path, size_t limit) {
  int fd = path == "-" ? STDIN_FILENO : ::open(path.c_str(), O_RDONLY | O_NONBLOCK | O_CLOEXEC);
  if (fd < 0) throw UsageError(flag + " " + path + ": " + std::strerror(errno));
  struct stat st{};
  if (path != "-" && (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode))) {
    ::close(fd);
    throw UsageError(flag + " " + path + ": expected a regular file");
  }
  std::string text;
  char buf[65536];
  for (;;) {
    ssize_t n = ::read(fd, buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    text.append(buf, size_t(n));
    if (text.size() > limit) {
      if (fd != STDIN_FILENO) ::close(fd);
      throw UsageError(flag + " " + path + ": more than " + std::to_string(limit) +
                       " bytes, not a prompt");
    }
  }
  if (fd != STDIN_FILENO) ::close(fd);
  return text;
}

int64_t parse_int64(const std::string& flag, const std::string& s) {
  errno = 0;
  char* end = nullptr;
  long long v = std::strtoll(s.c_str(), &end, 10);
  if (s.empty() || *end || errno == ERANGE || v < 0)
    throw UsageError(flag + ": expected a non-negative integer, found '" + s + "'");
  return v;
}

// SHA-256 of a regular file through OpenSSL's EVP interface, as lowercase hex; `size` must be its length.
std::string sha256_file(const std::string& path, int64_t size) {
  int fd = ::open(path.c_str(), O_RDONLY | O_NONBLOCK | O_CLOEXEC);
  if (fd < 0) throw UsageError(path + ": " + std::strerror(errno));
  std::unique_ptr<EVP_MD_CTX, decltype(&EVP_MD_CTX_free)> ctx(EVP_MD_CTX_new(), EVP_MD_CTX_free);
  if (!ctx || EVP_DigestInit_ex(ctx.get(), EVP_sha256(), nullptr) != 1) {
    ::close(fd);
    throw std::runtime_error("OpenSSL: SHA-256 unavailable");
  }
  posix_fadvise(fd, 0, 0, POSIX_FADV_SEQUENTIAL);
  std::vector<unsigned char> buf(1 << 20);
  int64_t total = 0;
  for (;;) {
    ssize_t n = ::read(fd, buf.data(), buf.size());
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      std::string err = std::strerror(errno);
      ::close(fd);
      throw UsageError(path + ": read failed: " + err);
    }
    if (n == 0) break;
    EVP_DigestUpdate(ctx.get(), buf.data(), size_t(n));
    total += n;
  }
  ::close(fd);
  if (total != size) throw UsageError(path + ": changed while it was read (" + std::to_string(total) + " bytes, " +
                                      std::to_string(size) + " before)");
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  EVP_DigestFinal_ex(ctx.get(), md, &len);
  static const char* hex = "0123456789abcdef";
  std::string out;
  for (unsigned i = 0; i < len; ++i) out += {hex[md[i] >> 4], hex[md[i] & 15]};
  return out;
}

// The size of `path` if it is a regular file (not followed through a link); -1 if it does not exist.
// Anything else under that name is refused: opening a FIFO would block, and XNNPACK truncates its cache
// file in place, so a link would let it truncate whatever the link names.
int64_t regular_file_size(const std::string& what, const std::string& path) {
  struct stat st{};
  if (lstat(path.c_str(), &st) != 0) {
    if (errno == ENOENT) return -1;
    throw UsageError(what + " " + path + ": " + std::strerror(errno));
  }
  if (!S_ISREG(st.st_mode)) throw UsageError(what + " " + path + ": expected a regular file (not a link, FIFO or folder)");
  return int64_t(st.st_size);
}

int parse_int(const std::string& flag, const std::string& s, int lo) {
  char* end = nullptr;
  long v = std::strtol(s.c_str(), &end, 10);
  if (s.empty() || *end || v < lo || v > INT_MAX)
    throw UsageError(flag + ": expected an integer ≥ " + std::to_string(lo) + ", found '" + s + "'");
  return int(v);
}

struct Args {
  std::string program, ple, identity, prefill_method = "forward", decode_method = "forward", logits_out, rows_out;
  std::string program_sha256, weight_cache_dir;
  int64_t program_bytes = 0, vocab_size = 0;  // vocab_size 0: not given
  std::vector<int64_t> ids, eos;
  int new_tokens = 32, repeats = 1, warmup = 0, threads = 0, prefill_chunk = 0, max_context = 0;
};

Args parse(int argc, char** argv) {
  Args a;
  std::map<std::string, std::string> kv;
  for (int i = 1; i < argc; i += 2) {
    std::string k = argv[i];
    if (k.rfind("--", 0) != 0 || i + 1 >= argc) throw UsageError("expected --flag VALUE pairs, found '" + k + "'");
    kv[k] = argv[i + 1];
  }
  auto take = [&](const char* k, bool required) -> std::string {
    auto it = kv.find(k);
    if (it == kv.end()) {
      if (required) throw UsageError(std::string(k) + ": required");
      return "";
    }
    std::string v = it->second;
    kv.erase(it);
    return v;
  };
  a.rows_out = take("--rows-out", false);
  a.ple = take("--ple", true);
  a.identity = take("--ple-identity", false);
  if (a.rows_out.empty()) a.max_context = parse_int("--max-context", take("--max-context", true), 1);
  const std::string ids = take("--ids", false), ids_file = take("--ids-file", false);
  if (ids.empty() == ids_file.empty()) throw UsageError("--ids or --ids-file: expected exactly one of them");
  // a bound on what is read, far above any context (the context check below names a prompt too long)
  const size_t limit = size_t(64) << 20;
  a.ids = ids.empty() ? parse_ids("--ids-file " + ids_file, read_small_file("--ids-file", ids_file, limit))
                      : parse_ids("--ids", ids);
  if (a.ids.empty()) throw UsageError(ids.empty() ? "--ids-file " + ids_file + ": expected at least one token"
                                                  : "--ids: expected at least one token");
  if (!a.rows_out.empty()) {  // the fetch alone
    if (!kv.empty()) throw UsageError(kv.begin()->first + ": not taken with --rows-out (a fetch, no program)");
    return a;
  }
  a.program = take("--program", true);
  a.program_sha256 = take("--program-sha256", true);
  if (a.program_sha256.size() != 64 || a.program_sha256.find_first_not_of("0123456789abcdef") != std::string::npos)
    throw UsageError("--program-sha256: expected 64 lowercase hex digits, found '" + a.program_sha256.substr(0, 80) + "'");
  a.program_bytes = parse_int64("--program-bytes", take("--program-bytes", true));
  if (std::string v = take("--vocab-size", false); !v.empty()) a.vocab_size = parse_int("--vocab-size", v, 1);
  a.prefill_chunk = parse_int("--prefill-chunk", take("--prefill-chunk", true), 1);
  for (auto [flag, dst, lo] : {std::tuple<const char*, int*, int>{"--new-tokens", &a.new_tokens, 1},
                               {"--repeats", &a.repeats, 1}, {"--warmup", &a.warmup, 0}, {"--threads", &a.threads, 0}}) {
    std::string v = take(flag, false);
    if (!v.empty()) *dst = parse_int(flag, v, lo);
  }
  if (std::string m = take("--prefill-method", false); !m.empty()) a.prefill_method = m;
  if (std::string m = take("--decode-method", false); !m.empty()) a.decode_method = m;
  if (std::string e = take("--eos", false); !e.empty()) a.eos = parse_ids("--eos", e);
  a.logits_out = take("--logits-out", false);
  a.weight_cache_dir = take("--weight-cache-dir", false);
  if (!kv.empty()) throw UsageError(kv.begin()->first + ": unknown flag");
  if (int64_t(a.ids.size()) + a.new_tokens > a.max_context)
    throw UsageError("context: prompt " + std::to_string(a.ids.size()) + " + new tokens " +
                     std::to_string(a.new_tokens) + ", expected ≤ --max-context " + std::to_string(a.max_context));
  return a;
}

// /proc/self/status fields in bytes: VmRSS, VmHWM, RssAnon, RssFile.
std::map<std::string, int64_t> proc_status() {
  std::map<std::string, int64_t> out;
  std::ifstream f("/proc/self/status");
  std::string line;
  while (std::getline(f, line)) {
    for (const char* k : {"VmRSS", "VmHWM", "RssAnon", "RssFile"}) {
      size_t n = std::strlen(k);
      if (line.compare(0, n, k) == 0 && line[n] == ':') out[k] = std::atoll(line.c_str() + n + 1) * 1024;
    }
  }
  return out;
}

// Resident bytes (smaps Rss) of this process's mappings of `path`.
int64_t mapping_resident_bytes(const std::string& path) {
  std::ifstream f("/proc/self/smaps");
  std::string line;
  bool ours = false;
  int64_t total = 0;
  while (std::getline(f, line)) {
    if (!line.empty() && std::isxdigit(static_cast<unsigned char>(line[0])) && line.find('-') < line.find(' ')) {
      ours = line.size() >= path.size() && line.compare(line.size() - path.size(), path.size(), path) == 0;
    } else if (ours && line.rfind("Rss:", 0) == 0) {
      total += std::atoll(line.c_str() + 4) * 1024;
    }
  }
  return total;
}

// After the methods are loaded, XNNPACK holds packed copies of every delegated weight: drop this process's
// resident pages of the program's read-only mappings (clean file pages; what is still used — the in-program
// token embedding, one row per token — faults back in, without readahead). runtime_py/phone.py does the same.
std::pair<int64_t, int64_t> release_file_mapping(const std::string& path) {
  int64_t before = mapping_resident_bytes(path);
  std::ifstream f("/proc/self/maps");
  std::string line;
  while (std::getline(f, line)) {
    std::istringstream in(line);
    std::string range, perms, offset, dev, inode, name;
    in >> range >> perms >> offset >> dev >> inode >> name;
    if (name != path || perms.find('w') != std::string::npos) continue;
    size_t dash = range.find('-');
    uintptr_t a = std::stoull(range.substr(0, dash), nullptr, 16), b = std::stoull(range.substr(dash + 1), nullptr, 16);
    munlock(reinterpret_cast<void*>(a), b - a);
    madvise(reinterpret_cast<void*>(a), b - a, MADV_RANDOM);
    madvise(reinterpret_cast<void*>(a), b - a, MADV_DONTNEED);
  }
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd >= 0) {
    posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);  // large page-cache folios would map back whole per fault
    ::close(fd);
  }
  return {before, mapping_resident_bytes(path)};
}

struct Runner {
  Module& module;
  gemma_edge::PleFile& ple;
  const Args& args;
  std::vector<float> rows;  // [T, L, P] for the step being run
  std::vector<int64_t> pos;
  bool attend_len;              // the program takes attend_len (revision >= 5)
  std::vector<int64_t> attend;  // attend_len's storage: only its length, last position + 1, is read
  int64_t vocab;                // V of the program's logits [1, V]

  // One call of `method` on tokens [T] from position `start`, with their PLE rows in `rows`; the logits.
  std::vector<float> step(const std::string& method, const int64_t* tokens, size_t T, int64_t start, const float* r) {
    pos.resize(T);
    for (size_t i = 0; i < T; ++i) pos[i] = start + int64_t(i);
    const auto L = int32_t(ple.num_layers()), P = int32_t(ple.ple_dim());
    auto tok = from_blob(const_cast<int64_t*>(tokens), {1, int32_t(T)}, ScalarType::Long);
    auto ps = from_blob(pos.data(), {int32_t(T)}, ScalarType::Long);
    auto pr = from_blob(const_cast<float*>(r), {1, int32_t(T), L, P}, ScalarType::Float);
    std::vector<EValue> inputs{*tok, *ps, *pr};
    const auto n = int32_t(start + int64_t(T));
    if (attend_len && attend.size() < size_t(n)) attend.resize(size_t(n));
    auto al = attend_len ? from_blob(attend.data(), {n}, ScalarType::Long) : nullptr;
    if (al) inputs.push_back(*al);
    auto out = module.execute(method, inputs);
    if (!out.ok())
      throw std::runtime_error(args.program + ": method '" + method + "' failed with ExecuTorch error " +
                               std::to_string(int(out.error())) + " at position " + std::to_string(start));
    // checked, not assumed: toTensor() and a mistyped data pointer abort the process
    if (out.get().empty() || !out.get()[0].isTensor() || out.get()[0].toTensor().scalar_type() != ScalarType::Float ||
        out.get()[0].toTensor().numel() != vocab)
      throw std::runtime_error(args.program + ": method '" + method + "' returned no float32 logits [1, " +
                               std::to_string(vocab) + "] at position " + std::to_string(start));
    const float* p = out.get()[0].toTensor().const_data_ptr<float>();
    return std::vector<float>(p, p + vocab);
  }

  static int64_t argmax(const std::vector<float>& v) {
    int64_t best = 0;
    for (size_t i = 0; i < v.size(); ++i) {
      if (std::isnan(v[i])) throw std::runtime_error("logits: NaN at index " + std::to_string(i));
      if (v[i] > v[size_t(best)]) best = int64_t(i);
    }
    return best;
  }

  // Prefill the prompt (one PLE fetch, chunks of prefill_chunk), then greedy decode until new_tokens exist.
  std::string generate(std::vector<std::vector<float>>* keep_logits) {
    const auto& ids = args.ids;
    const size_t rv = ple.row_values();
    auto t0 = Clock::now();
    rows.resize(ids.size() * rv);
    gemma_edge::FetchStats fetch = ple.fetch(ids.data(), ids.size(), rows.data());
    std::vector<float> logits;
    for (size_t s = 0; s < ids.size(); s += size_t(args.prefill_chunk)) {
      size_t n = std::min(ids.size() - s, size_t(args.prefill_chunk));
      logits = step(args.prefill_method, ids.data() + s, n, int64_t(s), rows.data() + s * rv);
    }
    double prefill_s = seconds_since(t0) - fetch.wall_s;
    std::vector<int64_t> tokens{argmax(logits)};
    if (keep_logits) keep_logits->push_back(logits);
    const double ttft = seconds_since(t0);
    auto t1 = Clock::now();
    std::vector<float> row(rv);
    int64_t p = int64_t(ids.size());
    auto is_eos = [&](int64_t t) { return std::find(args.eos.begin(), args.eos.end(), t) != args.eos.end(); };
    bool stopped = is_eos(tokens.back());  // the first token may end the answer too
    while (int(tokens.size()) < args.new_tokens && !stopped) {
      int64_t tok = tokens.back();
      ple.fetch(&tok, 1, row.data());
      logits = step(args.decode_method, &tok, 1, p++, row.data());
      tokens.push_back(argmax(logits));
      if (keep_logits) keep_logits->push_back(logits);
      stopped = is_eos(tokens.back());
    }
    double decode_s = seconds_since(t1);
    std::ostringstream o;
    o.precision(9);
    o << "{\"ttft_s\": " << ttft << ", \"fetch_s\": " << fetch.wall_s << ", \"prefill_s\": " << prefill_s
      << ", \"decode_s\": " << decode_s << ", \"prefill_tok_s\": " << double(ids.size()) / prefill_s
      << ", \"decode_tok_s\": " << (tokens.size() > 1 ? double(tokens.size() - 1) / decode_s : 0.0)
      << ", \"prompt_fetch\": {\"tokens\": " << fetch.tokens << ", \"unique_rows\": " << fetch.unique_rows
      << ", \"bytes_requested\": " << fetch.bytes_requested << ", \"pages_touched\": " << fetch.pages_touched
      << ", \"read_calls\": " << fetch.read_calls << "}, \"stop_reason\": \""
      << (stopped ? "eos" : "max_new_tokens") << "\", \"tokens\": [";
    for (size_t i = 0; i < tokens.size(); ++i) o << (i ? ", " : "") << tokens[i];
    o << "]}";
    return o.str();
  }
};

std::string json_memory(const std::map<std::string, int64_t>& m) {
  std::ostringstream o;
  o << "{";
  const char* sep = "";
  for (const auto& [k, v] : m) {
    o << sep << "\"" << k << "\": " << v;
    sep = ", ";
  }
  return o.str() + "}";
}

int fetch_only(const Args& args) {
  gemma_edge::PleFile ple(args.ple, args.identity);
  std::vector<float> rows(args.ids.size() * ple.row_values());
  gemma_edge::FetchStats st = ple.fetch(args.ids.data(), args.ids.size(), rows.data());
  std::ofstream out(args.rows_out, std::ios::binary);
  out.write(reinterpret_cast<const char*>(rows.data()), std::streamsize(4 * rows.size()));
  if (!out) throw UsageError("--rows-out " + args.rows_out + ": write failed");
  std::printf("{\"fetch\": {\"tokens\": %lld, \"unique_rows\": %lld, \"bytes_requested\": %lld, "
              "\"pages_touched\": %lld, \"read_calls\": %lld}, \"num_layers\": %u, \"ple_dim\": %u}\n",
              (long long)st.tokens, (long long)st.unique_rows, (long long)st.bytes_requested,
              (long long)st.pages_touched, (long long)st.read_calls, ple.num_layers(), ple.ple_dim());
  return 0;
}

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
struct WeightCache {
  std::string path, sidecar;
  bool existed = false;   // a cache whose sidecar matched was there before the load
  struct stat verified{};  // its state when checked: a load that rewrote it gets a new sidecar
};

std::string sidecar_line(const std::string& sha, int64_t bytes) { return sha + " " + std::to_string(bytes) + "\n"; }

// What an existing cache's check found: "" when it matched, else why it is discarded.
std::string check_weight_cache(WeightCache& c) {
  int64_t bytes = regular_file_size("--weight-cache-dir: cache", c.path);
  if (bytes < 0) return "";
  int64_t side_bytes = regular_file_size("--weight-cache-dir: cache checksum", c.sidecar);
  if (side_bytes < 0) return c.sidecar + " missing (the cache was not finished, or was written by another host)";
  std::string want = read_small_file("--weight-cache-dir", c.sidecar, 256);
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
    throw UsageError(path + ": write failed: " + err);
  }
  std::string dir = path.substr(0, path.find_last_of('/') == std::string::npos ? 1 : path.find_last_of('/'));
  if (path.find('/') == std::string::npos) dir = ".";
  if (int d = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC); d >= 0) {  // the rename itself durable
    fsync(d);
    ::close(d);
  }
}

// After the load: a cache XNNPACK wrote (or extended) gets its sidecar.
void seal_weight_cache(const WeightCache& c) {
  struct stat now{};
  if (lstat(c.path.c_str(), &now) != 0 || !S_ISREG(now.st_mode)) return;  // XNNPACK packed in RAM instead
  if (c.existed && now.st_size == c.verified.st_size && now.st_mtim.tv_sec == c.verified.st_mtim.tv_sec &&
      now.st_mtim.tv_nsec == c.verified.st_mtim.tv_nsec)
    return;
  write_file_atomically(c.sidecar, sidecar_line(sha256_file(c.path, int64_t(now.st_size)), int64_t(now.st_size)));
}

int run(const Args& args) {
  if (!args.rows_out.empty()) return fetch_only(args);
  auto host = proc_status();  // this process before anything is loaded: what the host itself costs
  if (args.threads > 0) executorch::extension::threadpool::get_threadpool()->_unsafe_reset_threadpool(args.threads);
  char real[PATH_MAX];
  if (!realpath(args.program.c_str(), real)) throw UsageError("--program " + args.program + ": " + std::strerror(errno));
  const std::string program = real;
  executorch::runtime::runtime_init();
  auto t0 = Clock::now();

  // The program must be the manifest's, byte for byte, before ExecuTorch parses any of it.
  const int64_t program_bytes = regular_file_size("--program", program);
  if (program_bytes != args.program_bytes)
    throw UsageError(program + ": bytes: expected " + std::to_string(args.program_bytes) + " (the manifest's), found " +
                     std::to_string(program_bytes));
  WeightCache cache;
  if (!args.weight_cache_dir.empty()) {
    const std::string base = program.substr(program.find_last_of('/') + 1);
    // named after the digest checked below: the program is refused unless its real digest is this one
    cache.path = args.weight_cache_dir + "/" + base + "." + args.program_sha256.substr(0, 16) + ".xnnpack_cache";
    cache.sidecar = cache.path + ".sha256";
  }
  // the program's digest and the cache's are independent reads: hashed side by side
  auto program_digest = std::async(std::launch::async, sha256_file, program, program_bytes);
  std::string cache_problem;
  try {
    if (!cache.path.empty()) cache_problem = check_weight_cache(cache);
  } catch (...) {
    program_digest.wait();
    throw;
  }
  if (const std::string found = program_digest.get(); found != args.program_sha256)
    throw UsageError(program + ": sha256: expected " + args.program_sha256 + " (the manifest's), found " + found);
  if (!cache_problem.empty()) {
    std::fprintf(stderr, "gemma-edge-run: warning: weight cache %s: %s; discarded, packing it again\n",
                 cache.path.c_str(), cache_problem.c_str());
    unlink(cache.sidecar.c_str());
    if (unlink(cache.path.c_str()) != 0)
      throw UsageError("--weight-cache-dir: " + cache.path + ": cannot discard it: " + std::strerror(errno));
  } else if (!cache.path.empty() && !cache.existed) {
    unlink(cache.sidecar.c_str());  // a sidecar without its cache describes nothing
  }
  const double verify_s = seconds_since(t0);

  gemma_edge::PleFile ple(args.ple, args.identity);
  // Mapped, never mlocked (as an Android app loads it). share_memory_arenas: a two-method program's prefill
  // and decode share their KV-cache buffers (planned into one arena); without it each gets its own copy.
  Module module(program, Module::LoadMode::Mmap, nullptr, nullptr, nullptr, /*share_memory_arenas=*/true);
  // Internal consistency: the flatbuffer's offsets and sizes are checked before any are followed (the
  // default checks only the header), so a program the digest let through cannot make the parser read wild.
  if (auto e = module.load(executorch::runtime::Program::Verification::InternalConsistency);
      e != executorch::runtime::Error::Ok)
    throw UsageError(program + ": not a program this runtime can run (ExecuTorch error " + std::to_string(int(e)) +
                     " while verifying it)");
  int arity = 0;      // inputs the methods take
  int64_t vocab = 0;  // V of the logits [1, V] both methods return
  for (const auto& m : {args.prefill_method, args.decode_method}) {
    // --weight-cache-dir: XNNPACK's packed weights in a file (as LiteRT-LM keeps its `.xnnpack_cache`). The
    // first load packs into it; later loads map it instead of packing: no source weights held beside packed
    // ones, no packing time, and the packed pages are clean file pages the kernel can page out.
    executorch::runtime::BackendOptions<3> xopts;
    executorch::runtime::LoadBackendOptionsMap load_opts;
    if (!cache.path.empty()) {
      xopts.set_option("weight_cache_enabled", true);
      xopts.set_option("save_weight_cache_on_disk", true);
      xopts.set_option("packed_cache_path", cache.path.c_str());
      if (load_opts.set_options("XnnpackBackend", xopts.view()) != executorch::runtime::Error::Ok)
        throw UsageError("--weight-cache-dir: the XNNPACK backend options could not be set");
    }
    if (module.load_method(m, nullptr, nullptr, cache.path.empty() ? nullptr : &load_opts) !=
        executorch::runtime::Error::Ok)
      throw UsageError(program + ": cannot load method '" + m + "' (missing, or not a program this runtime runs)");
    auto meta = module.method_meta(m);
    if (!meta.ok() || (meta->num_inputs() != 4 && meta->num_inputs() != 3))
      throw UsageError(program + ": method '" + m + "': expected 4 inputs (tokens, input_pos, ple_rows, attend_len)"
                       " or 3 (a revision < 5 program), found " + (meta.ok() ? std::to_string(meta->num_inputs()) : "none"));
    if (arity != 0 && size_t(arity) != meta->num_inputs())
      throw UsageError(program + ": methods '" + args.prefill_method + "' and '" + args.decode_method +
                       "' take different inputs");
    arity = int(meta->num_inputs());
    auto rows_meta = meta->input_tensor_meta(2);
    if (!rows_meta.ok())
      throw UsageError(program + ": method '" + m + "' input 2 (ple_rows): not a tensor");
    auto sizes = rows_meta->sizes();
    if (sizes.size() != 4 || sizes[2] != int32_t(ple.num_layers()) || sizes[3] != int32_t(ple.ple_dim()))
      throw UsageError(program + ": method '" + m + "' input ple_rows: expected [1, T, " +
                       std::to_string(ple.num_layers()) + ", " + std::to_string(ple.ple_dim()) + "] as " + args.ple +
                       " holds, found another shape");
    // the program's own vocabulary: the width of its logits [1, V]
    if (meta->num_outputs() != 1)
      throw UsageError(program + ": method '" + m + "': expected one output (logits), found " +
                       std::to_string(meta->num_outputs()));
    auto out_meta = meta->output_tensor_meta(0);
    if (!out_meta.ok() || out_meta->sizes().size() != 2 || out_meta->sizes()[0] != 1 || out_meta->sizes()[1] < 1 ||
        out_meta->scalar_type() != ScalarType::Float)
      throw UsageError(program + ": method '" + m + "': expected one output, float32 logits [1, V]");
    if (vocab != 0 && vocab != out_meta->sizes()[1])
      throw UsageError(program + ": methods '" + args.prefill_method + "' and '" + args.decode_method +
                       "' return logits of different widths");
    vocab = out_meta->sizes()[1];
  }
  if (!cache.path.empty()) seal_weight_cache(cache);
  // No id outside every vocabulary reaches the program: its embedding lookup does not bound them.
  for (size_t i = 0; i < args.ids.size(); ++i) {
    for (auto [name, v] : {std::pair<std::string, int64_t>{program + " logits [1, V]", vocab},
                           {args.ple + " vocab_size", int64_t(ple.vocab_size())}, {"--vocab-size", args.vocab_size}}) {
      if (v > 0 && args.ids[i] >= v)
        throw UsageError("prompt id " + std::to_string(args.ids[i]) + " at position " + std::to_string(i) +
                         ": expected 0 ≤ id < vocab_size " + std::to_string(v) + " (" + name + ")");
    }
  }
  const double load_s = seconds_since(t0);
  auto [pte_before, pte_after] = release_file_mapping(program);
  auto after_load = proc_status();

  Runner runner{module, ple, args, {}, {}, arity == 4, {}, vocab};
  std::vector<std::string> runs;
  std::vector<std::vector<float>> logits;
  for (int r = 0; r < args.warmup + args.repeats; ++r) {
    bool keep = r == args.warmup && !args.logits_out.empty();
    std::string res = runner.generate(keep ? &logits : nullptr);
    if (r >= args.warmup) runs.push_back(res);
  }
  if (!logits.empty()) {
    std::ofstream out(args.logits_out, std::ios::binary);
    for (const auto& l : logits) out.write(reinterpret_cast<const char*>(l.data()), std::streamsize(4 * l.size()));
    if (!out) throw UsageError("--logits-out " + args.logits_out + ": write failed");
  }
  auto end = proc_status();
  std::ostringstream o;
  o.precision(9);
  o << "{\"runtime\": \"gemma-edge-run (ExecuTorch C++ Module, no Python)\", \"load_s\": " << load_s
    << ", \"verify_s\": " << verify_s << ", \"program_sha256\": \"" << args.program_sha256 << "\""
    << ", \"threads\": " << executorch::extension::threadpool::get_threadpool()->get_thread_count()
    << ", \"program_resident_released\": {\"before\": " << pte_before << ", \"after\": " << pte_after << "}";
  if (!cache.path.empty()) {
    struct stat after{};
    stat(cache.path.c_str(), &after);
    char cache_real[PATH_MAX];  // /proc/self/smaps names a mapping by its real path
    const std::string cache_path = realpath(cache.path.c_str(), cache_real) ? cache_real : cache.path;
    o << ", \"weight_cache\": {\"path\": \"" << cache.path << "\", \"existed_before_load\": "
      << (cache.existed ? "true" : "false") << ", \"discarded\": " << (cache_problem.empty() ? "false" : "true")
      << ", \"bytes\": " << after.st_size
      << ", \"resident_bytes\": " << mapping_resident_bytes(cache_path) << "}";
  }
  o
    << ", \"memory\": {\"host\": " << json_memory(host) << ", \"after_load\": " << json_memory(after_load)
    << ", \"end\": " << json_memory(end) << "}, \"program_resident_bytes\": " << mapping_resident_bytes(program)
    << ", \"runs\": [";
  for (size_t i = 0; i < runs.size(); ++i) o << (i ? ", " : "") << runs[i];
  o << "]}";
  std::printf("%s\n", o.str().c_str());
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return run(parse(argc, argv));
  } catch (const UsageError& e) {
    std::fprintf(stderr, "gemma-edge-run: %s\n", e.what());
    return 2;
  } catch (const gemma_edge::PleFormatError& e) {
    std::fprintf(stderr, "gemma-edge-run: %s\n", e.what());
    return 2;
  } catch (const std::out_of_range& e) {  // a token id outside the vocabulary
    std::fprintf(stderr, "gemma-edge-run: %s\n", e.what());
    return 2;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "gemma-edge-run: %s\n", e.what());
    return 1;
  } catch (...) {
    std::fprintf(stderr, "gemma-edge-run: failed with an exception of unknown type\n");
    return 1;
  }
}
