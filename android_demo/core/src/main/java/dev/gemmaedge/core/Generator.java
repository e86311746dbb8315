// The generation loop: one batched PLE fetch per prompt, chunked prefill, then sample → fetchOne → decode per token.
package dev.gemmaedge.core;

import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;

/**
 * Drives a {@link Program} over a prompt. Per prompt exactly one {@link PleRows#fetch} (all prompt ids,
 * duplicates included; the store dedupes), sliced per prefill chunk; per generated token that is fed
 * back exactly one {@link PleRows#fetchOne}. The token that ends generation (eos or max_new_tokens) is
 * not decoded, so it costs no fetch.
 *
 * <p>The loop is gemma_edge/contract/loop.md's, as runtime_py/session.py and the native runner run it,
 * and is held to the shared golden suite tests/golden/loop.json (LoopGoldenTest): refuse up front
 * (a {@link GenerationException}) an empty prompt or one with an id outside [0, vocab_size),
 * max_new_tokens &lt; 1, or prompt + max_new_tokens &gt; max_context; logits = prefill chunks; repeat
 * { check logits are [vocab_size]; tok = sampler.sample(logits); emit tok; stop if stopOnEos and tok is
 * eos, or max_new_tokens reached; row = fetchOne(tok); logits = decode(tok, pos, row); pos++ }. The first
 * token is checked like every other: an eos straight after the prompt ends generation after one token.
 */
public final class Generator {

    /** Why generation ended. */
    public enum StopReason { EOS, MAX_NEW_TOKENS, CANCELLED }

    /** Receives each generated token as it is picked. */
    public interface Listener {
        /**
         * @param token the id; {@code textDelta} the new decoded text (may be empty while a UTF-8
         *     sequence is incomplete, or when no tokenizer is set); {@code stats} timings so far
         */
        void onToken(int token, String textDelta, Stats stats);
    }

    /** Timings and counters, updated as generation runs. */
    public static final class Stats {
        public int promptTokens, generatedTokens;
        public long pleFetchNanos, prefillNanos, firstTokenNanos, decodeNanos, totalNanos;
        public long pleBytesRequested, plePagesTouched;   // filled when the store is a PleFile
        public StopReason stopReason;

        /** Decode tokens a second (tokens after the first over the time spent decoding them). */
        public double decodeTokPerS() { return generatedTokens > 1 && decodeNanos > 0 ? (generatedTokens - 1) / (decodeNanos / 1e9) : 0; }

        public double prefillTokPerS() { return prefillNanos > 0 ? promptTokens / (prefillNanos / 1e9) : 0; }

        @Override
        public String toString() {
            return String.format("prompt %d tok, prefill %.1f ms (%.1f tok/s), PLE fetch %.2f ms, first token %.1f ms, "
                            + "%d generated, decode %.2f tok/s, PLE %d bytes / %d pages, stop %s",
                    promptTokens, prefillNanos / 1e6, prefillTokPerS(), pleFetchNanos / 1e6, firstTokenNanos / 1e6,
                    generatedTokens, decodeTokPerS(), pleBytesRequested, plePagesTouched, stopReason);
        }
    }

    /** Result of one {@link #generate} call. */
    public static final class Result {
        public final int[] tokens;      // generated ids, the stopping eos included
        public final String text;       // decoded generated text (special tokens skipped), "" without a tokenizer
        public final Stats stats;

        Result(int[] tokens, String text, Stats stats) {
            this.tokens = tokens;
            this.text = text;
            this.stats = stats;
        }
    }

    private final Program program;
    private final PleRows ple;
    private final int vocabSize;
    private final int maxContext;
    private final int prefillChunk;
    private final int[] eosIds;
    private final Tokenizer tokenizer;  // may be null
    private volatile boolean cancelled;

