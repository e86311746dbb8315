// gemma-edge-run: the runner library's command line — a bundle run by a native host, no Python, no libtorch.
//
//   gemma-edge-run BUNDLE_DIR (--prompt-file F|- [--chat] | --ids-file F|-) [--new-tokens 32]
//       [--image PATH ... [--image-budget 280]] [--audio WAV ...]
//       [--temperature 0 --top-k 0 --top-p 1 --seed 0] [--ignore-eos] [--threads N] [--repeats 1]
//       [--warmup 0] [--weight-cache-dir DIR] [--logits-out FILE] [--json]
//   gemma-edge-run --ple B/model.ple --ids 2,818,... --rows-out FILE [--ple-identity HEX]   (the fetch alone)
//
// Everything about the bundle comes from its manifest.json (files with size and SHA-256, the method per
// role, prefill_chunk, max_context, vocab_size, bos and eos ids); the prompt is UTF-8 text tokenized by the
// bundle's tokenizer.json ("-": stdin), or ids (decimal, comma-separated) for a caller that tokenized it.
// --chat wraps the prompt in Gemma 4's chat format. --image (repeatable, in prompt order) adds a PNG or JPEG at
// --image-budget soft tokens, one of the manifest's vision.budgets: the prompt holds one image placeholder id
// per image, or none (the images then go after <bos>); the bundle's vision program encodes them (loaded for that
// and released after, at every run). --audio (repeatable, in prompt order, after the images) adds a WAV file
// (PCM 8/16/24/32-bit or float, any rate and channel count: downmixed and resampled to 16 kHz as the Python host
// does); audio over 30 s is several consecutive 30 s clips, each its own <|audio> … <audio|> span; the prompt holds
// one audio placeholder per file, or none (the audio then goes after <bos> and any image spans); the bundle's audio
// program encodes the clips, loaded for them and released after. Prints the generated text (EOS excluded); with --json,
// one JSON object instead: load time, each timed run (TTFT, prefill / decode tok/s, tokens, the prompt's
// fetch) and this process's memory from /proc — before loading (the host), after loading and at the end —
// with the program's file mapping released after the load (XNNPACK holds packed copies of its weights).
// --logits-out writes the first timed run's logits of every step (float32 [steps, V], little-endian);
// --rows-out (fetch only) the prompt's PLE rows (float32 [T, L, P]) and prints the fetch's I/O accounting.
// A bad argument or file exits with status 2 and one line naming it; a failed run with status 1.
//
// The library (manifest.h, program.h, loop.h, sampler.h, tokenizer.h) is what an app embeds; /proc
// accounting and JSON live here only.
#include <fcntl.h>
#include <limits.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "audio.h"
#include "audio_program.h"
#include "errors.h"
#include "image.h"
#include "loop.h"
#include "manifest.h"
#include "ple_file.h"
#include "program.h"
#include "sampler.h"
#include "text_file.h"
#include "tokenizer.h"
#include "vision_program.h"

namespace {

using gemma_edge::BadInput;
using json = nlohmann::ordered_json;
using Clock = std::chrono::steady_clock;

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
      throw BadInput(where + ": expected comma-separated integers, found '" + item.substr(0, 40) + "'");
    errno = 0;
    long long v = std::strtoll(digits.c_str(), nullptr, 10);
    if (errno == ERANGE) throw BadInput(where + ": expected an id below 2^63, found '" + digits.substr(0, 40) + "'");
    out.push_back(v);
  }
  if (out.empty()) throw BadInput(source + ": expected at least one token");
  return out;
}

int parse_int(const std::string& flag, const std::string& s, int lo) {
  char* end = nullptr;
  errno = 0;
  long v = std::strtol(s.c_str(), &end, 10);
  if (s.empty() || *end || errno == ERANGE || v < lo || v > INT_MAX)
    throw BadInput(flag + ": expected an integer ≥ " + std::to_string(lo) + ", found '" + s + "'");
  return int(v);
}

// A float32 value as Python's float(text) -> np.float32 rounds it.
float parse_float(const std::string& flag, const std::string& s) {
  char* end = nullptr;
  double v = std::strtod(s.c_str(), &end);
  if (s.empty() || *end || !std::isfinite(v)) throw BadInput(flag + ": expected a finite number, found '" + s + "'");
  return float(v);
}

// A seed in [-2^63, 2^64): taken mod 2^64, as sampling.SplitMix64 takes a Python int.
uint64_t parse_seed(const std::string& s) {
  char* end = nullptr;
  errno = 0;
  const bool negative = !s.empty() && s[0] == '-';
  const uint64_t v = negative ? uint64_t(std::strtoll(s.c_str(), &end, 10)) : std::strtoull(s.c_str(), &end, 10);
  if (s.empty() || *end || errno == ERANGE || (!negative && s.find_first_not_of("0123456789") != std::string::npos))
    throw BadInput("--seed: expected an integer in [-2^63, 2^64), found '" + s + "'");
  return v;
}

