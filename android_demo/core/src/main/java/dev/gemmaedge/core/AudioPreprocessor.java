// Audio into the audio program's inputs: PCM decoded, downmixed, resampled to 16 kHz as scipy does, cut into clips.
package dev.gemmaedge.core;

import java.util.ArrayList;
import java.util.Collections;
import java.util.List;
import java.util.Locale;

/**
 * The Java host's audio preprocessing: {@code gemma_edge/contract/audio.py} (the framing, the 30 s clip limit) and
 * {@code runtime_py/audio.py} ({@code to_mono_16k}, {@code prepare_audio}), whose native twin is
 * {@code runtime_py/native/}. AudioPreprocessorGoldenTest replays the golden file Python writes,
 * tests/golden/audio_preprocess.json: samples that were not resampled are equal bit for bit, resampled ones within
 * one float32 ulp (the filter runs in double on every host; only the last rounding may differ).
 *
 * <ol>
 *   <li>{@link #decodePcm}: a WAV data chunk's little-endian samples as floats — integer PCM scaled by its full
 *       range (8-bit unsigned, centred at 128), float as it is — interleaved, as scipy's wavfile.read and the
 *       runtime's scaling give them.</li>
 *   <li>{@link #toMono16k}: the channels' mean (in double, channel order, as numpy's {@code mean(axis=1,
 *       dtype=float64)}), then, at another rate, scipy's {@code resample_poly} with its default Kaiser (β = 5)
 *       low-pass filter and zero padding, computed in double as scipy computes it.</li>
 *   <li>{@link #clips}: consecutive 30 s clips ({@code split_samples}; a tail too short for a soft token dropped),
 *       each as the audio program's rows of {@link #HOP} samples and their validity mask; the log-mel front end runs
 *       inside the program.</li>
 * </ol>
 */
public final class AudioPreprocessor {
    public static final int SAMPLE_RATE = 16_000;       // Hz, what the tower was trained on
    public static final int HOP = 160;                  // samples between frames (10 ms): one row of the program's input
    public static final int FRAME = 320;                // samples per frame (20 ms)
    public static final int MIN_SAMPLES = FRAME / 2 + 1;   // 161: the fewest samples that give one frame
    public static final int MAX_SAMPLES = 30 * SAMPLE_RATE;   // 30 s, 750 soft tokens: the processor's max_length
    public static final int FRAMES_PER_TOKEN = 4;       // two stride-2 convolutions
    public static final int BLOCK = 12;                 // soft tokens per attention block of the tower
    public static final int BLOCK_ROWS = FRAMES_PER_TOKEN * BLOCK;   // 48 rows per block of soft tokens
    public static final String BOA = "<|audio>", AUDIO = "<|audio|>", EOA = "<audio|>";
    public static final long BOA_ID = 256000, AUDIO_TOKEN_ID = 258881, EOA_ID = 258883;   // Gemma 4's vocabulary
    private static final double KAISER_BETA = 5.0;      // resample_poly's default window ('kaiser', 5.0)

    private AudioPreprocessor() {}

    // ------------------------------------------------------------------------------------------------------------
    // Framing (contract/audio.py)
    // ------------------------------------------------------------------------------------------------------------

    private static long checkCount(long n) {
        if (n < 0) throw new IllegalArgumentException("audio samples: expected a count >= 0, found " + n);
        return n;
    }

    /** Valid frames of a clip of n samples at 16 kHz: frame i needs sample 160·i + 160 (0 below 161 samples). */
    public static int melFrames(long samples) {
        long n = Math.min(checkCount(samples), MAX_SAMPLES);
        return n < MIN_SAMPLES ? 0 : (int) ((n - MIN_SAMPLES) / HOP + 1);
    }

    /** Soft tokens of a clip of n samples (at most 30 s): one per four frames, rounded up. */
    public static int softTokens(long samples) {
        int f = melFrames(samples);
        return f == 0 ? 0 : (f - 1) / FRAMES_PER_TOKEN + 1;
    }

    /** Blocks of {@link #BLOCK} soft tokens the program computes for a clip: enough rows (48m − 3) for its frames. */
    public static int programBlocks(long samples) {
        return (melFrames(samples) + 3 + BLOCK_ROWS - 1) / BLOCK_ROWS;
    }

    /** Rows of {@link #HOP} samples the program takes for a clip: 48m − 3, its frames then rows its mask marks invalid. */
    public static int programFrames(long samples) {
        return BLOCK_ROWS * programBlocks(samples) - 3;
    }