    /**
     * @param vocabSize the program's vocabulary: prompt ids must lie in [0, vocabSize) and every logits
     *     vector must have vocabSize values, so no id outside the table reaches the program or the PLE store
     */
    public Generator(Program program, PleRows ple, int vocabSize, int maxContext, int prefillChunk, int[] eosIds, Tokenizer tokenizer) {
        if (vocabSize <= 0) throw new IllegalArgumentException("vocab_size: expected > 0, found " + vocabSize);
        if (maxContext < 1) throw new IllegalArgumentException("max_context: expected >= 1, found " + maxContext);
        if (prefillChunk <= 0) throw new IllegalArgumentException("prefill_chunk: expected > 0, found " + prefillChunk);
        if (eosIds.length == 0) throw new IllegalArgumentException("eos_token_ids: expected at least one id, found none");
        for (int i = 0; i < eosIds.length; i++)
            if (eosIds[i] < 0 || eosIds[i] >= vocabSize)
                throw new IllegalArgumentException("eos_token_ids[" + i + "]: expected an id in [0, " + vocabSize + ") (vocab_size), found " + eosIds[i]);
        this.program = program;
        this.ple = ple;
        this.vocabSize = vocabSize;
        this.maxContext = maxContext;
        this.prefillChunk = prefillChunk;
        this.eosIds = eosIds.clone();
        this.tokenizer = tokenizer;
    }

    /**
     * Builds a generator from a checked bundle's manifest. Prompt ids are bounded by the manifest's
     * vocab_size before they reach the program, so that must be the program's own vocabulary: one decode
     * step of token 0 at position 0 (every prompt rewrites that cache slot) shows it, and a manifest
     * claiming more ids than the program's embedding holds is refused here, before any prompt runs.
     */
    public static Generator forBundle(Manifest m, Program program, PleRows ple, Tokenizer tokenizer) throws Exception {
        if (ple.rowFloats() != m.numLayers * m.pleDim)
            throw new IllegalArgumentException(m.source + ": PLE rows: expected num_layers * ple_dim = " + m.numLayers * m.pleDim
                    + " floats, found " + ple.rowFloats() + " in the PLE store");
        float[] probe = program.decode(0, 0, new float[ple.rowFloats()]);
        if (probe == null || probe.length != m.vocabSize)
            throw new IllegalArgumentException(m.source + ": vocab_size: expected " + (probe == null ? "the program's vocabulary" : String.valueOf(probe.length))
                    + " (the program's logits for one step), found " + m.vocabSize);
        return new Generator(program, ple, m.vocabSize, m.maxContext, m.prefillChunk, m.eosTokenIds, tokenizer);
    }

    /** Asks a running {@link #generate} to stop after the current step. */
    public void cancel() { cancelled = true; }

    private boolean isEos(int t) {
        for (int e : eosIds) if (e == t) return true;
        return false;
    }

    /**
     * Generates up to {@code maxNewTokens} tokens after {@code prompt} (positions 0..). Refused before any
     * work, as Python's Session refuses them: an empty prompt, an id outside [0, vocab_size),
     * maxNewTokens &lt; 1, and prompt.length + maxNewTokens &gt; max_context (the whole run must fit the
     * context, rather than stop at its end with an answer cut short).
     */
    public Result generate(int[] prompt, int maxNewTokens, Sampler sampler, Listener listener) throws Exception {
        return generate(prompt, maxNewTokens, sampler, true, listener);
    }

