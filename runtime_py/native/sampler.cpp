#include "sampler.h"

#include <algorithm>
#include <cmath>
#include <string>

#include "errors.h"

namespace gemma_edge {

double SplitMix64::next_double() {
  state_ += 0x9E3779B97F4A7C15ull;
  uint64_t z = state_;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  z ^= z >> 31;
  return double(z >> 11) * 0x1.0p-53;
}

int64_t argmax(const float* v, size_t n) {
  if (n == 0) throw BadInput("logits: expected V > 0 values, found 0");
  size_t best = 0;
  for (size_t i = 0; i < n; ++i) {
    if (std::isnan(v[i])) throw BadInput("logits[" + std::to_string(i) + "]: expected a number, found NaN");
    if (v[i] > v[best]) best = i;
  }
  return int64_t(best);
}

Sampler::Sampler(float temperature, int64_t top_k, float top_p, uint64_t seed)
    : temperature_(temperature), top_p_(top_p), top_k_(top_k), rng_(seed) {
  if (std::isnan(temperature)) throw BadInput("sampler temperature: expected a number, found NaN");
  if (!(top_p_ > 0.0 && top_p_ <= 1.0))
    throw BadInput("sampler top_p: expected 0 < top_p <= 1, found " + std::to_string(top_p_));
}

int64_t Sampler::operator()(const float* logits, size_t n) {
  if (is_greedy()) return argmax(logits, n);
  argmax(logits, n);  // refuses an empty or NaN-holding vector, naming the first NaN
  const size_t k = top_k_ > 0 ? std::min(size_t(top_k_), n) : n;
  // (logit descending, index ascending): a total order, so a partial sort keeps what a full sort would;
  // + 0.0f folds -0.0 into 0.0 (they compare equal either way)
  order_.resize(n);
  for (size_t i = 0; i < n; ++i) order_[i] = int64_t(i);
  auto before = [logits](int64_t a, int64_t b) {
    const float x = logits[a] + 0.0f, y = logits[b] + 0.0f;
    return x != y ? x > y : a < b;
  };
  std::partial_sort(order_.begin(), order_.begin() + std::ptrdiff_t(k), order_.end(), before);
  // float64 weights in order and their left-to-right running sums (np.cumsum)
  run_.resize(k);
  const double m = double(logits[order_[0]]);
  double sum = 0.0;
  for (size_t j = 0; j < k; ++j) {
    sum += std::exp((double(logits[order_[j]]) - m) / temperature_);
    run_[j] = sum;
  }
  size_t kept = k;
  if (top_p_ < 1.0) {
    const double threshold = top_p_ * run_[k - 1];
    for (size_t j = 0; j < k; ++j)
      if (run_[j] >= threshold) {
        kept = j + 1;
        break;
      }
  }
  const double r = rng_.next_double() * run_[kept - 1];
  for (size_t j = 0; j < kept; ++j)
    if (run_[j] > r) return order_[j];
  return order_[kept - 1];
}

}  // namespace gemma_edge