struct Args {
  std::string bundle, prompt_file, ids_file, logits_out, weight_cache_dir;
  std::vector<std::string> images, audio;
  int image_budget = gemma_edge::kDefaultImageBudget;
  bool chat = false, json = false, ignore_eos = false;
  int new_tokens = 32, repeats = 1, warmup = 0, threads = 0;
  float temperature = 0.0f, top_p = 1.0f;
  int top_k = 0;
  uint64_t seed = 0;
  // fetch only
  std::string ple, identity, rows_out, ids;
};

Args parse(int argc, char** argv) {
  Args a;
  static const std::set<std::string> switches{"--chat", "--json", "--ignore-eos"};
  std::map<std::string, std::string> kv;
  std::set<std::string> on;
  int i = 1;
  if (argc > 1 && std::string(argv[1]).rfind("--", 0) != 0) a.bundle = argv[i++];
  for (; i < argc; ++i) {
    std::string k = argv[i];
    if (switches.count(k)) {
      on.insert(k);
      continue;
    }
    if (k.rfind("--", 0) != 0 || i + 1 >= argc) throw BadInput("expected --flag VALUE pairs, found '" + k + "'");
    if (k == "--image" || k == "--audio") {  // the repeated flags: each image, each audio file in prompt order
      (k == "--image" ? a.images : a.audio).push_back(argv[++i]);
      continue;
    }
    kv[k] = argv[++i];
  }
  auto take = [&](const char* k) -> std::string {
    auto it = kv.find(k);
    if (it == kv.end()) return "";
    std::string v = it->second;
    kv.erase(it);
    return v;
  };
  a.rows_out = take("--rows-out");
  if (!a.rows_out.empty()) {  // the fetch alone
    if (!a.images.empty()) throw BadInput("--image: not taken with --rows-out (a fetch, no program)");
    if (!a.audio.empty()) throw BadInput("--audio: not taken with --rows-out (a fetch, no program)");
    a.ple = take("--ple");
    a.identity = take("--ple-identity");
    a.ids = take("--ids");
    if (a.ple.empty() || a.ids.empty()) throw BadInput("--rows-out: needs --ple FILE and --ids 2,818,...");
    if (!kv.empty() || !on.empty() || !a.bundle.empty())
      throw BadInput((kv.empty() ? on.empty() ? a.bundle : *on.begin() : kv.begin()->first) +
                     ": not taken with --rows-out (a fetch, no program)");
    return a;
  }
  if (a.bundle.empty()) throw BadInput("BUNDLE_DIR: required (the export bundle folder, first argument)");
  a.prompt_file = take("--prompt-file");
  a.ids_file = take("--ids-file");
  if (a.prompt_file.empty() == a.ids_file.empty())
    throw BadInput("--prompt-file or --ids-file: expected exactly one of them");
  for (auto [flag, dst, lo] : {std::tuple<const char*, int*, int>{"--new-tokens", &a.new_tokens, 1},
                               {"--repeats", &a.repeats, 1}, {"--warmup", &a.warmup, 0}, {"--threads", &a.threads, 0},
                               {"--top-k", &a.top_k, 0}}) {
    std::string v = take(flag);
    if (!v.empty()) *dst = parse_int(flag, v, lo);
  }
  if (std::string v = take("--temperature"); !v.empty()) a.temperature = parse_float("--temperature", v);
  if (std::string v = take("--top-p"); !v.empty()) a.top_p = parse_float("--top-p", v);
  if (std::string v = take("--seed"); !v.empty()) a.seed = parse_seed(v);
  if (std::string v = take("--image-budget"); !v.empty()) {
    if (a.images.empty()) throw BadInput("--image-budget: needs --image (a budget is per image)");
    a.image_budget = parse_int("--image-budget", v, 1);
  }
  a.logits_out = take("--logits-out");
  a.weight_cache_dir = take("--weight-cache-dir");
  if (!kv.empty()) throw BadInput(kv.begin()->first + ": unknown flag");
  a.chat = on.count("--chat");
  a.json = on.count("--json");
  a.ignore_eos = on.count("--ignore-eos");
  if (a.chat && a.prompt_file.empty()) throw BadInput("--chat: needs --prompt-file (text, not ids)");
  return a;
}

// ---- /proc accounting -----------------------------------------------------------------------------------