    /**
     * {start, stop} of each clip long audio is cut into: consecutive {@link #MAX_SAMPLES} pieces, the last one
     * shorter; a last piece too short for one soft token is dropped (it would be an empty span).
     */
    public static List<long[]> splitSamples(long samples) {
        long n = checkCount(samples);
        List<long[]> out = new ArrayList<>();
        for (long s = 0; s < n; s += MAX_SAMPLES) {
            long e = Math.min(s + MAX_SAMPLES, n);
            if (softTokens(e - s) > 0) out.add(new long[] {s, e});
        }
        return out;
    }

    /**
     * One clip on the audio program's grid (runtime_py/audio.py {@code PreparedClip}): the program's inputs and the
     * soft tokens it becomes, the first of its outputs.
     */
    public static final class Clip {
        public final float[] rows;      // [programFrames, 160]: the clip's first 160 · melFrames samples, then zeros
        public final float[] valid;     // [programFrames]: 1.0 for its frames, 0.0 after
        public final int softTokens;    // the first softTokens of the program's 12m outputs are the clip's
        public final int samples;       // samples of the clip (at most MAX_SAMPLES)
        public final long start;        // where it starts in its item's 16 kHz samples

        Clip(float[] rows, float[] valid, int softTokens, int samples, long start) {
            this.rows = rows;
            this.valid = valid;
            this.softTokens = softTokens;
            this.samples = samples;
            this.start = start;
        }

        /** Rows the program takes: 48m − 3. */
        public int programFrames() { return valid.length; }
    }

    /**
     * 16 kHz mono samples as the clips they are encoded as: one per 30 s, a tail too short for a token dropped.
     * Audio that makes no clip at all (under 161 samples) is refused.
     */
    public static List<Clip> clips(float[] samples16k) {
        checkFinite(samples16k, "audio samples");
        List<long[]> pieces = splitSamples(samples16k.length);
        if (pieces.isEmpty())
            throw new IllegalArgumentException(String.format(Locale.ROOT, "audio: %d samples make no soft token (expected at least %d, "
                    + "%.0f ms at %d Hz)", samples16k.length, MIN_SAMPLES, MIN_SAMPLES * 1000.0 / SAMPLE_RATE, SAMPLE_RATE));
        List<Clip> out = new ArrayList<>();
        for (long[] p : pieces) {
            int n = (int) (p[1] - p[0]);
            int frames = melFrames(n), total = programFrames(n);
            float[] rows = new float[total * HOP];
            System.arraycopy(samples16k, (int) p[0], rows, 0, frames * HOP);
            float[] valid = new float[total];
            for (int i = 0; i < frames; i++) valid[i] = 1f;
            out.add(new Clip(rows, valid, softTokens(n), n, p[0]));
        }
        return Collections.unmodifiableList(out);
    }

    // ------------------------------------------------------------------------------------------------------------
    // Decoding a WAV data chunk
    // ------------------------------------------------------------------------------------------------------------

    /** A WAV data chunk's sample encodings: little-endian integers of 8 (unsigned), 16, 24 or 32 bits, or IEEE float32. */
    public enum Encoding {
        U8(1), S16(2), S24(3), S32(4), F32(4);

        public final int bytes;   // per sample

        Encoding(int bytes) { this.bytes = bytes; }

        /**
         * The encoding of a WAV fmt chunk: format tag 1 (PCM) with 8, 16, 24 or 32 bits a sample, or 3 (IEEE float)
         * with 32; WAVE_FORMAT_EXTENSIBLE (0xFFFE) passes its sub-format's tag.
         */
        public static Encoding ofWav(int formatTag, int bitsPerSample) {
            if (formatTag == 1) {
                switch (bitsPerSample) {
                    case 8: return U8;
                    case 16: return S16;
                    case 24: return S24;
                    case 32: return S32;
                    default: break;
                }
            } else if (formatTag == 3 && bitsPerSample == 32) {
                return F32;
            }
            throw new IllegalArgumentException("WAV format: expected PCM (tag 1) of 8, 16, 24 or 32 bits or float (tag 3) of 32 bits, "
                    + "found tag " + formatTag + " with " + bitsPerSample + " bits");
        }
    }