    /** As {@link #generate(int[], int, Sampler, Listener)}; with {@code stopOnEos} false an eos is fed back like any token. */
    public Result generate(int[] prompt, int maxNewTokens, Sampler sampler, boolean stopOnEos, Listener listener) throws Exception {
        if (prompt.length == 0) throw new GenerationException("prompt", "prompt: expected at least one token id, found 0");
        for (int i = 0; i < prompt.length; i++)
            if (prompt[i] < 0 || prompt[i] >= vocabSize)
                throw new GenerationException("prompt", "prompt token " + i + ": expected an id in [0, " + vocabSize + ") (vocab_size), found " + prompt[i]);
        if (maxNewTokens < 1) throw new GenerationException("max_new_tokens", "max_new_tokens: expected >= 1, found " + maxNewTokens);
        long total = (long) prompt.length + maxNewTokens;
        if (total > maxContext)
            throw new GenerationException("context", "context: prompt " + prompt.length + " + max_new_tokens " + maxNewTokens + " = "
                    + total + " tokens, expected <= max_context " + maxContext);
        cancelled = false;
        Stats st = new Stats();
        st.promptTokens = prompt.length;
        long t0 = System.nanoTime();
        PleFile pf = ple instanceof PleFile ? (PleFile) ple : null;
        long bytes0 = pf != null ? pf.totalBytesRequested() : 0, pages0 = pf != null ? pf.totalPagesTouched() : 0;

        // One batched fetch for the whole prompt, then slices per prefill chunk.
        float[] rows = ple.fetch(prompt);
        int lp = ple.rowFloats();
        if (rows.length != prompt.length * lp)
            throw new IllegalStateException("PLE fetch: expected " + prompt.length * lp + " floats, found " + rows.length);
        long t1 = System.nanoTime();
        st.pleFetchNanos = t1 - t0;
        float[] logits = null;
        for (int start = 0; start < prompt.length; start += prefillChunk) {
            int end = Math.min(prompt.length, start + prefillChunk);
            logits = program.prefill(Arrays.copyOfRange(prompt, start, end), start,
                    Arrays.copyOfRange(rows, start * lp, end * lp));
        }
        st.prefillNanos = System.nanoTime() - t1;

        List<Integer> out = new ArrayList<>();
        TextStream text = new TextStream(tokenizer);
        int pos = prompt.length;
        long tDecode0 = 0;
        while (true) {
            // The program's vocabulary bounds what the sampler can pick: a program whose logits differ
            // from the manifest's vocab_size would hand the PLE store and itself ids it does not have.
            if (logits == null || logits.length != vocabSize)
                throw new IllegalStateException("program logits at position " + (pos - 1) + ": expected " + vocabSize
                        + " floats (vocab_size), found " + (logits == null ? "none" : String.valueOf(logits.length)));
            int tok = sampler.sample(logits);
            out.add(tok);
            st.generatedTokens = out.size();
            long now = System.nanoTime();
            if (out.size() == 1) { st.firstTokenNanos = now - t0; tDecode0 = now; } else st.decodeNanos = now - tDecode0;
            st.totalNanos = now - t0;
            if (pf != null) { st.pleBytesRequested = pf.totalBytesRequested() - bytes0; st.plePagesTouched = pf.totalPagesTouched() - pages0; }
            if (stopOnEos && isEos(tok)) st.stopReason = StopReason.EOS;
            else if (out.size() >= maxNewTokens) st.stopReason = StopReason.MAX_NEW_TOKENS;
            else if (cancelled) st.stopReason = StopReason.CANCELLED;
            String delta = isEos(tok) ? "" : text.push(tok);
            if (listener != null) listener.onToken(tok, delta, st);
            if (st.stopReason != null) break;
            float[] row = ple.fetchOne(tok);
            logits = program.decode(tok, pos, row);
            pos++;
        }
        int[] toks = new int[out.size()];
        for (int i = 0; i < toks.length; i++) toks[i] = out.get(i);
        st.totalNanos = System.nanoTime() - t0;
        return new Result(toks, text.text(), st);
    }

    /** Incremental detokenization: decodes all ids so far and emits the new suffix, holding back an incomplete UTF-8 tail. */
    static final class TextStream {
        private final Tokenizer tok;
        private final List<Integer> ids = new ArrayList<>();
        private String emitted = "";

        TextStream(Tokenizer tok) { this.tok = tok; }

        String push(int id) {
            if (tok == null) return "";
            ids.add(id);
            int[] a = new int[ids.size()];
            for (int i = 0; i < a.length; i++) a[i] = ids.get(i);
            String full = tok.decode(a, true);
            if (full.endsWith("\uFFFD")) return "";  // wait for the rest of a multi-byte character
            String delta = full.startsWith(emitted) ? full.substring(emitted.length()) : full;
            emitted = full;
            return delta;
        }

        String text() {
            if (tok == null) return "";
            int[] a = new int[ids.size()];
            for (int i = 0; i < a.length; i++) a[i] = ids.get(i);
            return tok.decode(a, true);
        }
    }
}
