// gemma-edge-run: a bundle's program and PLE file run by a native host — no Python, no libtorch.
//
// What an app on a phone does with an export bundle, on this machine: ExecuTorch's C++ Module runs the
// program (mmapped, as an Android app loads it: no mlock), the PLE rows of a whole prompt come from the
// .ple file in one batched fetch, then one row per generated token. Greedy; the manifest is read by the
// caller (gemma_edge.runtime.native), which passes what it says as flags:
//
//   gemma-edge-run --program B/model.pte --ple B/model.ple --ple-identity HEX --prefill-method forward
//       --decode-method forward --prefill-chunk 128 --max-context 1024 --ids 2,818,... --new-tokens 128
//       [--repeats 3] [--warmup 1] [--threads 2] [--eos 1,106] [--logits-out FILE] [--weight-cache FILE]
//   gemma-edge-run --ple B/model.ple --ids 2,818,... --rows-out FILE     (the fetch alone: no program)
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
#include <limits.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <map>
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

std::vector<int64_t> parse_ids(const std::string& flag, const std::string& s) {
  std::vector<int64_t> out;
  std::stringstream in(s);
  std::string item;
  while (std::getline(in, item, ',')) {
    char* end = nullptr;
    long long v = std::strtoll(item.c_str(), &end, 10);
    if (item.empty() || *end) throw UsageError(flag + ": expected comma-separated integers, found '" + item + "'");
    out.push_back(v);
  }
  return out;
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
  std::string weight_cache;
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
  a.ids = parse_ids("--ids", take("--ids", true));
  if (a.ids.empty()) throw UsageError("--ids: expected at least one token");
  if (!a.rows_out.empty()) {  // the fetch alone
    if (!kv.empty()) throw UsageError(kv.begin()->first + ": not taken with --rows-out (a fetch, no program)");
    return a;
  }
  a.program = take("--program", true);
  a.prefill_chunk = parse_int("--prefill-chunk", take("--prefill-chunk", true), 1);
  a.max_context = parse_int("--max-context", take("--max-context", true), 1);
  for (auto [flag, dst, lo] : {std::tuple<const char*, int*, int>{"--new-tokens", &a.new_tokens, 1},
                               {"--repeats", &a.repeats, 1}, {"--warmup", &a.warmup, 0}, {"--threads", &a.threads, 0}}) {
    std::string v = take(flag, false);
    if (!v.empty()) *dst = parse_int(flag, v, lo);
  }
  if (std::string m = take("--prefill-method", false); !m.empty()) a.prefill_method = m;
  if (std::string m = take("--decode-method", false); !m.empty()) a.decode_method = m;
  if (std::string e = take("--eos", false); !e.empty()) a.eos = parse_ids("--eos", e);
  a.logits_out = take("--logits-out", false);
  a.weight_cache = take("--weight-cache", false);
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
    const auto& logits = out.get().at(0).toTensor();
    const float* p = logits.const_data_ptr<float>();
    return std::vector<float>(p, p + logits.numel());
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
    bool stopped = false;
    while (int(tokens.size()) < args.new_tokens && !stopped) {
      int64_t tok = tokens.back();
      ple.fetch(&tok, 1, row.data());
      logits = step(args.decode_method, &tok, 1, p++, row.data());
      tokens.push_back(argmax(logits));
      if (keep_logits) keep_logits->push_back(logits);
      for (int64_t e : args.eos) stopped |= tokens.back() == e;
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

int run(const Args& args) {
  if (!args.rows_out.empty()) return fetch_only(args);
  auto host = proc_status();  // this process before anything is loaded: what the host itself costs
  if (args.threads > 0) executorch::extension::threadpool::get_threadpool()->_unsafe_reset_threadpool(args.threads);
  char real[PATH_MAX];
  if (!realpath(args.program.c_str(), real)) throw UsageError("--program " + args.program + ": " + std::strerror(errno));
  const std::string program = real;
  executorch::runtime::runtime_init();
  struct stat cache_st{};
  const bool cache_existed = !args.weight_cache.empty() && stat(args.weight_cache.c_str(), &cache_st) == 0;
  auto t0 = Clock::now();
  gemma_edge::PleFile ple(args.ple, args.identity);
  // Mapped, never mlocked (as an Android app loads it). share_memory_arenas: a two-method program's prefill
  // and decode share their KV-cache buffers (planned into one arena); without it each gets its own copy.
  Module module(program, Module::LoadMode::Mmap, nullptr, nullptr, nullptr, /*share_memory_arenas=*/true);
  int arity = 0;  // inputs the methods take
  for (const auto& m : {args.prefill_method, args.decode_method}) {
    // --weight-cache: XNNPACK's packed weights in a file (as LiteRT-LM keeps its `.xnnpack_cache`). The first
    // load packs into it; later loads map it instead of packing: no source weights held beside packed
    // ones, no packing time, and the packed pages are clean file pages the kernel can page out.
    executorch::runtime::BackendOptions<3> xopts;
    executorch::runtime::LoadBackendOptionsMap load_opts;
    if (!args.weight_cache.empty()) {
      xopts.set_option("weight_cache_enabled", true);
      xopts.set_option("save_weight_cache_on_disk", true);
      xopts.set_option("packed_cache_path", args.weight_cache.c_str());
      if (load_opts.set_options("XnnpackBackend", xopts.view()) != executorch::runtime::Error::Ok)
        throw UsageError("--weight-cache: the XNNPACK backend options could not be set");
    }
    if (module.load_method(m, nullptr, nullptr, args.weight_cache.empty() ? nullptr : &load_opts) !=
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
    auto sizes = rows_meta->sizes();
    if (sizes.size() != 4 || sizes[2] != int32_t(ple.num_layers()) || sizes[3] != int32_t(ple.ple_dim()))
      throw UsageError(program + ": method '" + m + "' input ple_rows: expected [1, T, " +
                       std::to_string(ple.num_layers()) + ", " + std::to_string(ple.ple_dim()) + "] as " + args.ple +
                       " holds, found another shape");
  }
  const double load_s = seconds_since(t0);
  auto [pte_before, pte_after] = release_file_mapping(program);
  auto after_load = proc_status();

  Runner runner{module, ple, args, {}, {}, arity == 4, {}};
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
    << ", \"threads\": " << executorch::extension::threadpool::get_threadpool()->get_thread_count()
    << ", \"program_resident_released\": {\"before\": " << pte_before << ", \"after\": " << pte_after << "}";
  if (!args.weight_cache.empty()) {
    struct stat after{};
    stat(args.weight_cache.c_str(), &after);
    char cache_real[PATH_MAX];  // /proc/self/smaps names a mapping by its real path
    const std::string cache_path = realpath(args.weight_cache.c_str(), cache_real) ? cache_real : args.weight_cache;
    o << ", \"weight_cache\": {\"path\": \"" << args.weight_cache << "\", \"existed_before_load\": "
      << (cache_existed ? "true" : "false") << ", \"bytes\": " << after.st_size
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
  }
}