    /**
     * The interleaved samples of {@code length} bytes of a WAV data chunk at {@code offset}, as floats: u8 as
     * (v − 128) / 128, signed integers as v / 2^(bits−1) (s32: v rounded to float first, as numpy's astype does),
     * f32 as it is. The bytes must be whole frames of {@code channels} samples.
     */
    public static float[] decodePcm(byte[] data, int offset, int length, Encoding encoding, int channels) {
        if (channels < 1) throw new IllegalArgumentException("audio channels: expected >= 1, found " + channels);
        if (offset < 0 || length < 0 || offset > data.length - length)
            throw new IllegalArgumentException("audio data: expected bytes [" + offset + ", " + ((long) offset + length) + ") of "
                    + data.length + ", found them outside");
        int frame = encoding.bytes * channels;
        if (length % frame != 0)
            throw new IllegalArgumentException("audio data: expected whole frames of " + channels + " x " + encoding.bytes + " = " + frame
                    + " bytes (" + encoding + "), found " + length + " bytes (" + length % frame + " left over)");
        float[] out = new float[length / encoding.bytes];
        for (int i = 0, p = offset; i < out.length; i++, p += encoding.bytes) {
            switch (encoding) {
                case U8:
                    out[i] = ((data[p] & 0xff) - 128f) / 128f;
                    break;
                case S16:
                    out[i] = (float) (short) ((data[p] & 0xff) | (data[p + 1] << 8)) / 32768f;
                    break;
                case S24:   // sign-extended from its top byte
                    out[i] = (float) ((data[p] & 0xff) | (data[p + 1] & 0xff) << 8 | data[p + 2] << 16) / 8388608f;
                    break;
                case S32:
                    out[i] = (float) le32(data, p) / 2147483648f;
                    break;
                default:   // F32
                    out[i] = Float.intBitsToFloat(le32(data, p));
                    break;
            }
        }
        return out;
    }

    /** As {@link #decodePcm(byte[], int, int, Encoding, int)} over the whole array. */
    public static float[] decodePcm(byte[] data, Encoding encoding, int channels) {
        return decodePcm(data, 0, data.length, encoding, channels);
    }

    private static int le32(byte[] b, int p) {
        return (b[p] & 0xff) | (b[p + 1] & 0xff) << 8 | (b[p + 2] & 0xff) << 16 | b[p + 3] << 24;
    }

    // ------------------------------------------------------------------------------------------------------------
    // Downmix and resampling (runtime_py/audio.py to_mono_16k)
    // ------------------------------------------------------------------------------------------------------------

    private static void checkFinite(float[] x, String what) {
        for (int i = 0; i < x.length; i++)
            if (!Float.isFinite(x[i]))
                throw new IllegalArgumentException(what + ": expected finite values, found " + x[i] + " at sample " + i);
    }

    /**
     * Interleaved samples of {@code channels} channels at {@code rate} Hz as 16 kHz mono: the channels' mean, then,
     * at another rate, {@link #resamplePoly} by 16000 / rate reduced to lowest terms.
     */
    public static float[] toMono16k(float[] interleaved, int channels, int rate) {
        if (rate <= 0) throw new IllegalArgumentException("audio sample rate: expected a positive number of Hz, found " + rate);
        if (channels < 1) throw new IllegalArgumentException("audio channels: expected >= 1, found " + channels);
        if (interleaved.length % channels != 0)
            throw new IllegalArgumentException("audio samples: expected whole frames of " + channels + " channel(s), found "
                    + interleaved.length + " samples (" + interleaved.length % channels + " left over)");
        checkFinite(interleaved, "audio samples");
        int n = interleaved.length / channels;
        // numpy's mean(axis=1, dtype=float64): the sum in channel order, divided by the count, then rounded to float32
        float[] mono = new float[n];
        if (channels == 1) {
            System.arraycopy(interleaved, 0, mono, 0, n);
        } else {
            for (int i = 0; i < n; i++) {
                double s = 0;
                for (int c = 0; c < channels; c++) s += interleaved[i * channels + c];
                mono[i] = (float) (s / channels);
            }
        }
        if (rate == SAMPLE_RATE) return mono;
        int g = gcd(rate, SAMPLE_RATE);
        double[] x = new double[n];
        for (int i = 0; i < n; i++) x[i] = mono[i];
        double[] y = resamplePoly(x, SAMPLE_RATE / g, rate / g);
        float[] out = new float[y.length];
        for (int i = 0; i < y.length; i++) out[i] = (float) y[i];
        return out;
    }

