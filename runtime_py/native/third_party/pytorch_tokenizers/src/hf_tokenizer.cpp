/*
 * Copyright (c) Meta Platforms, Inc. and affiliates.
 * All rights reserved.
 *
 * This source code is licensed under the BSD-style license found in the
 * LICENSE file in the root directory of this source tree.
 */
// @lint-ignore-every LICENSELINT

#include <pytorch/tokenizers/hf_tokenizer.h>

// Standard
#include <algorithm>
#include <cinttypes>
#include <filesystem>
#include <fstream>
#include <queue>
#include <string>
#include <vector>

// Third Party
#include <nlohmann/json.hpp>

namespace fs = std::filesystem;
using json = nlohmann::json;

namespace tokenizers {

// -------------------------private method end-------------------------------
// -------------------------public method start-------------------------------

Error HFTokenizer::load(const std::string& path) {
  // If this is a directory, look for tokenizer.json and tokenizer_config.json
  std::string model_json = path;
  std::string model_config_json = "";
  if (fs::is_directory(path)) {
    const fs::path root(path);
    model_json = root / "tokenizer.json";
    if (!fs::exists(model_json)) {
      TK_LOG(Info, "no tokenizer.json found in %s", path.c_str());
      return Error::LoadFailure;
    }
    const auto model_config_json_path = root / "tokenizer_config.json";
    if (fs::exists(model_config_json_path)) {
      model_config_json = model_config_json_path;
    }
  }

  // Load the tokenizer.json file
  std::ifstream file(model_json);
  if (!file) {
    TK_LOG(Info, "failed to open encoder file: %s", path.c_str());
    return Error::LoadFailure;
  }
  std::string contents(
      (std::istreambuf_iterator<char>(file)), std::istreambuf_iterator<char>());
  json parsed_json;
  try {
    parsed_json = json::parse(contents);
  } catch (const json::exception& e) {
    TK_LOG(Error, "Error parsing json file: %s", e.what());
    return Error::LoadFailure;
  }

  // Parse the special tokens
  try {
    std::vector<std::pair<std::string, std::uint64_t>> special_token_pairs;
    const auto& special_tokens = parsed_json.at("added_tokens");
    auto special_token_map = TK_UNWRAP(detail::build_token_map(
        special_tokens,
        [](const auto& it) -> std::string { return it.at("content"); },
        [](const auto& it) -> std::uint64_t { return it.at("id"); }));

    // Create special token regex to help later with encoding.
    special_token_regex_ =
        TK_UNWRAP(detail::build_special_token_regex(special_token_map));

    // Store for future use.
    special_token_map_.emplace(std::move(special_token_map));
  } catch (const json::out_of_range& e) {
    TK_LOG(Info, "Could not parse special tokens: %s", e.what());
    return Error::LoadFailure;
  }

  // Parse the standard tokens
  try {
    std::vector<std::pair<std::string, std::uint64_t>> token_pairs;
    const auto& vocab = parsed_json.at("/model/vocab"_json_pointer);
    for (const auto& entry : vocab.items()) {
      const std::string token = entry.key();
      const uint64_t token_id = entry.value();
      // Skip adding special tokens to the standard encoder/decoder
      if (!special_token_map_->tryGetString(token_id)) {
        token_pairs.emplace_back(token, token_id);
      }
    }

    auto token_map = TK_UNWRAP(detail::build_token_map(std::move(token_pairs)));
    token_map_.emplace(std::move(token_map));
  } catch (const json::out_of_range& e) {
    TK_LOG(Info, "Could not parse tokens: %s", e.what());
    return Error::LoadFailure;
  }

  // Set the vocab size to include special tokens
  vocab_size_ = token_map_->size() + special_token_map_->size();

  // Set up the normalizer (optional)
  try {
    TK_LOG(Info, "Setting up normalizer...");
    const auto& normalizer_json = parsed_json.at("normalizer");
    if (!normalizer_json.is_null()) {
      _normalizer = NormalizerConfig().parse_json(normalizer_json).create();
      TK_LOG(Info, "Normalizer set up");
    } else {
      TK_LOG(Info, "Normalizer field is null, skipping");
    }
  } catch (const json::out_of_range& e) {
    // No "Normalizer" field found
    TK_LOG(
        Info,
        "No 'Normalizer' field found in json, out of range error: %s",
        e.what());
  }

  // Set up the pre-tokenizer
  // gemma-edge patch 3: optional, as in HF (Gemma's tokenizer.json has "pre_tokenizer": null: the whole
  // normalized text between added tokens is one piece); upstream's later versions do the same.
  try {
    TK_LOG(Info, "Setting up pretokenizer...");
    if (parsed_json.contains("pre_tokenizer") &&
        !parsed_json.at("pre_tokenizer").is_null()) {
      _pretokenizer = PreTokenizerConfig()
                          .parse_json(parsed_json.at("pre_tokenizer"))
                          .create();
      TK_LOG(Info, "Pretokenizer set up");
    }
  } catch (const std::exception& e) {
    TK_LOG(Info, "Could not parse pre_tokenizer: %s", e.what());
    return Error::LoadFailure;
  }

  // gemma-edge patch 2: the BPE model's options (see hf_tokenizer.h)
  try {
    const auto& model = parsed_json.at("model");
    if (model.contains("type") && model.at("type") != "BPE") {
      TK_LOG(Error, "model.type: expected BPE");
      return Error::LoadFailure;
    }
    for (auto it = model.at("vocab").begin(); it != model.at("vocab").end(); ++it) {
      model_vocab_[it.key()] = it.value().get<uint64_t>();
    }
    byte_fallback_ = model.value("byte_fallback", false);
    fuse_unk_ = model.value("fuse_unk", false);
    ignore_merges_ = model.value("ignore_merges", false);
    if (model.contains("unk_token") && model.at("unk_token").is_string()) {
      const std::string unk = model.at("unk_token");
      const auto& vocab = model.at("vocab");
      if (vocab.contains(unk)) {
        unk_id_ = vocab.at(unk).get<uint64_t>();
      }
    }
    for (const char* key : {"continuing_subword_prefix", "end_of_word_suffix"}) {
      if (model.contains(key) && !model.at(key).is_null()) {
        TK_LOG(Error, "model.%s: not supported", key);
        return Error::LoadFailure;
      }
    }
  } catch (const std::exception& e) {
    TK_LOG(Error, "Could not parse the BPE model's options: %s", e.what());
    return Error::LoadFailure;
  }

  // Set up the decoder (optional)
  try {
    _decoder =
        TokenDecoderConfig().parse_json(parsed_json.at("decoder")).create();
  } catch (const json::out_of_range&) {
    // No decoder specified
  }

  // Parse the BPE merges
  // gemma-edge patch 1: the merge map by (left id, right id) -> (rank, merged id) over the model's whole
  // vocabulary, merges written as ["a", "b"] or as "a b" (both formats HF reads); a later duplicate of a
  // pair replaces an earlier one, as HF's map does.
  try {
    TK_LOG(Info, "Loading BPE merges...");
    const auto& merges = parsed_json.at("/model/merges"_json_pointer);
    const auto& vocab = parsed_json.at("/model/vocab"_json_pointer);
    merge_map_ = std::make_unique<detail::MergeMap>();
    uint64_t rank = 0;
    for (const auto& merge : merges) {
      std::string first, second;
      if (merge.is_array() && merge.size() == 2) {
        first = merge[0];
        second = merge[1];
      } else if (merge.is_string()) {
        const std::string text = merge;
        const size_t space = text.find(' ');
        if (space == std::string::npos) {
          TK_LOG(Error, "merge %" PRIu64 ": expected \"a b\"", rank);
          return Error::LoadFailure;
        }
        first = text.substr(0, space);
        second = text.substr(space + 1);
      } else {
        TK_LOG(Error, "merge %" PRIu64 ": expected a pair", rank);
        return Error::LoadFailure;
      }
      const std::string merged = first + second;
      if (!vocab.contains(first) || !vocab.contains(second) ||
          !vocab.contains(merged)) {
        TK_LOG(Error, "merge %" PRIu64 ": a token outside the vocabulary", rank);
        return Error::LoadFailure;
      }
      (*merge_map_)[std::make_pair(
          vocab.at(first).get<uint64_t>(), vocab.at(second).get<uint64_t>())] =
          std::make_pair(rank, vocab.at(merged).get<uint64_t>());
      ++rank;
    }
    TK_LOG(
        Info,
        "Loaded %" PRId64 " BPE merge rules",
        static_cast<int64_t>(merge_map_->size()));
  } catch (const std::exception& e) {
    TK_LOG(Error, "Could not parse merges: %s", e.what());
    return Error::LoadFailure;
  }

  // If a tokenizer config file is found, parse it to look up the eos/bos tokens
  if (!model_config_json.empty()) {
    // Load it and parse it as json
    std::ifstream config_file(model_config_json);
    if (!config_file) {
      TK_LOG(Error, "failed to open encoder file: %s", path.c_str());
      return Error::LoadFailure;
    }
    std::string config_contents(
        (std::istreambuf_iterator<char>(config_file)),
        std::istreambuf_iterator<char>());
    json parsed_config_json;
    try {
      parsed_config_json = json::parse(config_contents);
    } catch (const json::exception& e) {
      TK_LOG(Error, "Error parsing model config json json file: %s", e.what());
      return Error::LoadFailure;
    }

    // Pull out the token strings
    try {
      const std::string bos_token = parsed_config_json.contains("bos_token") &&
              !parsed_config_json["bos_token"].is_null()
          ? parsed_config_json["bos_token"].get<std::string>()
          : "";

      const std::string eos_token = parsed_config_json.contains("eos_token") &&
              !parsed_config_json["eos_token"].is_null()
          ? parsed_config_json["eos_token"].get<std::string>()
          : "";
      const auto bos_res = special_token_map_->tryGetInteger(bos_token);
      const auto eos_res = special_token_map_->tryGetInteger(eos_token);
      if (!bos_res) {
        TK_LOG(Error, "BOS token %s not in special tokens", bos_token.c_str());
        return Error::LoadFailure;
      }
      if (!eos_res) {
        TK_LOG(Error, "EOS token %s not in special tokens", eos_token.c_str());
        return Error::LoadFailure;
      }
      bos_tok_ = *bos_res;
      eos_tok_ = *eos_res;
    } catch (const json::out_of_range& e) {
      TK_LOG(Error, "Could not eos/bos from tokenizer config: %s", e.what());
      return Error::LoadFailure;
    }
  }

  // Otherwise, make an educated guess with the following logic:
  // 1. Look for special tokens with "bos"/"begin" or "eos"/"end" in them
  // 2. Sub-qualify with the word "text" if needed
  // 3. If EOS found, but BOS is not (or vice versa), assume they are the same
  else {
    std::vector<std::string_view> bos_candidates;
    std::vector<std::string_view> eos_candidates;
    for (std::size_t token_idx = 0; token_idx < special_token_map_->size();
         ++token_idx) {
      const auto [token, _] = special_token_map_->getElement(token_idx);
      if (token.find("bos") != std::string::npos ||
          token.find("begin") != std::string::npos) {
        bos_candidates.push_back(token);
      }
      if (token.find("eos") != std::string::npos ||
          token.find("end") != std::string::npos) {
        eos_candidates.push_back(token);
      }
    }

    if (bos_candidates.size() > 1) {
      const auto orig_candidates = std::move(bos_candidates);
      bos_candidates.clear();
      for (const auto& cand : orig_candidates) {
        if (cand.find("text") != std::string::npos) {
          bos_candidates.push_back(cand);
        }
      }
    }
    if (eos_candidates.size() > 1) {
      const auto orig_candidates = std::move(eos_candidates);
      eos_candidates.clear();
      for (const auto& cand : orig_candidates) {
        if (cand.find("text") != std::string::npos) {
          eos_candidates.push_back(cand);
        }
      }
    }

    // Use if a single candidate
    bool bos_found = false;
    bool eos_found = false;
    if (bos_candidates.size() == 1) {
      bos_found = true;
      bos_tok_ = *(special_token_map_->tryGetInteger(bos_candidates[0]));
    }
    if (eos_candidates.size() == 1) {
      eos_found = true;
      eos_tok_ = *(special_token_map_->tryGetInteger(eos_candidates[0]));
    }

    // Make them the same if only one found
    if (bos_found && !eos_found) {
      eos_tok_ = bos_tok_;
    } else if (!bos_found && eos_found) {
      bos_tok_ = eos_tok_;
    }
  }

  // Mark initialized once everything is done
  initialized_ = true;

  return Error::Ok;
}
// -------------------------public method end-----------------------------------
// -------------------------private method start--------------------------------

Error HFTokenizer::_encode(
    const std::string& input,
    std::vector<uint64_t>& ret,
    uint64_t& last_piece_token_len) const {
  // Apply normalization first if normalizer is available
  std::string normalized_input = input;
  if (_normalizer) {
    normalized_input = _normalizer->normalize(input);
  }

  // gemma-edge patch 3: no pre-tokenizer, one piece
  std::vector<std::string> pieces;
  if (_pretokenizer) {
    pieces = _pretokenizer->pre_tokenize(normalized_input);
  } else {
    pieces.push_back(normalized_input);
  }
  for (const auto& piece : pieces) {
    if (piece.empty()) {
      continue;
    }
    // gemma-edge patch 2: a whole piece skips the merges only with ignore_merges, as in HF's BPE
    if (ignore_merges_) {
      const auto result = token_map_->tryGetInteger(piece);
      if (result) {
        last_piece_token_len = 1;
        ret.push_back(*result);
        continue;
      }
    }
    auto tokens = TK_UNWRAP(byte_pair_encode_(piece, *token_map_));

    last_piece_token_len = tokens.size();
    ret.insert(ret.end(), tokens.begin(), tokens.end());
  }
  return Error::Ok;
}

void HFTokenizer::_decode(const std::string& input, std::string& ret) const {
  if (_decoder) {
    ret += _decoder->decode(input);
  } else {
    ret += input;
  }
}

Result<std::vector<uint64_t>> HFTokenizer::byte_pair_encode_(
    const std::string& piece,
    const detail::TokenMap& token_map) const {
  // gemma-edge patch 2: one path for every length (this snapshot's one-byte path returned a vector of
  // *id zeros, and refused a byte outside the vocabulary instead of falling back)
  (void)token_map;
  std::vector<uint64_t> tokens = _byte_pair_merge(piece, token_map, nullptr);
  if (tokens.empty()) {
    return Error::EncodeFailure;
  }
  return tokens;
}

// gemma-edge patch 2: HF's BPE::merge_word (tokenizers/src/models/bpe/model.rs) — each character its
// token; a character outside the vocabulary becomes its <0xXX> byte tokens when byte_fallback is on and all
// of them exist, else unk_token (consecutive ones fused into one with fuse_unk); then the merges.
// An empty result is an error: a character with neither a token, byte tokens nor an unk_token.
std::vector<uint64_t> HFTokenizer::_byte_pair_merge(
    const std::string& piece,
    const detail::TokenMap& /*ranks*/,
    std::function<uint64_t(uint64_t, uint64_t)> /*func*/) const {
  HFWord word;
  bool last_was_unk = false;
  size_t i = 0;
  while (i < piece.size()) {
    const unsigned char byte = static_cast<unsigned char>(piece[i]);
    size_t char_len = 1;
    if ((byte & 0xE0) == 0xC0) {
      char_len = 2;
    } else if ((byte & 0xF0) == 0xE0) {
      char_len = 3;
    } else if ((byte & 0xF8) == 0xF0) {
      char_len = 4;
    }
    char_len = std::min(char_len, piece.size() - i);
    const std::string_view ch(piece.data() + i, char_len);
    i += char_len;
    if (auto it = model_vocab_.find(std::string(ch)); it != model_vocab_.end()) {
      word.add(it->second, char_len);
      last_was_unk = false;
      continue;
    }
    if (byte_fallback_) {
      std::vector<uint64_t> bytes;
      for (unsigned char b : ch) {
        char hex[8];
        std::snprintf(hex, sizeof hex, "<0x%02X>", b);
        auto it = model_vocab_.find(hex);
        if (it == model_vocab_.end()) {
          break;
        }
        bytes.push_back(it->second);
      }
      if (bytes.size() == char_len) {
        for (uint64_t id : bytes) {
          word.add(id, 1);
        }
        last_was_unk = false;
        continue;
      }
    }
    if (!unk_id_) {
      TK_LOG(Error, "a character outside the vocabulary, and no unk_token");
      return {};
    }
    if (fuse_unk_ && last_was_unk) {
      word.byte_lengths.back() += char_len;
    } else {
      word.add(*unk_id_, char_len);
    }
    last_was_unk = true;
  }
  word.merge_all(*merge_map_);
  return word.tokens;
}

// gemma-edge patch 1: HF's Word::merge_all (tokenizers/src/models/bpe/word.rs), dropout off: a heap of
// (rank, position), lowest rank first, leftmost on ties; an entry whose pair has changed since it was
// pushed is skipped.
void HFWord::merge_all(const detail::MergeMap& merge_map) {
  const size_t n = tokens.size();
  if (n < 2) {
    return;
  }
  std::vector<int64_t> prev(n), next(n);
  std::vector<size_t> len(byte_lengths);
  for (size_t k = 0; k < n; ++k) {
    prev[k] = int64_t(k) - 1;
    next[k] = k + 1 < n ? int64_t(k + 1) : -1;
  }
  struct Merge {
    uint64_t rank;
    size_t pos;
    uint64_t new_id;
  };
  auto later = [](const Merge& a, const Merge& b) {
    return a.rank != b.rank ? a.rank > b.rank : a.pos > b.pos;
  };
  std::priority_queue<Merge, std::vector<Merge>, decltype(later)> queue(later);
  for (size_t k = 0; k + 1 < n; ++k) {
    auto it = merge_map.find({tokens[k], tokens[k + 1]});
    if (it != merge_map.end()) {
      queue.push({it->second.first, k, it->second.second});
    }
  }
  while (!queue.empty()) {
    const Merge top = queue.top();
    queue.pop();
    if (len[top.pos] == 0 || next[top.pos] == -1) {
      continue;
    }
    const size_t right = size_t(next[top.pos]);
    auto it = merge_map.find({tokens[top.pos], tokens[right]});
    if (it == merge_map.end() || it->second.second != top.new_id) {
      continue;
    }
    tokens[top.pos] = top.new_id;
    len[top.pos] += len[right];
    len[right] = 0;
    next[top.pos] = next[right];
    if (next[right] != -1) {
      prev[size_t(next[right])] = int64_t(top.pos);
    }
    if (prev[top.pos] >= 0) {
      const size_t p = size_t(prev[top.pos]);
      auto pit = merge_map.find({tokens[p], tokens[top.pos]});
      if (pit != merge_map.end()) {
        queue.push({pit->second.first, p, pit->second.second});
      }
    }
    if (next[top.pos] != -1) {
      auto nit = merge_map.find({tokens[top.pos], tokens[size_t(next[top.pos])]});
      if (nit != merge_map.end()) {
        queue.push({nit->second.first, top.pos, nit->second.second});
      }
    }
  }
  std::vector<uint64_t> out_tokens;
  std::vector<size_t> out_lengths;
  for (int64_t k = 0; k != -1; k = next[size_t(k)]) {
    out_tokens.push_back(tokens[size_t(k)]);
    out_lengths.push_back(len[size_t(k)]);
  }
  tokens = std::move(out_tokens);
  byte_lengths = std::move(out_lengths);
}

} // namespace tokenizers
