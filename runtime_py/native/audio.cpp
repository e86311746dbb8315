#include "audio.h"

#include <sndfile.h>

#include <algorithm>
#include <cmath>
#include <iterator>
#include <numeric>

#include "errors.h"

namespace gemma_edge {

int audio_mel_frames(int64_t samples) {
  const int64_t n = std::min<int64_t>(std::max<int64_t>(samples, 0), kAudioMaxSamples);
  return n < kAudioMinSamples ? 0 : int((n - kAudioMinSamples) / kAudioHop + 1);
}

int audio_soft_tokens(int64_t samples) {
  const int f = audio_mel_frames(samples);
  return f == 0 ? 0 : (f - 1) / 4 + 1;
}

int audio_program_frames(int64_t samples) {
  const int blocks = (audio_mel_frames(samples) + 3 + kAudioBlockRows - 1) / kAudioBlockRows;
  return kAudioBlockRows * blocks - 3;
}

std::vector<std::pair<int64_t, int64_t>> audio_split_samples(int64_t samples) {
  std::vector<std::pair<int64_t, int64_t>> pieces;
  for (int64_t s = 0; s < samples; s += kAudioMaxSamples) {
    const int64_t e = std::min<int64_t>(s + kAudioMaxSamples, samples);
    if (audio_soft_tokens(e - s) > 0) pieces.emplace_back(s, e);
  }
  return pieces;
}

DecodedAudio read_wav(const std::string& path) {
  SF_INFO info{};
  SNDFILE* f = sf_open(path.c_str(), SFM_READ, &info);
  if (!f)
    throw BadInput(path + ": expected a WAV file (RIFF/WAVE, PCM 8/16/24/32-bit or float): " + sf_strerror(nullptr));
  struct Close {
    SNDFILE* f;
    ~Close() { sf_close(f); }
  } close{f};
  const int major = info.format & SF_FORMAT_TYPEMASK, sub = info.format & SF_FORMAT_SUBMASK;
  // libsndfile reads many containers; the contract (and the Python host's scipy reader) takes WAV only
  if (major != SF_FORMAT_WAV && major != SF_FORMAT_WAVEX)
    throw BadInput(path + ": expected a WAV file (RIFF/WAVE, PCM 8/16/24/32-bit or float), found another audio "
                   "container (libsndfile major format " + std::to_string(major >> 16) + ")");
  const int subs[] = {SF_FORMAT_PCM_U8, SF_FORMAT_PCM_16, SF_FORMAT_PCM_24, SF_FORMAT_PCM_32, SF_FORMAT_FLOAT,
                      SF_FORMAT_DOUBLE};
  if (std::find(std::begin(subs), std::end(subs), sub) == std::end(subs))
    throw BadInput(path + ": expected WAV samples as PCM 8/16/24/32-bit or float, found another encoding "
                   "(compressed, or 8-bit signed)");
  if (info.frames <= 0 || info.channels < 1) throw BadInput(path + ": expected audio samples, found none");
  if (info.samplerate <= 0)
    throw BadInput(path + ": sample rate: expected a positive number of Hz, found " + std::to_string(info.samplerate));
  DecodedAudio a;
  a.rate = info.samplerate;
  a.channels = info.channels;
  a.frames = info.frames;
  // normalised floats: integer PCM over 2^(bits-1) (8-bit unsigned centred first), exactly the Python host's scaling
  sf_command(f, SFC_SET_NORM_FLOAT, nullptr, SF_TRUE);
  a.interleaved.resize(size_t(info.frames) * size_t(info.channels));
  const sf_count_t got = sf_readf_float(f, a.interleaved.data(), info.frames);
  if (got != info.frames)
    throw BadInput(path + ": expected " + std::to_string(info.frames) + " frames (the header's), read " +
                   std::to_string(got) + " (a truncated file)");
  return a;
}

namespace {

// Cephes i0's Chebyshev coefficients for [0, 8] (scipy.special.i0 is Cephes'): I0(x) = exp(x) · chbevl(x/2 − 2).
constexpr double kI0A[] = {
    -4.41534164647933937950E-18, 3.33079451882223809783E-17, -2.43127984654795469359E-16, 1.71539128555513303061E-15,
    -1.16853328779934516808E-14, 7.67618549860493561688E-14, -4.85644678311192946090E-13, 2.95505266312963983461E-12,
    -1.72682629144155570723E-11, 9.67580903537323691224E-11, -5.18979560163526290666E-10, 2.65982372468238665035E-9,
    -1.30002500998624804212E-8,  6.04699502254191894932E-8,  -2.67079385394061173391E-7, 1.11738753912010371815E-6,
    -4.41673835845875056359E-6,  1.64484480707288970893E-5,  -5.75419501008210370398E-5, 1.88502885095841655729E-4,
    -5.76375574538582365885E-4,  1.63947561694133579842E-3,  -4.32430999505057594430E-3, 1.05464603945949983183E-2,
    -2.37374148058994688156E-2,  4.93052842396707084878E-2,  -9.49010970480476444210E-2, 1.71620901522208775349E-1,
    -3.04682672343198398683E-1,  6.76795274409476084995E-1,
};

// I0 for 0 ≤ x ≤ 8 (the Kaiser window's arguments lie in [0, β], β = 5) as Cephes computes it, so that the taps are
// scipy's to the last bit (a power series differs in the last place of most of them), as the Java core's are.
double bessel_i0(double x) {
  const double y = std::fabs(x) / 2.0 - 2.0;
  double b0 = kI0A[0], b1 = 0.0, b2 = 0.0;
  for (size_t i = 1; i < std::size(kI0A); ++i) {
    b2 = b1;
    b1 = b0;
    b0 = y * b1 - b2 + kI0A[i];
  }
  return std::exp(std::fabs(x)) * (0.5 * (b0 - b2));
}

// numpy's pairwise summation (np.add.reduce over contiguous float64): 8 accumulators up to 128 values, halves above.
double pairwise_sum(const double* a, size_t n) {
  if (n < 8) {
    double r = 0.0;
    for (size_t i = 0; i < n; ++i) r += a[i];
    return r;
  }
  if (n <= 128) {
    double r[8];
    std::copy_n(a, 8, r);
    size_t i = 8;
    for (; i < n - n % 8; i += 8)
      for (size_t j = 0; j < 8; ++j) r[j] += a[i + j];
    double res = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]));
    for (; i < n; ++i) res += a[i];
    return res;
  }
  size_t n2 = n / 2;
  n2 -= n2 % 8;
  return pairwise_sum(a, n2) + pairwise_sum(a + n2, n - n2);
}

