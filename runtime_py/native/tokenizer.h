// Text in and out through the bundle's tokenizer.json, with the HF tokenizer of pytorch/tokenizers — the
// implementation ExecuTorch's own LLM runner uses — vendored in third_party/pytorch_tokenizers (why, and
// what was patched: third_party/pytorch_tokenizers/README.md). Ids equal HF `tokenizers`' (tests/test_native.py).
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <unordered_map>
#include <unordered_set>
#include <vector>

namespace tokenizers {
class HFTokenizer;
class TokenDecoder;
}

namespace gemma_edge {

class TextTokenizer {
 public:
  // Reads `path` (a tokenizer.json): its vocabulary and decoder now, the encoder at the first encode();
  // BadInput names the file when either cannot read it.
  explicit TextTokenizer(const std::string& path);
  ~TextTokenizer();

  // `text` (UTF-8) as ids, added tokens matched in it ("<bos>" in the text is the bos token); no bos is
  // prepended — TextCodec.encode(text, add_bos=False), i.e. HF encode(text, add_special_tokens=False).
  std::vector<int64_t> encode(const std::string& text) const;
  // HF decode(ids, skip_special_tokens=True): special added tokens dropped, byte tokens fused into UTF-8
  // (a run of byte tokens that is not valid UTF-8 becomes one U+FFFD per byte token, as HF's ByteFallback).
  std::string decode(const std::vector<int64_t>& ids) const;
  std::optional<int64_t> token_id(const std::string& token) const;  // a vocabulary or added token's id
  size_t vocab_size() const { return pieces_.size(); }

 private:
  std::string path_;
  tokenizers::HFTokenizer& encoder() const;   // tok_, loaded on first use
  mutable std::unique_ptr<tokenizers::HFTokenizer> tok_;
  std::shared_ptr<tokenizers::TokenDecoder> decoder_;  // pytorch/tokenizers' decoder of the file's "decoder"
  std::vector<std::string> pieces_;               // id -> token text as the vocabulary spells it
  std::unordered_map<std::string, int64_t> named_;  // added tokens' text (and vocabulary text they replaced) -> id
  std::unordered_set<int64_t> special_;           // added tokens with "special": true
  bool byte_fallback_ = false;
};

// The Gemma 4 (E2B/E4B) text-only chat prompt of one user turn, generation prompt included —
// runtime_py/tokenizer.render_gemma4_chat for [{"role": "user", "content": user}]:
//   <bos><|turn>user\n{user, surrounding whitespace stripped}<turn|>\n<|turn>model\n
std::string gemma4_chat_prompt(const std::string& user);

}  // namespace gemma_edge
