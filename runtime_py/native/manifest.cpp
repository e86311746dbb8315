// manifest.json through nlohmann-json (Debian nlohmann-json3-dev): the same checks, in the same words, as
// bundle_format.validate_manifest makes of the fields the native host reads.
#include "manifest.h"

#include <fcntl.h>
#include <limits.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <nlohmann/json.hpp>

#include "errors.h"
#include "text_file.h"

namespace gemma_edge {

const char* const kManifestRequiredKeys[12] = {
    "model_hash", "config", "max_context", "prefill_chunk", "bos_token_id", "eos_token_ids",
    "vocab_size", "num_layers", "ple_dim", "quantization", "files", "methods"};

namespace {

using json = nlohmann::json;
constexpr int64_t kIntMax = INT_MAX;  // every count and id of a bundle fits an int32
// contract/image.py SUPPORTED_BUDGETS (image.h's kImageBudgets: the reader needs no image code)
constexpr int kSupportedImageBudgets[] = {70, 140, 280, 560, 1120};

// A found value for a message, with its JSON type, so that "64" (a string) never reads as 64.
std::string found(const json& v) {
  if (v.is_array()) return "an array of " + std::to_string(v.size()) + " entries";
  if (v.is_object()) {
    std::string keys;
    int n = 0;
    for (auto it = v.begin(); it != v.end() && n < 6; ++it, ++n) keys += (n ? "', '" : "'") + it.key();
    return "an object with keys [" + keys + (n ? "'" : "") + "]";
  }
  std::string text = v.dump(-1, ' ', false, json::error_handler_t::replace);
  if (text.size() > 80) text = text.substr(0, 77) + "...";
  const char* kind = v.is_boolean() ? "boolean" : v.is_number_integer() ? "integer" : v.is_number() ? "number"
                   : v.is_string() ? "string" : "null";
  return text + " (" + kind + ")";
}

struct Checker {
  std::string where;
  [[noreturn]] void fail(const std::string& field, const std::string& expected, const json& v) const {
    throw BadInput(where + ": " + field + ": expected " + expected + ", found " + found(v));
  }
  static const json& at(const json& d, const std::string& key) {
    static const json null_value;
    auto it = d.find(key);
    return it == d.end() ? null_value : *it;
  }
  int64_t integer(const json& d, const std::string& key, const std::string& field, int64_t lo,
                  int64_t hi = kIntMax) const {
    return integer_value(at(d, key), field, lo, hi);
  }
  int64_t integer_value(const json& v, const std::string& field, int64_t lo, int64_t hi) const {
    if (!v.is_number_integer() || v.get<int64_t>() < lo || v.get<int64_t>() > hi ||
        (v.is_number_unsigned() && v.get<uint64_t>() > uint64_t(hi)))
      fail(field, "an integer in [" + std::to_string(lo) + ", " + std::to_string(hi) + "]", v);
    return v.get<int64_t>();
  }
  std::string hex64(const json& v, const std::string& field, const std::string& what) const {
    if (!v.is_string() || v.get<std::string>().size() != 64 ||
        v.get<std::string>().find_first_not_of("0123456789abcdef") != std::string::npos)
      fail(field, what, v);
    return v.get<std::string>();
  }
};

// `dir/name` for a manifest's file path: relative, no `..`, and inside the bundle folder once symlinks are
// resolved (bundle_format.confined_path).
std::string confined(const Checker& c, const std::string& dir, const json& name, const std::string& field) {
  if (!name.is_string() || name.get<std::string>().empty() ||
      name.get<std::string>().find('\0') != std::string::npos)
    c.fail(field, "a relative file name", name);
  const std::string n = name.get<std::string>();
  bool dotdot = false;
  for (size_t a = 0; a <= n.size();) {
    size_t b = n.find('/', a);
    if (b == std::string::npos) b = n.size();
    dotdot |= n.compare(a, b - a, "..") == 0 && b - a == 2;
    a = b + 1;
  }
  if (n[0] == '/' || dotdot)
    throw BadInput(c.where + ": " + field + ": expected a path inside the bundle folder (relative, no '..'), "
                   "found '" + n + "'");
  const std::string path = dir + "/" + n;
  char root[PATH_MAX], real[PATH_MAX];
  if (!realpath(dir.c_str(), root)) throw BadInput(dir + ": " + std::strerror(errno));
  if (realpath(path.c_str(), real)) {  // a file that does not exist is named when it is opened
    const std::string r = real, rt = root;
    if (r == rt || r.compare(0, rt.size() + 1, rt + "/") != 0)
      throw BadInput(c.where + ": " + field + ": '" + n + "' resolves to " + r + ", outside the bundle folder " + rt);
  }
  return path;
}

// The `vision` entry and files.vision, checked as bundle_format._check_vision checks them, in its order.
void read_vision(const Checker& c, const json& d, Manifest& m) {
  const bool has_file = m.has_file("vision"), has_entry = d.contains("vision") && !d["vision"].is_null();
  if (!has_file && !has_entry) return;
  if (!has_file || !has_entry)
    throw BadInput(m.where + ": " + (has_entry ? "files.vision" : "vision") + ": missing, but " +
                   (has_entry ? "vision" : "files.vision") + " is present (a vision program needs both)");
  const json& v = d["vision"];
  if (!v.is_object()) c.fail("vision", "an object", v);
  // a manifest without export.program_revision is of revision 1
  const json& exp = Checker::at(d, "export");
  const json revision = exp.is_object() && exp.contains("program_revision") ? exp["program_revision"] : json(1);
  if (!revision.is_number_integer() || revision.get<int64_t>() < 6)
    c.fail("export.program_revision", "≥ 6 (a step that takes soft_embeds) for a bundle with a vision program",
           revision);
  if (Checker::at(v, "model_hash") != m.model_hash)
    c.fail("vision.model_hash", m.model_hash + " (the manifest's model_hash: the tower of the same checkpoint)",
           Checker::at(v, "model_hash"));
  VisionEntry e;
  const json& budgets = Checker::at(v, "budgets");
  std::string supported;
  for (int b : kSupportedImageBudgets) supported += (supported.empty() ? "" : ", ") + std::to_string(b);
  const std::string budgets_expected = "a sorted list of distinct budgets from [" + supported + "]";
  if (!budgets.is_array() || budgets.empty()) c.fail("vision.budgets", budgets_expected, budgets);
  for (const json& b : budgets) {
    const bool supported_one = b.is_number_integer() &&
        std::find(std::begin(kSupportedImageBudgets), std::end(kSupportedImageBudgets), b.get<int64_t>()) !=
            std::end(kSupportedImageBudgets);
    if (!supported_one || (!e.budgets.empty() && b.get<int64_t>() <= e.budgets.back()))
      c.fail("vision.budgets", budgets_expected, budgets);
    e.budgets.push_back(b.get<int>());
  }
  const json& methods = Checker::at(v, "methods");
  std::string keys;
  for (int b : e.budgets) keys += (keys.empty() ? "'" : ", '") + std::to_string(b) + "'";
  const std::string methods_expected = "one method per budget, keys [" + keys + "]";
  if (!methods.is_object() || methods.size() != e.budgets.size()) c.fail("vision.methods", methods_expected, methods);
  for (int b : e.budgets)
    if (!methods.contains(std::to_string(b))) c.fail("vision.methods", methods_expected, methods);
  for (int b : e.budgets) {
    const json& name = methods[std::to_string(b)];
    if (!name.is_string() || name.get<std::string>().empty())
      c.fail("vision.methods." + std::to_string(b), "a method name", name);
    e.methods[b] = name.get<std::string>();
  }
  // soft tokens replace the decoder's embeddings: as wide as config.hidden_size
  const json& cfg = Checker::at(d, "config");
  const json& hidden = cfg.is_object() ? Checker::at(cfg, "hidden_size") : json();
  const int64_t want = c.integer_value(hidden, "config.hidden_size", 1, kIntMax);
  const json& h = Checker::at(v, "hidden_size");
  if (!h.is_number_integer() || h.get<int64_t>() != want)
    c.fail("vision.hidden_size", std::to_string(want) + " (config.hidden_size: soft tokens replace embeddings)", h);
  e.hidden_size = int(want);
  e.patch_dim = int(c.integer(v, "patch_dim", "vision.patch_dim", 1));
  const json& ids = Checker::at(v, "image_tokens");
  if (!ids.is_object()) c.fail("vision.image_tokens", "an object with boi, image and eoi", ids);
  int64_t* dst[3] = {&e.image_tokens.boi, &e.image_tokens.image, &e.image_tokens.eoi};
  int k = 0;
  for (const char* key : {"boi", "image", "eoi"}) {
    const json& id = Checker::at(ids, key);
    if (!id.is_number_integer() || id.get<int64_t>() < 0 || id.get<int64_t>() >= m.vocab_size)
      c.fail(std::string("vision.image_tokens.") + key, "a token id in [0, " + std::to_string(m.vocab_size) + ")", id);
    *dst[k++] = id.get<int64_t>();
  }
  const ImageTokens& t = e.image_tokens;
  if (t.boi == t.image || t.boi == t.eoi || t.image == t.eoi) c.fail("vision.image_tokens", "three distinct ids", ids);
  const json& q = Checker::at(v, "quantization");
  if (q != "8da8w" && q != "8da4w" && q != "none") c.fail("vision.quantization", "8da8w or 8da4w or none", q);
  e.quantization = q.get<std::string>();
  const json& bq = Checker::at(v, "block_q");
  if (!bq.is_null()) e.block_q = int(c.integer_value(bq, "vision.block_q", 1, kIntMax));
  m.vision = e;
}

// The `audio` entry and files.audio, checked as bundle_format._check_audio checks them, in its order.
void read_audio(const Checker& c, const json& d, Manifest& m) {
  const bool has_file = m.has_file("audio"), has_entry = d.contains("audio") && !d["audio"].is_null();
  if (!has_file && !has_entry) return;
  if (!has_file || !has_entry)
    throw BadInput(m.where + ": " + (has_entry ? "files.audio" : "audio") + ": missing, but " +
                   (has_entry ? "audio" : "files.audio") + " is present (an audio program needs both)");
  const json& a = d["audio"];
  if (!a.is_object()) c.fail("audio", "an object", a);
  const json& exp = Checker::at(d, "export");
  const json revision = exp.is_object() && exp.contains("program_revision") ? exp["program_revision"] : json(1);
  if (!revision.is_number_integer() || revision.get<int64_t>() < 6)
    c.fail("export.program_revision", "≥ 6 (a step that takes soft_embeds) for a bundle with an audio program",
           revision);
  if (Checker::at(a, "model_hash") != m.model_hash)
    c.fail("audio.model_hash", m.model_hash + " (the manifest's model_hash: the tower of the same checkpoint)",
           Checker::at(a, "model_hash"));
  AudioEntry e;
  const json& method = Checker::at(a, "method");
  if (!method.is_string() || method.get<std::string>().empty()) c.fail("audio.method", "a method name", method);
  e.method = method.get<std::string>();
  e.max_tokens = int(c.integer(a, "max_tokens", "audio.max_tokens", 1, 750));
  const json& cfg = Checker::at(d, "config");
  const json& hidden = cfg.is_object() ? Checker::at(cfg, "hidden_size") : json();
  const int64_t want = c.integer_value(hidden, "config.hidden_size", 1, kIntMax);
  const json& h = Checker::at(a, "hidden_size");
  if (!h.is_number_integer() || h.get<int64_t>() != want)
    c.fail("audio.hidden_size", std::to_string(want) + " (config.hidden_size: soft tokens replace embeddings)", h);
  e.hidden_size = int(want);
  const json& ids = Checker::at(a, "audio_tokens");
  if (!ids.is_object()) c.fail("audio.audio_tokens", "an object with boa, audio and eoa", ids);
  int64_t* dst[3] = {&e.boa, &e.audio, &e.eoa};
  int k = 0;
  for (const char* key : {"boa", "audio", "eoa"}) {
    const json& id = Checker::at(ids, key);
    if (!id.is_number_integer() || id.get<int64_t>() < 0 || id.get<int64_t>() >= m.vocab_size)
      c.fail(std::string("audio.audio_tokens.") + key, "a token id in [0, " + std::to_string(m.vocab_size) + ")", id);
    *dst[k++] = id.get<int64_t>();
  }
  if (e.boa == e.audio || e.boa == e.eoa || e.audio == e.eoa) c.fail("audio.audio_tokens", "three distinct ids", ids);
  if (m.vision) {
    const ImageTokens& t = m.vision->image_tokens;
    for (int64_t id : {e.boa, e.audio, e.eoa})
      if (id == t.boi || id == t.image || id == t.eoi)
        c.fail("audio.audio_tokens", "ids none of vision.image_tokens holds", ids);
  }
  const json& q = Checker::at(a, "quantization");
  if (q != "8da8w" && q != "8da4w" && q != "none") c.fail("audio.quantization", "8da8w or 8da4w or none", q);
  e.quantization = q.get<std::string>();
  m.audio = e;
}

}  // namespace

const BundleFile& Manifest::file(const std::string& role) const {
  auto it = files.find(role);
  if (it == files.end())
    throw BadInput(where + ": files." + role + ": missing" +
                   (role == "ple" ? "; the native host runs .pte + .ple bundles" : ""));
  return it->second;
}

Manifest read_manifest(const std::string& bundle_dir) {
  Manifest m;
  m.dir = bundle_dir.size() > 1 && bundle_dir.back() == '/' ? bundle_dir.substr(0, bundle_dir.size() - 1)
                                                              : bundle_dir;
  m.where = m.dir + "/manifest.json";
  struct stat st{};
  if (stat(m.where.c_str(), &st) != 0)
    throw BadInput(m.where + (errno == ENOENT ? ": missing (not an export bundle?)"
                                              : std::string(": cannot read (") + std::strerror(errno) + ")"));
  if (!S_ISREG(st.st_mode)) throw BadInput(m.where + ": expected a regular file");
  const std::string text = read_text_file("", m.where, size_t(64) << 20);
  json d;
  try {
    d = json::parse(text);
  } catch (const json::parse_error& e) {
    throw BadInput(m.where + ": not valid JSON (" + e.what() + ")");
  }
  const Checker c{m.where};
  if (!d.is_object()) c.fail("manifest", "a JSON object", d);
  if (Checker::at(d, "format") != "gemma-edge-bundle")
    throw BadInput(m.where + ": format is " + found(Checker::at(d, "format")) + ", expected 'gemma-edge-bundle'");
  if (!Checker::at(d, "format_version").is_number_integer() || Checker::at(d, "format_version") != 1)
    throw BadInput(m.where + ": format_version " + found(Checker::at(d, "format_version")) + ", expected 1");
  std::string missing;
  for (const char* k : kManifestRequiredKeys)
    if (!d.contains(k)) missing += std::string(missing.empty() ? "'" : ", '") + k + "'";
  if (!missing.empty()) throw BadInput(m.where + ": keys [" + missing + "] missing");

  m.model_hash = c.hex64(Checker::at(d, "model_hash"), "model_hash", "64 lowercase hex digits");
  m.max_context = int(c.integer(d, "max_context", "max_context", 1));
  m.prefill_chunk = int(c.integer(d, "prefill_chunk", "prefill_chunk", 1, m.max_context));
  m.vocab_size = int(c.integer(d, "vocab_size", "vocab_size", 1));
  m.num_layers = int(c.integer(d, "num_layers", "num_layers", 0));
  m.ple_dim = int(c.integer(d, "ple_dim", "ple_dim", 0));
  const std::string in_vocab = "a token id in [0, " + std::to_string(m.vocab_size) + ")";
  m.bos_token_id = c.integer(d, "bos_token_id", "bos_token_id", 0, m.vocab_size - 1);
  const json& eos = d["eos_token_ids"];
  if (!eos.is_array()) c.fail("eos_token_ids", "an array of token ids in [0, " + std::to_string(m.vocab_size) + ")", eos);
  for (size_t i = 0; i < eos.size(); ++i)
    m.eos_token_ids.push_back(c.integer_value(eos[i], "eos_token_ids[" + std::to_string(i) + "]", 0, m.vocab_size - 1));

  if (!Checker::at(d, "pad_token_id").is_null())
    m.pad_token_id = c.integer(d, "pad_token_id", "pad_token_id", 0, m.vocab_size - 1);

  const json& files = d["files"];
  if (!files.is_object()) c.fail("files", "an object (role -> file entry)", files);
  for (auto it = files.begin(); it != files.end(); ++it) {
    const std::string f = "files." + it.key();
    const json& e = it.value();
    if (!e.is_object()) c.fail(f, "an object with path, bytes and sha256", e);
    for (const char* key : {"path", "bytes", "sha256"})
      if (!e.contains(key)) throw BadInput(m.where + ": " + f + "." + key + ": missing");
    BundleFile bf;
    bf.path = confined(c, m.dir, e["path"], f + ".path");
    bf.bytes = c.integer(e, "bytes", f + ".bytes", 0, INT64_MAX);
    bf.sha256 = c.hex64(e["sha256"], f + ".sha256", "64 lowercase hex digits");
    if (it.key() == "ple")
      bf.identity = c.hex64(Checker::at(e, "identity"), "files.ple.identity",
                            "64 lowercase hex digits (the .ple header's identity)");
    m.files[it.key()] = bf;
  }

  const json& methods = d["methods"];
  if (!methods.is_object()) c.fail("methods", "an object (role -> method)", methods);
  for (const char* role : {"prefill", "decode"}) {
    const json& e = Checker::at(methods, role);
    if (!e.is_object()) c.fail(std::string("methods.") + role, "an object", e);
    const json& name = e.contains("method") ? e["method"] : json(role);
    if (!name.is_string() || name.get<std::string>().empty())
      c.fail(std::string("methods.") + role + ".method", "a method name", name);
    (std::string(role) == "prefill" ? m.prefill_method : m.decode_method) = name.get<std::string>();
  }
  const json& exp = Checker::at(d, "export");
  if (exp.is_object() && Checker::at(exp, "program_revision").is_number_integer())
    m.program_revision = exp["program_revision"].get<int>();
  read_vision(c, d, m);
  read_audio(c, d, m);
  const json& tmpl = Checker::at(d, "chat_template");
  if (!tmpl.is_null() && !tmpl.is_string()) c.fail("chat_template", "a string or null", tmpl);
  if (tmpl.is_string()) m.chat_template = tmpl.get<std::string>();
  return m;
}

}  // namespace gemma_edge