// scipy.signal.firwin(numtaps, cutoff, window=('kaiser', beta)): a windowed-sinc low-pass, scaled to unit DC gain
// by numpy's sum of its taps.
std::vector<double> firwin_kaiser(int numtaps, double cutoff, double beta) {
  const double alpha = 0.5 * (numtaps - 1), pi = M_PI;
  std::vector<double> h(static_cast<size_t>(numtaps));
  const double i0_beta = bessel_i0(beta);
  for (int n = 0; n < numtaps; ++n) {
    const double m = n - alpha, y = pi * (cutoff * m);
    const double sinc = y == 0 ? 1.0 : std::sin(y) / y;
    const double r = (n - alpha) / alpha;
    h[size_t(n)] = cutoff * sinc * (bessel_i0(beta * std::sqrt(1 - r * r)) / i0_beta);
  }
  const double s = pairwise_sum(h.data(), h.size());
  for (double& v : h) v /= s;
  return h;
}

// scipy's upfirdn output length for a filter of len_h taps over n_in samples
int64_t upfirdn_len(int64_t len_h, int64_t n_in, int64_t up, int64_t down) {
  const int64_t nt = (n_in + (len_h + (-len_h % up + up) % up) / up - 1) * up;
  return nt / down + (nt % down > 0);
}

}  // namespace

