// The generation loop: one batched PLE fetch per prompt, chunked prefill, then sample → fetchOne → decode per token.
package dev.gemmaedge.core;

import java.util.ArrayList;
import java.util.Arrays;
import java.util.Collections;
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
 *
 * <p>A prompt may come with images (loop.md "Images"), for a generator given a {@link Vision}: the checks run
 * prompt (the ids as given) → images (a tower, no frame id in the prompt, none or one placeholder per image) →
 * image budget → max_new_tokens → context (the expanded prompt); then each placeholder becomes boi + n_k × image +
 * eoi (no placeholder: every image's span after a leading bos), the images are encoded in order (the encoder is
 * released right after), the one fetch is of the expanded prompt with each image id as the pad id, and every
 * prefill chunk gets its slice of the soft tokens (zeros at text positions).
 *
 * <p>A prompt may come with audio items too (loop.md "Audio"), for a generator given an {@link Audio}: each item its
 * clips of at most 30 s ({@link AudioPreprocessor#clips}). The audio check (a tower, no boa or eoa in the prompt, none
 * or one placeholder per item, clips in every item) comes after the images' and before max_new_tokens; each audio
 * placeholder becomes, per clip of its item, boa + n × audio + eoa (no placeholder: every item's spans after a
 * leading bos and the image spans that follow it); the clips are encoded after the images, in order, their encoder
 * released right after; the one fetch has the pad id at audio positions too, and the soft rows go to the audio
 * positions clip after clip.
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
        public int images;                                // images encoded for the prompt
        public int audioClips, audioTokens;               // audio clips encoded for it, and their soft tokens
        public long encodeNanos;                          // their encoding (images and clips), within firstTokenNanos
        public StopReason stopReason;

        /** Decode tokens a second (tokens after the first over the time spent decoding them). */
        public double decodeTokPerS() { return generatedTokens > 1 && decodeNanos > 0 ? (generatedTokens - 1) / (decodeNanos / 1e9) : 0; }

        public double prefillTokPerS() { return prefillNanos > 0 ? promptTokens / (prefillNanos / 1e9) : 0; }

        @Override
        public String toString() {
            return String.format("prompt %d tok, %d image(s) and %d audio clip(s) (%d soft tokens) encoded in %.1f ms, prefill %.1f ms "
                            + "(%.1f tok/s), PLE fetch %.2f ms, first token %.1f ms, %d generated, decode %.2f tok/s, PLE %d bytes / %d pages, stop %s",
                    promptTokens, images, audioClips, audioTokens, encodeNanos / 1e6, prefillNanos / 1e6, prefillTokPerS(), pleFetchNanos / 1e6,
                    firstTokenNanos / 1e6, generatedTokens, decodeTokPerS(), pleBytesRequested, plePagesTouched, stopReason);
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

    /**
     * What the loop needs to take images: the encoder, the ids that frame an image (manifest
     * {@code vision.image_tokens}), the pad id whose PLE row an image position gets (manifest pad_token_id, 0 when
     * null), the bos id after which images without placeholders go, the soft-token width H and the budgets the
     * encoder has a method for.
     */
    public static final class Vision {
        public final VisionEncoder encoder;
        public final int boi, image, eoi, padId, bosId, hidden;
        private final int[] budgets;

        public Vision(VisionEncoder encoder, int boi, int image, int eoi, int padId, int bosId, int hidden, int[] budgets) {
            if (encoder == null) throw new IllegalArgumentException("vision encoder: expected one, found null");
            if (boi == image || image == eoi || boi == eoi)
                throw new IllegalArgumentException("image_tokens: expected three distinct ids, found boi " + boi + ", image " + image + ", eoi " + eoi);
            if (hidden < 1) throw new IllegalArgumentException("vision hidden_size: expected >= 1, found " + hidden);
            if (budgets.length == 0) throw new IllegalArgumentException("vision budgets: expected at least one, found none");
            this.encoder = encoder;
            this.boi = boi;
            this.image = image;
            this.eoi = eoi;
            this.padId = padId;
            this.bosId = bosId;
            this.hidden = hidden;
            this.budgets = budgets.clone();
        }

        /** The bundle's: its vision entry, pad id and program width (refused unless they agree). */
        public static Vision forBundle(Manifest m, VisionEncoder encoder) {
            if (m.vision == null) throw new IllegalArgumentException(m.source + ": vision: expected a vision entry, found none (a text-only bundle)");
            if (m.softEmbedsWidth != m.vision.hiddenSize)
                throw new IllegalArgumentException(m.source + ": vision.hidden_size: expected " + m.softEmbedsWidth
                        + " (the width of the program's soft_embeds input; 0: it takes none), found " + m.vision.hiddenSize);
            return new Vision(encoder, m.vision.boi, m.vision.image, m.vision.eoi, m.padTokenId, m.bosTokenId, m.vision.hiddenSize,
                              m.vision.budgets);
        }

        boolean hasBudget(int b) {
            for (int x : budgets) if (x == b) return true;
            return false;
        }
    }

    /**
     * What the loop needs to take audio: the encoder, the ids that frame a clip (manifest {@code audio.audio_tokens}),
     * the pad id whose PLE row an audio position gets (manifest pad_token_id, 0 when null), the bos id after which
     * audio without placeholders goes (after the image spans that follow it), and the soft-token width H.
     */
    public static final class Audio {
        public final AudioEncoder encoder;
        public final int boa, audio, eoa, padId, bosId, hidden;

        public Audio(AudioEncoder encoder, int boa, int audio, int eoa, int padId, int bosId, int hidden) {
            if (encoder == null) throw new IllegalArgumentException("audio encoder: expected one, found null");
            if (boa == audio || audio == eoa || boa == eoa)
                throw new IllegalArgumentException("audio_tokens: expected three distinct ids, found boa " + boa + ", audio " + audio + ", eoa " + eoa);
            if (hidden < 1) throw new IllegalArgumentException("audio hidden_size: expected >= 1, found " + hidden);
            this.encoder = encoder;
            this.boa = boa;
            this.audio = audio;
            this.eoa = eoa;
            this.padId = padId;
            this.bosId = bosId;
            this.hidden = hidden;
        }

        /** The bundle's: its audio entry, pad id and program width (refused unless they agree). */
        public static Audio forBundle(Manifest m, AudioEncoder encoder) {
            if (m.audio == null)
                throw new IllegalArgumentException(m.source + ": audio: expected an audio entry, found none (a bundle exported without an audio tower)");
            if (m.softEmbedsWidth != m.audio.hiddenSize)
                throw new IllegalArgumentException(m.source + ": audio.hidden_size: expected " + m.softEmbedsWidth
                        + " (the width of the program's soft_embeds input; 0: it takes none), found " + m.audio.hiddenSize);
            return new Audio(encoder, m.audio.boa, m.audio.audio, m.audio.eoa, m.padTokenId, m.bosTokenId, m.audio.hiddenSize);
        }
    }

    private final Program program;
    private final PleRows ple;
    private final int vocabSize;
    private final int maxContext;
    private final int prefillChunk;
    private final int[] eosIds;
    private final Tokenizer tokenizer;  // may be null
    private final Vision vision;        // null: the model takes no images
    private final Audio audio;          // null: the model takes no audio
    private final int softWidth;        // H of the soft rows (vision's and audio's agree); 0 without either
    private volatile boolean cancelled;

    /**
     * @param vocabSize the program's vocabulary: prompt ids must lie in [0, vocabSize) and every logits
     *     vector must have vocabSize values, so no id outside the table reaches the program or the PLE store
     */
    public Generator(Program program, PleRows ple, int vocabSize, int maxContext, int prefillChunk, int[] eosIds, Tokenizer tokenizer) {
        this(program, ple, vocabSize, maxContext, prefillChunk, eosIds, tokenizer, null);
    }

    /** As the text-only constructor; {@code vision} (may be null) lets prompts carry images. */
    public Generator(Program program, PleRows ple, int vocabSize, int maxContext, int prefillChunk, int[] eosIds, Tokenizer tokenizer,
                     Vision vision) {
        this(program, ple, vocabSize, maxContext, prefillChunk, eosIds, tokenizer, vision, null);
    }

    /** As the text-only constructor; {@code vision} and {@code audio} (each may be null) let prompts carry images and audio. */
    public Generator(Program program, PleRows ple, int vocabSize, int maxContext, int prefillChunk, int[] eosIds, Tokenizer tokenizer,
                     Vision vision, Audio audio) {
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
        if (vision != null) {
            String[] names = {"image_tokens.boi", "image_tokens.image", "image_tokens.eoi", "pad_token_id", "bos_token_id"};
            int[] ids = {vision.boi, vision.image, vision.eoi, vision.padId, vision.bosId};
            for (int k = 0; k < ids.length; k++)
                if (ids[k] < 0 || ids[k] >= vocabSize)
                    throw new IllegalArgumentException(names[k] + ": expected an id in [0, " + vocabSize + ") (vocab_size), found " + ids[k]);
        }
        if (audio != null) {
            String[] names = {"audio_tokens.boa", "audio_tokens.audio", "audio_tokens.eoa", "pad_token_id", "bos_token_id"};
            int[] ids = {audio.boa, audio.audio, audio.eoa, audio.padId, audio.bosId};
            for (int k = 0; k < ids.length; k++)
                if (ids[k] < 0 || ids[k] >= vocabSize)
                    throw new IllegalArgumentException(names[k] + ": expected an id in [0, " + vocabSize + ") (vocab_size), found " + ids[k]);
        }
        if (vision != null && audio != null) {
            // one soft_embeds input takes both towers' rows; an id of both would be expanded twice
            if (vision.hidden != audio.hidden)
                throw new IllegalArgumentException("audio hidden_size: expected " + vision.hidden + " (the vision tower's: one soft_embeds width), found " + audio.hidden);
            for (int t : new int[] {audio.boa, audio.audio, audio.eoa})
                if (t == vision.boi || t == vision.image || t == vision.eoi)
                    throw new IllegalArgumentException("audio_tokens: expected ids none of image_tokens holds, found boa " + audio.boa + ", audio "
                            + audio.audio + ", eoa " + audio.eoa + " beside boi " + vision.boi + ", image " + vision.image + ", eoi " + vision.eoi);
        }
        this.vision = vision;
        this.audio = audio;
        this.softWidth = vision != null ? vision.hidden : audio != null ? audio.hidden : 0;
    }

    /**
     * Builds a generator from a checked bundle's manifest. Prompt ids are bounded by the manifest's
     * vocab_size before they reach the program, so that must be the program's own vocabulary: one decode
     * step of token 0 at position 0 (every prompt rewrites that cache slot) shows it, and a manifest
     * claiming more ids than the program's embedding holds is refused here, before any prompt runs.
     */
    public static Generator forBundle(Manifest m, Program program, PleRows ple, Tokenizer tokenizer) throws Exception {
        return forBundle(m, program, ple, tokenizer, null);
    }

    /**
     * As {@link #forBundle(Manifest, Program, PleRows, Tokenizer)}, with the bundle's vision program behind
     * {@code encoder} (null: prompts with images are refused). The tokenizer's {@code <|image|>}, when it has one,
     * must be the manifest's image id, or a chat's placeholders would not be the ids the program splices at.
     */
    public static Generator forBundle(Manifest m, Program program, PleRows ple, Tokenizer tokenizer, VisionEncoder encoder) throws Exception {
        return forBundle(m, program, ple, tokenizer, encoder, null);
    }

    /**
     * As {@link #forBundle(Manifest, Program, PleRows, Tokenizer, VisionEncoder)}, with the bundle's audio program
     * behind {@code audioEncoder} (null: prompts with audio are refused). The tokenizer's {@code <|audio|>}, when it has
     * one, must be the manifest's audio id, as its {@code <|image|>} must be the image id.
     */
    public static Generator forBundle(Manifest m, Program program, PleRows ple, Tokenizer tokenizer, VisionEncoder encoder,
                                      AudioEncoder audioEncoder) throws Exception {
        Vision vision = encoder == null ? null : Vision.forBundle(m, encoder);
        Audio audio = audioEncoder == null ? null : Audio.forBundle(m, audioEncoder);
        Integer placeholder = tokenizer == null ? null : tokenizer.tokenToId(Chat.IMAGE);
        if (vision != null && placeholder != null && placeholder != vision.image)
            throw new IllegalArgumentException(m.source + ": vision.image_tokens.image: expected " + placeholder + " (the id of "
                    + Chat.IMAGE + " in " + tokenizer.source() + "), found " + vision.image);
        Integer audioPlaceholder = tokenizer == null ? null : tokenizer.tokenToId(Chat.AUDIO);
        if (audio != null && audioPlaceholder != null && audioPlaceholder != audio.audio)
            throw new IllegalArgumentException(m.source + ": audio.audio_tokens.audio: expected " + audioPlaceholder + " (the id of "
                    + Chat.AUDIO + " in " + tokenizer.source() + "), found " + audio.audio);
        if (ple.rowFloats() != m.numLayers * m.pleDim)
            throw new IllegalArgumentException(m.source + ": PLE rows: expected num_layers * ple_dim = " + m.numLayers * m.pleDim
                    + " floats, found " + ple.rowFloats() + " in the PLE store");
        float[] probe = program.decode(0, 0, new float[ple.rowFloats()]);
        if (probe == null || probe.length != m.vocabSize)
            throw new IllegalArgumentException(m.source + ": vocab_size: expected " + (probe == null ? "the program's vocabulary" : String.valueOf(probe.length))
                    + " (the program's logits for one step), found " + m.vocabSize);
        return new Generator(program, ple, m.vocabSize, m.maxContext, m.prefillChunk, m.eosTokenIds, tokenizer, vision, audio);
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
        return generate(prompt, Collections.emptyList(), maxNewTokens, sampler, stopOnEos, listener);
    }

    /**
     * As {@link #generate(int[], int, Sampler, boolean, Listener)}, the prompt with {@code images} (preprocessed, in
     * prompt order): one placeholder id per image in {@code prompt}, or none (the images then go first, after a
     * leading bos). Refused before any work, with field "images" or "image_budget", as loop.md says.
     */
    public Result generate(int[] prompt, List<ImagePreprocessor.Prepared> images, int maxNewTokens, Sampler sampler, boolean stopOnEos,
                           Listener listener) throws Exception {
        return generate(prompt, images, Collections.emptyList(), maxNewTokens, sampler, stopOnEos, listener);
    }

    /**
     * As {@link #generate(int[], List, int, Sampler, boolean, Listener)}, the prompt with {@code audioItems} too: per item
     * (in prompt order) its clips ({@link AudioPreprocessor#clips}), one audio placeholder id per item in
     * {@code prompt}, or none (the items then go first, after a leading bos and the images' spans that follow it).
     * Refused before any work, with field "audio", as loop.md says.
     */
    public Result generate(int[] prompt, List<ImagePreprocessor.Prepared> images, List<List<AudioPreprocessor.Clip>> audioItems,
                           int maxNewTokens, Sampler sampler, boolean stopOnEos, Listener listener) throws Exception {
        if (prompt.length == 0) throw new GenerationException("prompt", "prompt: expected at least one token id, found 0");
        for (int i = 0; i < prompt.length; i++)
            if (prompt[i] < 0 || prompt[i] >= vocabSize)
                throw new GenerationException("prompt", "prompt token " + i + ": expected an id in [0, " + vocabSize + ") (vocab_size), found " + prompt[i]);
        int[] ids = images.isEmpty() ? prompt : expandImages(prompt, images);
        List<AudioPreprocessor.Clip> clips = new ArrayList<>();
        if (!audioItems.isEmpty()) ids = expandAudio(ids, audioItems, clips);
        if (maxNewTokens < 1) throw new GenerationException("max_new_tokens", "max_new_tokens: expected >= 1, found " + maxNewTokens);
        long total = (long) ids.length + maxNewTokens;
        if (total > maxContext)
            throw new GenerationException("context", "context: prompt " + ids.length + " + max_new_tokens " + maxNewTokens + " = "
                    + total + " tokens, expected <= max_context " + maxContext);
        cancelled = false;
        Stats st = new Stats();
        st.promptTokens = ids.length;
        long t0 = System.nanoTime();
        PleFile pf = ple instanceof PleFile ? (PleFile) ple : null;
        long bytes0 = pf != null ? pf.totalBytesRequested() : 0, pages0 = pf != null ? pf.totalPagesTouched() : 0;

        float[] soft = images.isEmpty() && clips.isEmpty() ? null : softEmbeds(ids, images, clips);
        long tEncoded = System.nanoTime();
        st.images = images.size();
        st.audioClips = clips.size();
        for (AudioPreprocessor.Clip c : clips) st.audioTokens += c.softTokens;
        st.encodeNanos = tEncoded - t0;
        // One batched fetch for the whole prompt, then slices per prefill chunk; an image or audio position's PLE row
        // is the pad id's (transformers' splice: its token half is the pad row, its context half the soft token).
        int[] fetched = ids;
        if (soft != null) {
            fetched = ids.clone();
            for (int i = 0; i < fetched.length; i++) {
                if (vision != null && fetched[i] == vision.image) fetched[i] = vision.padId;
                else if (audio != null && fetched[i] == audio.audio) fetched[i] = audio.padId;
            }
        }
        float[] rows = ple.fetch(fetched);
        int lp = ple.rowFloats();
        if (rows.length != ids.length * lp)
            throw new IllegalStateException("PLE fetch: expected " + ids.length * lp + " floats, found " + rows.length);
        long t1 = System.nanoTime();
        st.pleFetchNanos = t1 - tEncoded;
        float[] logits = null;
        for (int start = 0; start < ids.length; start += prefillChunk) {
            int end = Math.min(ids.length, start + prefillChunk);
            int[] chunk = Arrays.copyOfRange(ids, start, end);
            float[] chunkRows = Arrays.copyOfRange(rows, start * lp, end * lp);
            logits = soft == null ? program.prefill(chunk, start, chunkRows)
                    : program.prefill(chunk, start, chunkRows, Arrays.copyOfRange(soft, start * softWidth, end * softWidth));
        }
        st.prefillNanos = System.nanoTime() - t1;

        List<Integer> out = new ArrayList<>();
        TextStream text = new TextStream(tokenizer);
        int pos = ids.length;
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

    /**
     * loop.md's images check, then the expansion: the prompt with each image's span (boi, n_k × image, eoi) at its
     * placeholder, or every span after a leading bos when the prompt has no placeholder.
     */
    private int[] expandImages(int[] prompt, List<ImagePreprocessor.Prepared> images) {
        if (vision == null)
            throw new GenerationException("images", "images: this model has no vision tower here (a bundle exported without one, "
                    + "or a host that loads none), found " + images.size() + " image(s)");
        int marks = checkFrames(prompt, images.size(), vision.boi, vision.image, vision.eoi,
                "images", "image", "image", "one per image", "images first");
        long length = prompt.length - marks;
        for (int k = 0; k < images.size(); k++) {
            ImagePreprocessor.Prepared im = images.get(k);
            if (im == null) throw new GenerationException("images", "images[" + k + "]: expected a preprocessed image, found null");
            if (!vision.hasBudget(im.budget))
                throw new GenerationException("image_budget", "image_budget: expected one of " + Arrays.toString(vision.budgets)
                        + " (the vision program's budgets), found " + im.budget + " (images[" + k + "])");
            if (im.softTokens < 1 || im.softTokens > im.budget)
                throw new GenerationException("images", "images[" + k + "]: expected 1.." + im.budget + " soft tokens (its budget), found " + im.softTokens);
            length += im.softTokens + 2;
        }
        int[][] counts = new int[images.size()][];
        for (int k = 0; k < counts.length; k++) counts[k] = new int[] {images.get(k).softTokens};
        return expandSpans(prompt, vision.boi, vision.image, vision.eoi, counts, prompt[0] == vision.bosId ? 1 : 0, length);
    }

    /**
     * loop.md's audio check, then the expansion: {@code ids} (the images' spans in already) with each item's spans
     * (boa, n × audio, eoa per clip) at its placeholder, or every item's spans after a leading bos and the image spans
     * that follow it when the prompt has no audio placeholder. The items' clips are appended to {@code clips}, in order.
     */
    private int[] expandAudio(int[] ids, List<List<AudioPreprocessor.Clip>> items, List<AudioPreprocessor.Clip> clips) {
        if (audio == null)
            throw new GenerationException("audio", "audio: this model has no audio tower here (a bundle exported without one, "
                    + "or a host that loads none), found " + items.size() + " audio item(s)");
        int marks = checkFrames(ids, items.size(), audio.boa, audio.audio, audio.eoa,
                "audio", "audio", "audio item", "one per item", "audio first");
        int most = AudioPreprocessor.softTokens(AudioPreprocessor.MAX_SAMPLES);
        long length = ids.length - marks;
        int[][] counts = new int[items.size()][];   // each item's clips' soft tokens
        for (int i = 0; i < items.size(); i++) {
            List<AudioPreprocessor.Clip> item = items.get(i);
            if (item == null || item.isEmpty())
                throw new GenerationException("audio", "audio item " + i + ": expected at least one clip, found none (its samples make no soft token)");
            counts[i] = new int[item.size()];
            for (int j = 0; j < item.size(); j++) {
                AudioPreprocessor.Clip c = item.get(j);
                if (c == null) throw new GenerationException("audio", "audio item " + i + " clip " + j + ": expected a clip, found null");
                if (c.softTokens < 1 || c.softTokens > most)
                    throw new GenerationException("audio", "audio item " + i + " clip " + j + ": expected 1.." + most + " soft tokens (at most 30 s), found " + c.softTokens);
                counts[i][j] = c.softTokens;
                length += c.softTokens + 2;
            }
        }
        for (List<AudioPreprocessor.Clip> item : items) clips.addAll(item);
        int at = ids[0] == audio.bosId ? 1 : 0;
        if (vision != null)   // audio without a placeholder goes after the images that open the prompt
            while (at < ids.length && (ids[at] == vision.boi || ids[at] == vision.image || ids[at] == vision.eoi)) at++;
        return expandSpans(ids, audio.boa, audio.audio, audio.eoa, counts, at, length);
    }

    /**
     * loop.md's check of a prompt with {@code n} inputs of one kind framed by {@code open} … {@code close}: no frame id
     * in it, and no placeholder or one per input; refused with {@code field} in that kind's words. Returns the
     * placeholders' count.
     */
    private static int checkFrames(int[] ids, int n, int open, int placeholder, int close, String field, String kind,
                                   String item, String per, String first) {
        int marks = 0;
        for (int t : ids) {
            if (t == open || t == close)
                throw new GenerationException(field, field + ": the prompt holds " + kind + " frame ids (" + open + " / " + close
                        + "); expected one placeholder " + placeholder + " per " + item + ", which the loop expands");
            if (t == placeholder) marks++;
        }
        if (marks != 0 && marks != n)
            throw new GenerationException(field, field + ": the prompt has " + marks + " " + kind + " placeholder(s) (" + placeholder + ") for "
                    + n + " " + item + "(s); expected " + per + ", or none (" + first + ")");
        return marks;
    }

    /**
     * {@code ids} with each input's spans (open, n × placeholder, close per count of counts[k]) at its placeholder, or
     * all of them at index {@code at} when it has none; {@code length} is the result's, counted by the caller's checks.
     */
    private static int[] expandSpans(int[] ids, int open, int placeholder, int close, int[][] counts, int at, long length) {
        if (length > Integer.MAX_VALUE) throw new GenerationException("context", "context: the expanded prompt has " + length + " tokens");
        int[] out = new int[(int) length];
        int o = 0, k = 0;
        boolean first = true;
        for (int t : ids) if (t == placeholder) first = false;
        if (first) {
            System.arraycopy(ids, 0, out, 0, at);
            o = at;
            for (int[] input : counts) o = spans(out, o, open, placeholder, close, input);
            System.arraycopy(ids, at, out, o, ids.length - at);
        } else {
            for (int t : ids) {
                if (t == placeholder) o = spans(out, o, open, placeholder, close, counts[k++]);
                else out[o++] = t;
            }
        }
        return out;
    }

    private static int spans(int[] out, int o, int open, int placeholder, int close, int[] counts) {
        for (int n : counts) {
            out[o++] = open;
            for (int i = 0; i < n; i++) out[o++] = placeholder;
            out[o++] = close;
        }
        return o;
    }

    /**
     * soft [T * H]: zeros, with the images' rows at the expanded prompt's image positions, image after image, then the
     * clips' rows at its audio positions, clip after clip. Each encoder is released when its inputs are encoded, or
     * fail to be; a failed image leaves the audio tower untouched.
     */
    private float[] softEmbeds(int[] ids, List<ImagePreprocessor.Prepared> images, List<AudioPreprocessor.Clip> clips) throws Exception {
        int h = softWidth;
        float[] soft = new float[Math.multiplyExact(ids.length, h)];
        if (!images.isEmpty()) {
            int pos = 0;
            try {
                for (int k = 0; k < images.size(); k++) {
                    ImagePreprocessor.Prepared im = images.get(k);
                    float[] rows = vision.encoder.encode(im);
                    if (rows == null || rows.length != im.softTokens * h)
                        throw new IllegalStateException("vision encoder, image " + k + ": expected " + im.softTokens + " x " + h + " = "
                                + im.softTokens * h + " floats (its soft tokens x hidden_size), found " + (rows == null ? "none" : String.valueOf(rows.length)));
                    pos = place(rows, im.softTokens, ids, vision.image, pos, soft, h);
                }
            } finally {
                vision.encoder.release();
            }
        }
        if (!clips.isEmpty()) {
            int pos = 0;
            try {
                for (int j = 0; j < clips.size(); j++) {
                    AudioPreprocessor.Clip c = clips.get(j);
                    float[] rows = audio.encoder.encode(c);
                    if (rows == null || rows.length != c.softTokens * h)
                        throw new IllegalStateException("audio encoder, clip " + j + ": expected " + c.softTokens + " x " + h + " = "
                                + c.softTokens * h + " floats (its soft tokens x hidden_size), found " + (rows == null ? "none" : String.valueOf(rows.length)));
                    pos = place(rows, c.softTokens, ids, audio.audio, pos, soft, h);
                }
            } finally {
                audio.encoder.release();
            }
        }
        return soft;
    }

    /** Copies n rows of H floats to the next n positions of {@code placeholder} from {@code pos} on; returns the position after. */
    private static int place(float[] rows, int n, int[] ids, int placeholder, int pos, float[] soft, int h) {
        for (int r = 0; r < n; r++) {
            while (ids[pos] != placeholder) pos++;
            System.arraycopy(rows, r * h, soft, pos * h, h);
            pos++;
        }
        return pos;
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