// /proc/self/status fields in bytes: VmRSS, VmHWM, RssAnon, RssFile.
json proc_status() {
  json out = json::object();
  std::ifstream f("/proc/self/status");
  std::string line;
  std::map<std::string, int64_t> found;
  while (std::getline(f, line)) {
    for (const char* k : {"VmRSS", "VmHWM", "RssAnon", "RssFile"}) {
      size_t n = std::strlen(k);
      if (line.compare(0, n, k) == 0 && line[n] == ':') found[k] = std::atoll(line.c_str() + n + 1) * 1024;
    }
  }
  for (const auto& [k, v] : found) out[k] = v;
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

json fetch_json(const gemma_edge::FetchStats& st) {
  return {{"tokens", st.tokens}, {"unique_rows", st.unique_rows}, {"bytes_requested", st.bytes_requested},
          {"pages_touched", st.pages_touched}, {"read_calls", st.read_calls}};
}

int fetch_only(const Args& args) {
  const std::vector<int64_t> ids = parse_ids("--ids", args.ids);
  gemma_edge::PleFile ple(args.ple, args.identity);
  std::vector<float> rows(ids.size() * ple.row_values());
  gemma_edge::FetchStats st = ple.fetch(ids.data(), ids.size(), rows.data());
  std::ofstream out(args.rows_out, std::ios::binary);
  out.write(reinterpret_cast<const char*>(rows.data()), std::streamsize(4 * rows.size()));
  if (!out) throw BadInput("--rows-out " + args.rows_out + ": write failed");
  json o = {{"fetch", fetch_json(st)}, {"num_layers", ple.num_layers()}, {"ple_dim", ple.ple_dim()}};
  std::printf("%s\n", o.dump().c_str());
  return 0;
}

// The prompt's ids: the ids file as it is, or the text through the bundle's tokenizer (bos first, or the
// chat format, whose text starts with <bos>).
std::vector<int64_t> prompt_ids(const Args& args, const gemma_edge::Manifest& m,
                                const std::unique_ptr<gemma_edge::TextTokenizer>& tok) {
  const size_t limit = size_t(64) << 20;  // far above any context: the loop's context check names a long prompt
  if (!args.ids_file.empty())
    return parse_ids("--ids-file " + args.ids_file, gemma_edge::read_text_file("--ids-file", args.ids_file, limit));
  if (!tok) throw BadInput(m.where + ": files.tokenizer: missing; pass --ids-file instead of --prompt-file");
  const std::string text = gemma_edge::read_text_file("--prompt-file", args.prompt_file, limit);
  gemma_edge::check_utf8(text, "--prompt-file " + args.prompt_file);
  if (!args.chat) {
    std::vector<int64_t> ids{m.bos_token_id};
    for (int64_t t : tok->encode(text)) ids.push_back(t);
    return ids;
  }
  for (const char* special : {"<|turn>", "<turn|>"})
    if (!tok->token_id(special))
      throw BadInput(m.file("tokenizer").path + ": --chat needs the Gemma 4 turn token '" + special +
                     "', which this tokenizer does not have (a base or tiny-vocabulary model: use a raw prompt)");
  if (m.chat_template)
    std::fprintf(stderr, "gemma-edge-run: warning: %s: chat_template is a jinja template, which the native host "
                 "does not render; the prompt is in Gemma 4's built-in chat format\n", m.where.c_str());
  return tok->encode(gemma_edge::gemma4_chat_prompt(text));
}

int run(const Args& args) {
  if (!args.rows_out.empty()) return fetch_only(args);
  json host = proc_status();  // this process before anything is loaded: what the host itself costs
  const gemma_edge::Manifest manifest = gemma_edge::read_manifest(args.bundle);
  std::unique_ptr<gemma_edge::TextTokenizer> tok;
  if (manifest.has_file("tokenizer")) tok = std::make_unique<gemma_edge::TextTokenizer>(manifest.file("tokenizer").path);
  const std::vector<int64_t> ids = prompt_ids(args, manifest, tok);
  gemma_edge::LoopSettings settings{args.new_tokens, manifest.max_context, manifest.prefill_chunk,
                                    manifest.eos_token_ids, !args.ignore_eos};
  // The images: decoded and preprocessed now (their soft-token counts size the prompt); the vision program is
  // read only when the loop encodes them, after every check.
  std::vector<gemma_edge::PreparedImage> prepared;
  std::unique_ptr<gemma_edge::VisionProgram> vision;
  gemma_edge::LoopImages images;
  json images_json = json::array();
  if (!args.images.empty() || !args.audio.empty())
    // loop.md's order: the prompt's ids (the program checks them against its own vocabulary again once
    // loaded), the images check, then the budget, then the files are read; then the same for the audio
    for (size_t i = 0; i < ids.size(); ++i)
      if (ids[i] >= manifest.vocab_size)
        throw gemma_edge::LoopError("prompt", "prompt id " + std::to_string(ids[i]) + " at position " +
                                    std::to_string(i) + ": expected 0 ≤ id < vocab_size " +
                                    std::to_string(manifest.vocab_size) + " (the manifest's vocab_size)");
  if (!args.images.empty()) {
    const std::optional<gemma_edge::ImageTokens> tokens =
        manifest.vision ? std::optional(manifest.vision->image_tokens) : std::nullopt;
    gemma_edge::check_image_prompt(ids, args.images.size(), tokens, manifest.dir);
    vision = std::make_unique<gemma_edge::VisionProgram>(manifest, args.image_budget, prepared);
    for (const std::string& path : args.images) {
      prepared.push_back(gemma_edge::preprocess_image(gemma_edge::decode_image_file(path), args.image_budget));
      const gemma_edge::PreparedImage& p = prepared.back();
      images.soft_tokens.push_back(p.soft_tokens);
      images_json.push_back({{"path", path}, {"resized", {p.height, p.width}}, {"soft_tokens", p.soft_tokens}});
    }
    images.tokens = manifest.vision->image_tokens;
    images.pad_id = manifest.pad_token_id;
    images.bos = manifest.bos_token_id;
    images.encoder = vision.get();
    images.model = manifest.dir;
  }
  // The audio: read, resampled and cut into clips now (their soft-token counts size the prompt); the audio
  // program is read only when the loop encodes them.
  std::vector<gemma_edge::AudioClip> clips;
  std::unique_ptr<gemma_edge::AudioProgram> audio_program;
  gemma_edge::LoopAudio audio;
  json audio_json = json::array();
  if (!args.audio.empty()) {
    const std::optional<gemma_edge::AudioTokens> tokens =
        manifest.audio ? std::optional(gemma_edge::AudioTokens{manifest.audio->boa, manifest.audio->audio,
                                                               manifest.audio->eoa})
                       : std::nullopt;
    gemma_edge::check_audio_prompt(gemma_edge::expand_image_prompt(ids, images), args.audio.size(), tokens,
                                   manifest.dir);
    audio_program = std::make_unique<gemma_edge::AudioProgram>(manifest, clips);
    for (const std::string& path : args.audio) {
      const std::vector<float> samples = gemma_edge::to_mono_16k(gemma_edge::read_wav(path), path);
      std::vector<int> counts;
      for (gemma_edge::AudioClip& c : gemma_edge::prepare_audio(samples, path)) {
        counts.push_back(c.soft_tokens);
        clips.push_back(std::move(c));
      }
      audio.soft_tokens.push_back(counts);
      audio_json.push_back({{"path", path}, {"samples", samples.size()}, {"clip_soft_tokens", counts}});
    }
    audio.tokens = tokens;
    audio.pad_id = manifest.pad_token_id;
    audio.bos = manifest.bos_token_id;
    audio.encoder = audio_program.get();
    audio.model = manifest.dir;
  }
  // the images and context rules before anything is loaded (the loop checks them again, before any work)
  const std::vector<int64_t> expanded = gemma_edge::expand_prompt(ids, images, audio);
  if (int64_t(expanded.size()) + args.new_tokens > manifest.max_context)
    throw gemma_edge::LoopError("context", "context: prompt " + std::to_string(expanded.size()) + " + max_new_tokens " +
                                std::to_string(args.new_tokens) + " = " +
                                std::to_string(expanded.size() + size_t(args.new_tokens)) +
                                " tokens, expected ≤ max_context " + std::to_string(manifest.max_context));
  gemma_edge::Sampler probe(args.temperature, args.top_k, args.top_p, args.seed);  // bad settings refused here

  auto t0 = Clock::now();
  gemma_edge::Program program(manifest, {args.weight_cache_dir, args.threads});
  program.check_prompt(expanded);
  const double load_s = seconds_since(t0);
  auto [pte_before, pte_after] = release_file_mapping(program.program_path());
  json after_load = proc_status();

  json runs = json::array();
  std::vector<float> logits;  // --logits-out: the first timed run's, every step
  std::vector<int64_t> last_tokens;
  for (int r = 0; r < args.warmup + args.repeats; ++r) {
    gemma_edge::Sampler sampler(args.temperature, args.top_k, args.top_p, args.seed);  // every run the same draws
    const bool keep = r == args.warmup && !args.logits_out.empty();
    gemma_edge::TokenObserver observe;
    if (keep) observe = [&](int64_t, const float* l, size_t V) { logits.insert(logits.end(), l, l + V); };
    gemma_edge::Generation g = gemma_edge::generate(program, sampler, ids, settings, observe, images, audio);
    if (r < args.warmup) continue;
    runs.push_back({{"ttft_s", g.ttft_s}, {"fetch_s", g.prompt_fetch.wall_s}, {"prefill_s", g.prefill_s},
                    {"decode_s", g.decode_s}, {"prefill_tok_s", double(g.prompt.size()) / g.prefill_s},
                    {"decode_tok_s", g.tokens.size() > 1 ? double(g.tokens.size() - 1) / g.decode_s : 0.0},
                    {"prompt_fetch", fetch_json(g.prompt_fetch)}, {"stop_reason", g.stop_reason}, {"tokens", g.tokens}});
    if (vision)  // the encode counts the vision program's load (verification included): it is loaded per run
      runs.back()["vision"] = {{"encode_s", g.encode_s}, {"load_s", vision->load_s()}, {"verify_s", vision->verify_s()},
                               {"released", !vision->loaded()}, {"mapped_after", vision->mapped()}};
    if (audio_program)  // encode_s counts both towers when a prompt has images and audio
      runs.back()["audio"] = {{"encode_s", g.encode_s}, {"load_s", audio_program->load_s()},
                              {"released", !audio_program->loaded()}, {"mapped_after", audio_program->mapped()}};
    last_tokens = g.tokens;
  }
  if (!logits.empty()) {
    std::ofstream out(args.logits_out, std::ios::binary);
    out.write(reinterpret_cast<const char*>(logits.data()), std::streamsize(4 * logits.size()));
    if (!out) throw BadInput("--logits-out " + args.logits_out + ": write failed");
  }
  std::string text;
  if (tok) {
    std::vector<int64_t> answer;
    for (int64_t t : last_tokens)
      if (std::find(manifest.eos_token_ids.begin(), manifest.eos_token_ids.end(), t) == manifest.eos_token_ids.end())
        answer.push_back(t);
    text = tok->decode(answer);
  }
  if (!args.json) {
    if (tok) {
      // fwrite, not printf("%s"): a decoded answer may hold a NUL byte (a <0x00> byte token), where %s stops
      std::fwrite(text.data(), 1, text.size(), stdout);
      std::fputc('\n', stdout);
    } else {
      for (size_t i = 0; i < last_tokens.size(); ++i) std::printf(i ? " %lld" : "%lld", (long long)last_tokens[i]);
      std::printf("\n");
    }
    return 0;
  }
  json end = proc_status();
  json o = {{"load_s", load_s},
            {"verify_s", program.verify_s()}, {"program_sha256", program.program_sha256()},
            {"threads", program.threads()},
            {"program_resident_released", {{"before", pte_before}, {"after", pte_after}}}};
  if (const auto& wc = program.weight_cache(); !wc.path.empty()) {
    struct stat after{};
    stat(wc.path.c_str(), &after);
    char cache_real[PATH_MAX];  // /proc/self/smaps names a mapping by its real path
    const std::string cache_path = realpath(wc.path.c_str(), cache_real) ? cache_real : wc.path;
    o["weight_cache"] = {{"path", wc.path}, {"existed_before_load", wc.existed}, {"discarded", !wc.discarded.empty()},
                         {"bytes", int64_t(after.st_size)}, {"resident_bytes", mapping_resident_bytes(cache_path)}};
  }
  o["memory"] = {{"host", host}, {"after_load", after_load}, {"end", end}};
  o["program_resident_bytes"] = mapping_resident_bytes(program.program_path());
  o["prompt_tokens"] = expanded;  // what was prefilled: with images and audio, each one's spans in place
  if (vision) {
    o["images"] = images_json;
    o["image_budget"] = args.image_budget;
    o["vision"] = {{"path", vision->path()}, {"method", vision->method()}, {"loads", vision->loads()}};
  }
  if (audio_program) {
    o["audio"] = audio_json;
    o["audio_program"] = {{"path", audio_program->path()}, {"method", audio_program->method()},
                          {"loads", audio_program->loads()}};
  }
  if (tok) o["text"] = text;
  o["runs"] = runs;
  // the line opens with `{"runtime": ` as it always has: bench/peers/ours.py finds the report by that mark
  std::printf("{\"runtime\": \"gemma-edge-run (ExecuTorch C++ Module, no Python)\", %s\n",
              o.dump(-1, ' ', false, json::error_handler_t::replace).substr(1).c_str());
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return run(parse(argc, argv));
  } catch (const BadInput& e) {
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