std::vector<double> resample_poly(const std::vector<double>& x, int up, int down) {
  const int g = std::gcd(up, down);
  up /= g;
  down /= g;
  if (up == 1 && down == 1) return x;
  const int64_t n_in = int64_t(x.size());
  const int64_t n_out = (n_in * up) / down + ((n_in * up) % down != 0);
  const int max_rate = std::max(up, down);
  const int half_len = 10 * max_rate;
  std::vector<double> h = firwin_kaiser(2 * half_len + 1, 1.0 / max_rate, 5.0);
  for (double& v : h) v *= up;
  // zero-pad the filter so the output samples sit at its centre (resample_poly's n_pre_pad / n_post_pad)
  const int64_t n_pre_pad = down - half_len % down;
  int64_t n_post_pad = 0;
  const int64_t n_pre_remove = (half_len + n_pre_pad) / down;
  while (upfirdn_len(int64_t(h.size()) + n_pre_pad + n_post_pad, n_in, up, down) < n_out + n_pre_remove) ++n_post_pad;
  std::vector<double> hp(size_t(n_pre_pad), 0.0);
  hp.insert(hp.end(), h.begin(), h.end());
  hp.resize(hp.size() + size_t(n_post_pad), 0.0);
  const int64_t len_h = int64_t(hp.size());
  // upfirdn: y[i] = Σ_k hp[k] · u[i·down − k], u the input with up − 1 zeros after each sample; only the taps that
  // meet a real sample are summed, newest sample first
  std::vector<double> y(static_cast<size_t>(n_out));
  for (int64_t i = 0; i < n_out; ++i) {
    const int64_t t = (i + n_pre_remove) * down;  // the position in the upsampled signal
    int64_t k = t % up, xi = t / up;               // the first tap that meets a sample, and that sample
    double acc = 0;
    for (; k < len_h && xi >= 0; k += up, --xi)
      if (xi < n_in) acc += hp[size_t(k)] * x[size_t(xi)];
    y[size_t(i)] = acc;
  }
  return y;
}

std::vector<float> to_mono_16k(const DecodedAudio& a, const std::string& where) {
  if (a.rate <= 0)
    throw BadInput(where + ": sample rate: expected a positive number of Hz, found " + std::to_string(a.rate));
  if (a.channels < 1 || a.interleaved.size() != size_t(a.frames) * size_t(a.channels))
    throw BadInput(where + ": samples: expected frames × channels values, found " +
                   std::to_string(a.interleaved.size()));
  for (float v : a.interleaved)
    if (!std::isfinite(v)) throw BadInput(where + ": samples: expected finite values, found NaN or infinity");
  // the channels' mean in float64, rounded to float32 (numpy's mean(axis=1, dtype=float64).astype(float32))
  std::vector<float> mono(size_t(a.frames));
  for (int64_t i = 0; i < a.frames; ++i) {
    double s = 0;
    for (int c = 0; c < a.channels; ++c) s += double(a.interleaved[size_t(i * a.channels + c)]);
    mono[size_t(i)] = a.channels == 1 ? a.interleaved[size_t(i)] : float(s / a.channels);
  }
  if (a.rate == kAudioSampleRate) return mono;
  const std::vector<double> y = resample_poly(std::vector<double>(mono.begin(), mono.end()), kAudioSampleRate, a.rate);
  return std::vector<float>(y.begin(), y.end());
}

std::vector<AudioClip> prepare_audio(const std::vector<float>& samples, const std::string& where) {
  const auto pieces = audio_split_samples(int64_t(samples.size()));
  if (pieces.empty())
    throw BadInput(where + ": audio: " + std::to_string(samples.size()) + " samples make no soft token (expected at "
                   "least " + std::to_string(kAudioMinSamples) + ", 10 ms at 16000 Hz)");
  std::vector<AudioClip> clips;
  for (auto [a, b] : pieces) {
    AudioClip c;
    c.start = a;
    c.samples = b - a;
    c.mel_frames = audio_mel_frames(c.samples);
    c.program_frames = audio_program_frames(c.samples);
    c.soft_tokens = audio_soft_tokens(c.samples);
    c.rows.assign(size_t(c.program_frames) * kAudioHop, 0.0f);
    std::copy_n(samples.begin() + a, size_t(c.mel_frames) * kAudioHop, c.rows.begin());
    c.valid.assign(size_t(c.program_frames), 0.0f);
    std::fill_n(c.valid.begin(), c.mel_frames, 1.0f);
    clips.push_back(std::move(c));
  }
  return clips;
}

}  // namespace gemma_edge
