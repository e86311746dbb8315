#include "tokenizer.h"

#if defined(__GLIBC__)
#include <malloc.h>
#endif

#include <pytorch/tokenizers/hf_tokenizer.h>
#include <pytorch/tokenizers/token_decoder.h>

#include <nlohmann/json.hpp>

#include "errors.h"
#include "text_file.h"

namespace gemma_edge {

TextTokenizer::~TextTokenizer() = default;

TextTokenizer::TextTokenizer(const std::string& path) : path_(path) {
  // the vocabulary and the added tokens' flags, which HFTokenizer keeps to itself (decode needs both)
  nlohmann::json d;
  try {
    d = nlohmann::json::parse(read_text_file("tokenizer", path, size_t(256) << 20));
    for (auto it = d.at("model").at("vocab").begin(); it != d.at("model").at("vocab").end(); ++it) {
      const int64_t id = it.value().get<int64_t>();
      if (id < 0 || id > (int64_t(1) << 24)) throw BadInput(path + ": model.vocab: id " + std::to_string(id) + " out of range");
      if (size_t(id) >= pieces_.size()) pieces_.resize(size_t(id) + 1);
      pieces_[size_t(id)] = it.key();
    }
    for (const auto& t : d.at("added_tokens")) {
      const int64_t id = t.at("id").get<int64_t>();
      if (id < 0 || id > (int64_t(1) << 24)) throw BadInput(path + ": added_tokens: id " + std::to_string(id) + " out of range");
      if (size_t(id) >= pieces_.size()) pieces_.resize(size_t(id) + 1);
      std::string content = t.at("content").get<std::string>();
      // a vocabulary text this added token replaces at its id still names that id
      if (!pieces_[size_t(id)].empty() && pieces_[size_t(id)] != content) named_.emplace(pieces_[size_t(id)], id);
      pieces_[size_t(id)] = content;
      named_[std::move(content)] = id;
      if (t.value("special", false)) special_.insert(id);
    }
    byte_fallback_ = d.at("model").value("byte_fallback", false);
    if (d.contains("decoder") && !d.at("decoder").is_null())
      decoder_ = tokenizers::TokenDecoderConfig().parse_json(d.at("decoder")).create();
  } catch (const std::runtime_error& e) {  // a decoder type pytorch/tokenizers does not implement
    throw BadInput(path + ": decoder: " + e.what());
  } catch (const nlohmann::json::exception& e) {
    throw BadInput(path + ": not a tokenizers JSON file (" + e.what() + ")");
  }
#if defined(__GLIBC__)
  // The parse leaves MBs of freed JSON nodes in the heap, which glibc keeps resident; give them back.
  malloc_trim(0);
#endif
}

tokenizers::HFTokenizer& TextTokenizer::encoder() const {
  // Loaded on the first encode: decoding needs only the pieces above, and HFTokenizer's own tables hold
  // tens of MB for a 262k vocabulary, which a caller that passes ids (--ids-file, an app tokenizing
  // elsewhere) should not pay for.
  if (!tok_) {
    auto tok = std::make_unique<tokenizers::HFTokenizer>();
    if (tok->load(path_) != tokenizers::Error::Ok)
      throw BadInput(path_ + ": the HF tokenizer of pytorch/tokenizers cannot load it (a model other than BPE, "
                     "or a normalizer, pre-tokenizer or decoder it does not implement)");
#if defined(__GLIBC__)
    malloc_trim(0);  // the freed nodes of HFTokenizer's parse of the file
#endif
    tok_ = std::move(tok);
  }
  return *tok_;
}

std::vector<int64_t> TextTokenizer::encode(const std::string& text) const {
  check_utf8(text, "prompt");
  auto r = encoder().encode(text, /*bos=*/0, /*eos=*/0);
  if (!r.ok())
    throw BadInput(path_ + ": cannot encode the prompt (tokenizers error " + std::to_string(int(r.error())) + ")");
  return std::vector<int64_t>(r.get().begin(), r.get().end());
}

std::optional<int64_t> TextTokenizer::token_id(const std::string& token) const {
  // Added tokens by map; a vocabulary token by a scan of the pieces: asked a handful of times per run (the
  // turn tokens), where a map of the whole vocabulary would hold tens of MB for the process's life.
  if (auto it = named_.find(token); it != named_.end()) return it->second;
  for (size_t id = 0; id < pieces_.size(); ++id)
    if (pieces_[id] == token) return int64_t(id);
  return std::nullopt;
}

namespace {
// "<0xAB>" -> 0xAB; -1 for any other token
int byte_token_value(const std::string& piece) {
  if (piece.size() != 6 || piece.compare(0, 3, "<0x") != 0 || piece[5] != '>') return -1;
  int v = 0;
  for (int k = 3; k < 5; ++k) {
    const char c = piece[size_t(k)];
    const int d = c >= '0' && c <= '9' ? c - '0' : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
    if (d < 0) return -1;
    v = v * 16 + d;
  }
  return v;
}
bool valid_utf8(const std::string& s) {
  try {
    check_utf8(s, "");
    return true;
  } catch (const BadInput&) {
    return false;
  }
}
}  // namespace

std::string TextTokenizer::decode(const std::vector<int64_t>& ids) const {
  std::string out, bytes;
  size_t byte_tokens = 0;
  auto flush = [&] {
    if (byte_tokens == 0) return;
    if (valid_utf8(bytes)) {
      out += bytes;
    } else {
      for (size_t k = 0; k < byte_tokens; ++k) out += "\xEF\xBF\xBD";  // U+FFFD
    }
    bytes.clear();
    byte_tokens = 0;
  };
  // Each token's text as the vocabulary spells it, through the file's decoder; HFTokenizer::decode(prev, cur)
  // is not used: it reads the token's text from the snapshot's packed StringIntegerMap, which returned
  // garbage for some ids of a tokenizer whose added tokens sit among the vocabulary's ids.
  for (int64_t id : ids) {
    if (id < 0 || size_t(id) >= pieces_.size()) throw BadInput("token id " + std::to_string(id) + ": outside " + path_);
    if (special_.count(id)) continue;
    const std::string& piece = pieces_[size_t(id)];
    const int b = byte_fallback_ ? byte_token_value(piece) : -1;
    if (b >= 0) {
      bytes += char(b);
      ++byte_tokens;
      continue;
    }
    flush();
    out += decoder_ ? decoder_->decode(piece) : piece;
  }
  flush();
  return out;
}

std::string gemma4_chat_prompt(const std::string& user) {
  const char* ws = " \t\n\r\f\v";
  const size_t a = user.find_first_not_of(ws), b = user.find_last_not_of(ws);
  const std::string content = a == std::string::npos ? "" : user.substr(a, b - a + 1);
  return "<bos><|turn>user\n" + content + "<turn|>\n<|turn>model\n";
}

}  // namespace gemma_edge