    private static int gcd(int a, int b) {
        while (b != 0) {
            int t = a % b;
            a = b;
            b = t;
        }
        return a;
    }

    /**
     * scipy.signal.resample_poly(x, up, down) with its defaults (window ('kaiser', 5.0), padtype 'constant', cval 0),
     * in double, the same operations in the same order (scipy 1.17: _signaltools.py resample_poly, _upfirdn.py and
     * _upfirdn_apply.pyx): the filter firwin(2·half_len + 1, 1 / max(up, down)) with half_len = 10·max(up, down),
     * times up, zero-padded so the output samples sit at its centre; the polyphase upfirdn; the ceil(n·up / down)
     * samples after the padding's delay.
     */
    public static double[] resamplePoly(double[] x, int up, int down) {
        if (up < 1 || down < 1) throw new IllegalArgumentException("resample: expected up and down >= 1, found " + up + " and " + down);
        int g = gcd(up, down);
        up /= g;
        down /= g;
        if (up == 1 && down == 1) return x.clone();
        long nIn = x.length;
        long nOut = (nIn * up + down - 1) / down;
        if (nOut == 0) return new double[0];
        int maxRate = Math.max(up, down);
        int halfLen = 10 * maxRate;
        double[] h = firwinKaiser(2 * halfLen + 1, 1.0 / maxRate, KAISER_BETA);
        for (int i = 0; i < h.length; i++) h[i] *= up;
        int nPrePad = down - halfLen % down;
        int nPostPad = 0;
        long nPreRemove = (halfLen + nPrePad) / down;
        while (upfirdnLength(h.length + nPrePad + nPostPad, nIn, up, down) < nOut + nPreRemove) nPostPad++;
        double[] padded = new double[nPrePad + h.length + nPostPad];
        System.arraycopy(h, 0, padded, nPrePad, h.length);
        long kept = nPreRemove + nOut;
        if (kept > Integer.MAX_VALUE) throw new IllegalArgumentException("resample: " + nIn + " samples make too many (" + nOut + ")");
        double[] y = upfirdn(padded, x, up, down, (int) kept);
        double[] out = new double[(int) nOut];
        System.arraycopy(y, (int) nPreRemove, out, 0, (int) nOut);
        return out;
    }

    /** _upfirdn_apply.pyx _output_len: ceil(((n − 1)·up + len_h) / down). */
    static long upfirdnLength(long lenH, long nIn, long up, long down) {
        return ((nIn - 1) * up + lenH - 1) / down + 1;
    }

    /**
     * The first {@code lenOut} samples of upfirdn(h, x, up, down) with zero extension (_upfirdn_apply.pyx
     * _apply_impl): h stored phase by phase, each phase's taps reversed; output k sums x[j]·tap in increasing j.
     */
    static double[] upfirdn(double[] h, double[] x, int up, int down, int lenOut) {
        int hLen = h.length + Math.floorMod(-h.length, up);   // _pad_h: zero-padded to a multiple of up
        int perPhase = hLen / up;
        double[] flip = new double[hLen];   // flip[p·perPhase + j] = h[p + (perPhase − 1 − j)·up]
        for (int p = 0; p < up; p++)
            for (int j = 0; j < perPhase; j++) {
                int k = p + (perPhase - 1 - j) * up;
                flip[p * perPhase + j] = k < h.length ? h[k] : 0.0;
            }
        double[] out = new double[lenOut];
        long lenX = x.length, paddedLen = lenX + perPhase - 1;
        long xIdx = 0, t = 0;
        int yIdx = 0;
        while (xIdx < paddedLen && yIdx < lenOut) {
            int hIdx = (int) (t * perPhase);
            long from = xIdx - perPhase + 1;
            if (from < 0) {   // zero padding on the left: skip the taps it meets
                hIdx -= (int) from;
                from = 0;
            }
            long to = Math.min(xIdx, lenX - 1);   // zero padding on the right adds nothing
            double acc = 0.0;
            for (long j = from; j <= to; j++) acc = acc + x[(int) j] * flip[hIdx++];
            out[yIdx++] = acc;
            t += down;
            xIdx += t / up;
            t %= up;
        }
        return out;
    }

