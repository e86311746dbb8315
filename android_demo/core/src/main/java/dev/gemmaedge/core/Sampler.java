// Picks the next token from last-position logits: greedy, or seeded temperature / top-k / top-p sampling.
package dev.gemmaedge.core;

import java.util.Arrays;

/**
 * The sampler of {@code runtime_py/sampling.py} (which specifies it), draw for draw: the same token from the
 * same logits and seed. SamplerTest replays that class's own picks, LoopGoldenTest the loop suite recorded with it.
 *
 * <p>Algorithm, for float32 logits l[0..V) (a NaN logit is an error; so is an infinite largest logit when
 * sampling, which would make every weight NaN):
 * <ol>
 *   <li><b>Greedy</b> when temperature &lt;= 0 or top_k == 1: the index of the largest logit, the lowest
 *       index on ties. No random draw is consumed.</li>
 *   <li>Otherwise order all indices by (logit descending, index ascending). If top_k &gt; 0 keep the
 *       first min(top_k, V) of them (top_k &lt;= 0 means no top-k).</li>
 *   <li>In float64: m = l[first kept]; w_j = exp((l_j - m) / temperature) for the kept j in that order
 *       (exp is fdlibm's, {@link StrictMath#exp}; Python's math.exp agrees to the last bit or within an ulp).</li>
 *   <li>If 0 &lt; top_p &lt; 1: total = w_0 + w_1 + ... (summed left to right in that order); keep the
 *       shortest prefix 0..n-1 whose running sum (left to right) is &gt;= top_p * total (at least one).</li>
 *   <li>S = sum of the kept w, left to right. One uniform draw u in [0, 1) from the generator below;
 *       r = u * S; the pick is the first kept j whose running sum (left to right) is &gt; r; if rounding
 *       leaves none, the last kept j.</li>
 * </ol>
 * <p>temperature and top_p are float32 values, widened exactly to float64 where they are used.
 *
 * <p>Random generator: SplitMix64 with state = seed (a signed 64-bit integer taken mod 2^64). Each draw:
 * state += 0x9E3779B97F4A7C15; z = state; z = (z ^ (z >>> 30)) * 0xBF58476D1CE4E5B9;
 * z = (z ^ (z >>> 27)) * 0x94D049BB133111EB; z ^= z >>> 31 (all mod 2^64, >>> unsigned);
 * u = (z >>> 11) * 2^-53. (This is exactly {@code java.util.SplittableRandom(seed).nextDouble()}.)
 * One draw per sampled (non-greedy) token.
 */
public final class Sampler {
    public final float temperature;
    public final int topK;
    public final float topP;
    public final long seed;
    private long state;

    public Sampler(float temperature, int topK, float topP, long seed) {
        if (Float.isNaN(temperature)) throw new IllegalArgumentException("sampler temperature: expected a number, found NaN");
        if (!(topP > 0f && topP <= 1f)) throw new IllegalArgumentException("sampler top_p: expected 0 < top_p <= 1, found " + topP);
        this.temperature = temperature;
        this.topK = topK;
        this.topP = topP;
        this.seed = seed;
        this.state = seed;
    }

    /** Greedy sampler: argmax, lowest index on ties. */
    public static Sampler greedy() {
        return new Sampler(0f, 0, 1f, 0L);
    }

    public boolean isGreedy() {
        return temperature <= 0f || topK == 1;
    }

    /** Index of the largest logit, lowest index on ties; NaN is refused. */
    public static int argmax(float[] logits) {
        int best = 0;
        for (int i = 0; i < logits.length; i++) {
            if (Float.isNaN(logits[i])) throw new IllegalArgumentException("logits[" + i + "]: expected a number, found NaN");
            if (logits[i] > logits[best]) best = i;
        }
        return best;
    }

    /** The next uniform double in [0, 1): one SplitMix64 step. */
    double nextDouble() {
        state += 0x9E3779B97F4A7C15L;
        long z = state;
        z = (z ^ (z >>> 30)) * 0xBF58476D1CE4E5B9L;
        z = (z ^ (z >>> 27)) * 0x94D049BB133111EBL;
        z ^= z >>> 31;
        return (z >>> 11) * 0x1.0p-53;
    }

    /** Picks a token id from {@code logits} [V]. */
    public int sample(float[] logits) {
        if (logits.length == 0) throw new IllegalArgumentException("logits: expected V > 0 values, found 0");
        if (isGreedy()) return argmax(logits);
        int[] order = topIndices(logits, topK > 0 ? Math.min(topK, logits.length) : logits.length);
        int n = order.length;
        double m = logits[order[0]];
        // exp((l - m) / t) needs a finite m: an infinite largest logit makes every weight NaN, and the pick
        // below would then fall to the last kept index, a token the logits never chose.
        if (Double.isInfinite(m))
            throw new IllegalArgumentException("logits[" + order[0] + "]: expected a finite largest logit to sample from, found " + (float) m);
        double[] w = new double[n];
        for (int j = 0; j < n; j++) w[j] = StrictMath.exp(((double) logits[order[j]] - m) / temperature);
        if (topP < 1f) {
            double total = 0;
            for (int j = 0; j < n; j++) total += w[j];
            double target = (double) topP * total, run = 0;
            int keep = n;
            for (int j = 0; j < n; j++) {
                run += w[j];
                if (run >= target) { keep = j + 1; break; }
            }
            n = keep;
        }
        double s = 0;
        for (int j = 0; j < n; j++) s += w[j];
        double r = nextDouble() * s, run = 0;
        for (int j = 0; j < n; j++) {
            run += w[j];
            if (run > r) return order[j];
        }
        return order[n - 1];
    }

    /** The first k indices in (logit descending, index ascending) order. */
    static int[] topIndices(float[] logits, int k) {
        int v = logits.length;
        for (int i = 0; i < v; i++)
            if (Float.isNaN(logits[i])) throw new IllegalArgumentException("logits[" + i + "]: expected a number, found NaN");
        // Sort keys: descending logit, then ascending index, packed so a plain long sort orders them.
        long[] keys = new long[v];
        for (int i = 0; i < v; i++) keys[i] = ((long) descKey(logits[i]) << 32) | i;
        Arrays.sort(keys);  // a full sort of V longs: simple, and ~10 ms for V = 262144 on a phone core
        int[] out = new int[k];
        for (int j = 0; j < k; j++) out[j] = (int) (keys[j] & 0xFFFFFFFFL);
        return out;
    }

    /** An unsigned-order-preserving int for descending float order (-0.0 and 0.0 compare equal). */
    private static int descKey(float f) {
        if (f == 0f) f = 0f;  // fold -0.0 into 0.0
        int bits = Float.floatToIntBits(f);
        int asc = bits < 0 ? ~bits : bits | 0x80000000;  // ascending unsigned order
        return ~asc ^ 0x80000000;                          // descending, as a signed int after the xor
    }
}