    /**
     * scipy.signal.firwin(numtaps, cutoff, window=('kaiser', beta)): the windowed sinc low-pass, scaled to a DC gain
     * of 1 by numpy's pairwise sum of its taps. np.sinc is sin(πx) / (πx) with πx = 0 taken as machine epsilon.
     */
    static double[] firwinKaiser(int numtaps, double cutoff, double beta) {
        double alpha = 0.5 * (numtaps - 1);
        double[] h = new double[numtaps];
        double[] win = kaiser(numtaps, beta);
        for (int n = 0; n < numtaps; n++) {
            double m = n - alpha;
            double y = Math.PI * (cutoff * m);
            if (y == 0) y = Math.ulp(1.0);   // np.finfo(float64).eps
            h[n] = cutoff * (StrictMath.sin(y) / y) * win[n];
        }
        double s = pairwiseSum(h, 0, numtaps);   // h · cos(0) = h: the passband starts at 0
        for (int n = 0; n < numtaps; n++) h[n] /= s;
        return h;
    }

    /** scipy.signal.windows.kaiser(M, beta, sym=True): I0(β·sqrt(1 − ((n − α) / α)²)) / I0(β), α = (M − 1) / 2. */
    static double[] kaiser(int m, double beta) {
        double[] w = new double[m];
        if (m == 1) {
            w[0] = 1.0;
            return w;
        }
        double alpha = (m - 1) / 2.0, i0b = besselI0(beta);
        for (int n = 0; n < m; n++) {
            double r = (n - alpha) / alpha;
            w[n] = besselI0(beta * Math.sqrt(1 - r * r)) / i0b;
        }
        return w;
    }

    // Cephes i0's Chebyshev coefficients for [0, 8] (scipy.special.i0 is Cephes'): I0(x) = exp(x) · chbevl(x/2 − 2).
    private static final double[] I0_A = {
        -4.41534164647933937950E-18, 3.33079451882223809783E-17, -2.43127984654795469359E-16, 1.71539128555513303061E-15,
        -1.16853328779934516808E-14, 7.67618549860493561688E-14, -4.85644678311192946090E-13, 2.95505266312963983461E-12,
        -1.72682629144155570723E-11, 9.67580903537323691224E-11, -5.18979560163526290666E-10, 2.65982372468238665035E-9,
        -1.30002500998624804212E-8, 6.04699502254191894932E-8, -2.67079385394061173391E-7, 1.11738753912010371815E-6,
        -4.41673835845875056359E-6, 1.64484480707288970893E-5, -5.75419501008210370398E-5, 1.88502885095841655729E-4,
        -5.76375574538582365885E-4, 1.63947561694133579842E-3, -4.32430999505057594430E-3, 1.05464603945949983183E-2,
        -2.37374148058994688156E-2, 4.93052842396707084878E-2, -9.49010970480476444210E-2, 1.71620901522208775349E-1,
        -3.04682672343198398683E-1, 6.76795274409476084995E-1,
    };

    /** The modified Bessel function I0 for 0 ≤ x ≤ 8 (the Kaiser window's arguments lie in [0, β]), as Cephes computes it. */
    static double besselI0(double x) {
        x = Math.abs(x);
        if (x > 8.0) throw new IllegalArgumentException("I0: expected an argument in [0, 8] (a Kaiser beta <= 8), found " + x);
        double y = x / 2.0 - 2.0;
        double b0 = I0_A[0], b1 = 0.0, b2 = 0.0;
        for (int i = 1; i < I0_A.length; i++) {
            b2 = b1;
            b1 = b0;
            b0 = y * b1 - b2 + I0_A[i];
        }
        return StrictMath.exp(x) * (0.5 * (b0 - b2));
    }

    /** numpy's pairwise summation (np.add.reduce over contiguous float64): 8 accumulators up to 128 values, halves above. */
    static double pairwiseSum(double[] a, int off, int n) {
        if (n < 8) {
            double r = 0.0;
            for (int i = 0; i < n; i++) r += a[off + i];
            return r;
        }
        if (n <= 128) {
            double[] r = new double[8];
            System.arraycopy(a, off, r, 0, 8);
            int i = 8;
            for (; i < n - n % 8; i += 8)
                for (int j = 0; j < 8; j++) r[j] += a[off + i + j];
            double res = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]));
            for (; i < n; i++) res += a[off + i];
            return res;
        }
        int n2 = n / 2;
        n2 -= n2 % 8;
        return pairwiseSum(a, off, n2) + pairwiseSum(a, off + n2, n - n2);
    }
}
