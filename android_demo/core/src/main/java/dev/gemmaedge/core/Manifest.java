// Reader of a bundle's manifest.json: the program/PLE/tokenizer files, their sizes, hashes and the PLE identity.
package dev.gemmaedge.core;

import java.io.File;
import java.io.FileInputStream;
import java.io.IOException;
import java.io.InputStream;
import java.nio.file.Files;
import java.security.MessageDigest;
import java.security.NoSuchAlgorithmException;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;
import java.util.Map;

/**
 * A bundle directory's manifest (format "gemma-edge-bundle", format_version 1), written by
 * {@code gemma-edge export}. Unknown keys are ignored. {@link #load} checks every field it reads, once:
 * its type and range, naming the field, what was expected and what was found
 * ({@link IllegalArgumentException}), and that every file path stays inside the bundle folder.
 * {@link #checkFiles} refuses files that are missing, not regular files, outside the folder once
 * symlinks are resolved, of the wrong size or (program and tokenizer always, the .ple on request) of the
 * wrong SHA-256 ({@link IOException}). {@link #loadProgram} hands the runtime only a program whose digest
 * was checked, {@link #loadTokenizer} parses only the bytes it checked, and {@link #openPle} refuses a
 * {@code .ple} whose header identity or shape differs from the manifest. A bundle exported with an image tower
 * has a {@link Vision} entry and {@code files.vision}, whose program {@link #loadVision} hands over hashed.
 */
public final class Manifest {
    public static final String FORMAT = "gemma-edge-bundle";
    public static final int FORMAT_VERSION = 1;
    /** The keys every manifest has (gemma_edge/contract/bundle_format.py REQUIRED_KEYS). */
    public static final List<String> REQUIRED_KEYS = Arrays.asList("model_hash", "config", "max_context", "prefill_chunk",
            "bos_token_id", "eos_token_ids", "vocab_size", "num_layers", "ple_dim", "quantization", "files", "methods");
    /** The config keys every export writes (gemma_edge/contract/bundle_format.py CONFIG_REQUIRED_KEYS). */
    public static final List<String> CONFIG_REQUIRED_KEYS = Arrays.asList(
            "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
            "num_key_value_heads", "head_dim", "global_head_dim", "num_global_key_value_heads", "hidden_activation",
            "max_position_embeddings", "rms_norm_eps", "pad_token_id", "eos_token_id", "bos_token_id",
            "tie_word_embeddings", "rope_parameters", "attention_bias", "sliding_window", "layer_types",
            "final_logit_softcapping", "use_bidirectional_attention", "vocab_size_per_layer_input",
            "hidden_size_per_layer_input", "attention_k_eq_v", "num_kv_shared_layers", "enable_moe_block",
            "use_double_wide_mlp");
    /** The step's inputs in order (gemma_edge/contract/bundle_format.py INPUT_NAMES); attend_len only from program
     *  revision 5, soft_embeds from revision 6. */
    static final List<String> INPUT_NAMES = Arrays.asList("tokens", "input_pos", "ple_rows", "attend_len", "soft_embeds");

    /** The image budgets a vision program may have a method for (gemma_edge/contract/image.py SUPPORTED_BUDGETS). */
    public static final List<Integer> SUPPORTED_BUDGETS = Arrays.asList(70, 140, 280, 560, 1120);
    /** The vision program's weight schemes (gemma_edge/contract/bundle_format.py VISION_QUANT). */
    public static final List<String> VISION_QUANT = Arrays.asList("8da8w", "8da4w", "none");
    /** The tower's sizes every vision entry's config holds (bundle_format.py VISION_CONFIG_INTS). */
    public static final List<String> VISION_CONFIG_INTS = Arrays.asList("hidden_size", "intermediate_size", "num_hidden_layers",
            "num_attention_heads", "num_key_value_heads", "head_dim", "position_embedding_size");

    /**
     * The manifest's "vision" entry: the image tower's program ({@code files.vision}, one static method per budget,
     * {@code vision_{b}}: pixel_values f32 [1, 9b, patch_dim], pixel_position_ids i64 [1, 9b, 2] -> soft f32
     * [1, b, H], valid bool [1, b]) and the ids that frame an image in a prompt.
     */
    public static final class Vision {
        public final int[] budgets;          // sorted, distinct, each a SUPPORTED_BUDGETS one
        private final String[] methods;      // methods[i] plays budgets[i]
        public final int hiddenSize;         // soft-token width = config.hidden_size
        public final int patchDim;           // pixel_values' last dim
        public final int boi, image, eoi;    // image_tokens: <|image>, the placeholder <|image|>, <image|>
        public final String quantization;
        public final Integer blockQ;         // query rows per attention block, or null
        public final Map<String, Object> config;   // the tower's vision_config (HF names), its VISION_CONFIG_INTS checked

        Vision(int[] budgets, String[] methods, int hiddenSize, int patchDim, int boi, int image, int eoi,
               String quantization, Integer blockQ, Map<String, Object> config) {
            this.budgets = budgets;
            this.methods = methods;
            this.hiddenSize = hiddenSize;
            this.patchDim = patchDim;
            this.boi = boi;
            this.image = image;
            this.eoi = eoi;
            this.quantization = quantization;
            this.blockQ = blockQ;
            this.config = config;
        }

        /** The method for {@code budget}, or null when the program has none for it. */
        public String method(int budget) {
            for (int i = 0; i < budgets.length; i++) if (budgets[i] == budget) return methods[i];
            return null;
        }
    }

    /** The audio program's weight schemes (bundle_format.py AUDIO_QUANT). */
    public static final List<String> AUDIO_QUANT = Arrays.asList("8da8w", "8da4w", "none");
    /** The tower's sizes every audio entry's config holds (bundle_format.py AUDIO_CONFIG_INTS). */
    public static final List<String> AUDIO_CONFIG_INTS = Arrays.asList("hidden_size", "num_hidden_layers",
            "num_attention_heads", "output_proj_dims");

    /**
     * The manifest's "audio" entry: the audio tower's program ({@code files.audio}, one method dynamic in the clip
     * length, the log-mel front end inside) and the ids that frame a clip in a prompt. Read and checked as Python
     * reads it; {@link #loadAudio} hands its program over hashed.
     */
    public static final class Audio {
        public final String method;
        public final int maxTokens;          // soft tokens of the longest clip (750: 30 s)
        public final int hiddenSize;         // soft-token width = config.hidden_size
        public final int boa, audio, eoa;    // audio_tokens: <|audio>, the placeholder <|audio|>, <audio|>
        public final String quantization;

        Audio(String method, int maxTokens, int hiddenSize, int boa, int audio, int eoa, String quantization) {
            this.method = method;
            this.maxTokens = maxTokens;
            this.hiddenSize = hiddenSize;
            this.boa = boa;
            this.audio = audio;
            this.eoa = eoa;
            this.quantization = quantization;
        }
    }

    /** One entry of "files". */
    public static final class FileEntry {
        public final String role, path;
        public final long bytes;
        public final String sha256;
        public final String identity;   // "ple" only

        FileEntry(String role, String path, long bytes, String sha256, String identity) {
            this.role = role;
            this.path = path;
            this.bytes = bytes;
            this.sha256 = sha256;
            this.identity = identity;
        }
    }

    public final File dir;                   // canonical: symlinks resolved, so containment checks compare real paths
    public final String source;              // path of manifest.json, for messages
    public final String modelHash;
    public final Map<String, Object> config; // Gemma4TextConfig fields, HF names
    public final int maxContext, prefillChunk, bosTokenId, padTokenId;
    public final int[] eosTokenIds;
    public final int vocabSize, numLayers, pleDim;
    public final Map<String, Object> quantization;
    public final String pleDtype;                     // quantization.ple_dtype
    public final FileEntry program, ple, tokenizer;   // tokenizer may be null
    public final FileEntry visionFile;                // files.vision, null for a text-only bundle
    public final Vision vision;                       // null for a text-only bundle (no image tower)
    public final FileEntry audioFile;                 // files.audio, null without an audio tower
    public final Audio audio;                         // null without an audio tower
    public final Map<String, Object> methods;
    public final String prefillMethod, decodeMethod;  // program methods playing each role (often one "forward")
    // The methods take a fourth input, attend_len, whose length (last position + 1) bounds the cache slots
    // attended (program revision >= 5), and a fifth, soft_embeds [1, T, hidden_size]: images' soft tokens at their
    // placeholders, zeros in a text step (revision >= 6). Older bundles list three or four inputs.
    public final boolean attendLen;
    public final int softEmbedsWidth;   // soft_embeds' H (the config's hidden_size); 0: the methods take no soft_embeds
    public final int prefillMaxTokens;
    private volatile boolean programVerified;   // checkFiles hashed the program: loadProgram need not read it again

    private Manifest(File dir, String source, Map<String, Object> m) {
        this.dir = dir;
        this.source = source;
        String fmt = Json.asString(m.get("format"), source + ": format");
        if (!FORMAT.equals(fmt)) throw fail("format", "\"" + FORMAT + "\"", "\"" + fmt + "\"");
        long ver = Json.asLong(m.get("format_version"), source + ": format_version");
        if (ver != FORMAT_VERSION) throw fail("format_version", String.valueOf(FORMAT_VERSION), ver + " (written by another gemma-edge version)");
        List<String> missing = new ArrayList<>();
        for (String k : REQUIRED_KEYS) if (!m.containsKey(k)) missing.add(k);
        if (!missing.isEmpty()) throw fail("keys", "every one of " + REQUIRED_KEYS, missing + " missing");
        modelHash = hex64(m.get("model_hash"), "model_hash");
        config = Json.asObject(m.get("config"), source + ": config");
        // A default would describe another model than the program was built from: every key must be there.
        List<String> missingConfig = new ArrayList<>();
        for (String k : CONFIG_REQUIRED_KEYS) if (!config.containsKey(k)) missingConfig.add(k);
        if (!missingConfig.isEmpty()) throw fail("config", "every key an export writes", missingConfig + " missing");
        vocabSize = intIn(m, "vocab_size", 1, Integer.MAX_VALUE);
        numLayers = intIn(m, "num_layers", 1, Integer.MAX_VALUE);
        pleDim = intIn(m, "ple_dim", 1, Integer.MAX_VALUE);
        if ((long) numLayers * pleDim > Integer.MAX_VALUE)
            throw fail("num_layers * ple_dim", "at most " + Integer.MAX_VALUE + " floats a row", String.valueOf((long) numLayers * pleDim));
        // The top-level shape is the HF config's, which the program was built from.
        agree("vocab_size", vocabSize, "vocab_size");
        agree("num_layers", numLayers, "num_hidden_layers");
        agree("ple_dim", pleDim, "hidden_size_per_layer_input");
        maxContext = intIn(m, "max_context", 1, Integer.MAX_VALUE);
        prefillChunk = intIn(m, "prefill_chunk", 1, maxContext);
        bosTokenId = tokenId(m.get("bos_token_id"), "bos_token_id");
        padTokenId = m.get("pad_token_id") == null ? 0 : tokenId(m.get("pad_token_id"), "pad_token_id");
        List<Object> eos = Json.asArray(m.get("eos_token_ids"), source + ": eos_token_ids");
        if (eos.isEmpty()) throw fail("eos_token_ids", "at least one id", "[]");
        eosTokenIds = new int[eos.size()];
        for (int i = 0; i < eosTokenIds.length; i++) eosTokenIds[i] = tokenId(eos.get(i), "eos_token_ids[" + i + "]");
        quantization = Json.asObject(m.get("quantization"), source + ": quantization");
        oneOf(quantization, "linear", "none", "8da4w", "8da8w");
        oneOf(quantization, "embedding", "none", "int8", "int4");
        pleDtype = oneOf(quantization, "ple_dtype", PleFile.DTYPE_NAMES);
        Json.asInt(quantization.get("group_size"), source + ": quantization.group_size", 0, Integer.MAX_VALUE);
        Map<String, Object> files = Json.asObject(m.get("files"), source + ": files");
        // Every entry is checked, those this host never reads too: a path out of the bundle is refused wherever it is.
        for (String role : files.keySet()) entry(files, role, false);
        program = entry(files, "program", true);
        ple = entry(files, "ple", true);   // every Gemma 4 program takes PLE rows: without the table they would be zeros
        tokenizer = entry(files, "tokenizer", false);
        visionFile = entry(files, "vision", false);
        audioFile = entry(files, "audio", false);
        methods = Json.asObject(m.get("methods"), source + ": methods");
        Map<String, Object> prefill = Json.asObject(methods.get("prefill"), source + ": methods.prefill");
        Map<String, Object> decode = Json.asObject(methods.get("decode"), source + ": methods.decode");
        prefillMethod = prefill.get("method") == null ? "prefill" : methodName(prefill.get("method"), "methods.prefill.method");
        decodeMethod = decode.get("method") == null ? "decode" : methodName(decode.get("method"), "methods.decode.method");
        int prefillArity = stepArity(prefill, "methods.prefill"), decodeArity = stepArity(decode, "methods.decode");
        if (prefillArity != decodeArity)
            throw fail("methods.decode.inputs", arityText(prefillArity) + ", as methods.prefill.inputs",
                       arityText(decodeArity));
        attendLen = prefillArity >= 4;
        softEmbedsWidth = prefillArity >= 5 ? Json.asInt(config.get("hidden_size"), source + ": config.hidden_size", 1,
                                                          Integer.MAX_VALUE) : 0;
        // The program was exported for chunks of exactly prefill_chunk tokens and decode steps of one.
        prefillMaxTokens = prefill.get("max_tokens") == null ? prefillChunk
                : Json.asInt(prefill.get("max_tokens"), source + ": methods.prefill.max_tokens", prefillChunk, prefillChunk);
        if (decode.get("max_tokens") != null) Json.asInt(decode.get("max_tokens"), source + ": methods.decode.max_tokens", 1, 1);
        vision = vision(m);
        audio = audio(m);
        Object chat = m.get("chat_template");
        if (chat != null) Json.asString(chat, source + ": chat_template");
        if (m.get("export") != null) Json.asObject(m.get("export"), source + ": export");
    }

    /**
     * The "vision" entry, checked in Python's order (bundle_format.py {@code _check_vision}): both it and
     * {@code files.vision} or neither; a program of revision &gt;= 6 (the step takes soft_embeds); bound to this
     * manifest's model_hash (the tower of the same checkpoint); budgets, one method each, the decoder's width,
     * three distinct image ids of the vocabulary, the tower's config with its sizes. Null for a text-only bundle.
     */
    private Vision vision(Map<String, Object> m) {
        boolean hasFile = visionFile != null, hasEntry = m.containsKey("vision") && m.get("vision") != null;
        if (!hasFile && !hasEntry) return null;
        if (!hasEntry) throw fail("vision", "an object (files.vision is present: a vision program needs both)", "none");
        if (!hasFile) throw fail("files.vision", "an entry {path, bytes, sha256} (vision is present: a vision program needs both)", "none");
        Map<String, Object> v = Json.asObject(m.get("vision"), source + ": vision");
        Object export = m.get("export");
        Object rev = export instanceof Map ? Json.asObject(export, source + ": export").get("program_revision") : null;
        long revision = rev == null ? 1 : Json.asLong(rev, source + ": export.program_revision");
        if (revision < 6) throw fail("export.program_revision", ">= 6 (a step that takes soft_embeds) for a bundle with a vision program", String.valueOf(revision));
        Object hash = v.get("model_hash");
        if (!modelHash.equals(hash))
            throw fail("vision.model_hash", modelHash + " (the manifest's model_hash: the tower of the same checkpoint)", Json.describe(hash));
        List<?> list = v.get("budgets") instanceof List ? (List<?>) v.get("budgets") : null;
        int[] budgets = new int[list == null ? 0 : list.size()];
        boolean ok = budgets.length > 0;
        for (int i = 0; ok && i < budgets.length; i++) {
            Object b = list.get(i);
            // compared as a long: an int cast would read 2^32 + 280 as 280
            ok = b instanceof Long && (Long) b >= 0 && (Long) b <= Integer.MAX_VALUE && SUPPORTED_BUDGETS.contains((int) (long) (Long) b)
                    && (i == 0 || (Long) b > budgets[i - 1]);
            if (ok) budgets[i] = (int) (long) (Long) b;
        }
        if (!ok) throw fail("vision.budgets", "a sorted list of distinct budgets from " + SUPPORTED_BUDGETS, Json.describe(v.get("budgets")));
        Object methodsValue = v.get("methods");
        List<String> keys = new ArrayList<>();
        for (int b : budgets) keys.add(String.valueOf(b));
        if (!(methodsValue instanceof Map) || !new java.util.TreeSet<>(Json.asObject(methodsValue, source + ": vision.methods").keySet()).equals(new java.util.TreeSet<>(keys)))
            throw fail("vision.methods", "one method per budget, keys " + keys, Json.describe(methodsValue));
        Map<String, Object> methodMap = Json.asObject(methodsValue, source + ": vision.methods");
        String[] methodNames = new String[budgets.length];
        for (int i = 0; i < budgets.length; i++) methodNames[i] = methodName(methodMap.get(keys.get(i)), "vision.methods." + keys.get(i));
        int hidden = Json.asInt(config.get("hidden_size"), source + ": config.hidden_size", 1, Integer.MAX_VALUE);
        Object h = v.get("hidden_size");
        if (!(h instanceof Long) || (Long) h != hidden)
            throw fail("vision.hidden_size", hidden + " (config.hidden_size: soft tokens replace embeddings)", Json.describe(h));
        int patchDim = Json.asInt(v.get("patch_dim"), source + ": vision.patch_dim", 1, Integer.MAX_VALUE);
        Map<String, Object> ids = Json.asObject(v.get("image_tokens"), source + ": vision.image_tokens");
        int boi = tokenId(ids.get("boi"), "vision.image_tokens.boi");
        int image = tokenId(ids.get("image"), "vision.image_tokens.image");
        int eoi = tokenId(ids.get("eoi"), "vision.image_tokens.eoi");
        if (boi == image || image == eoi || boi == eoi)
            throw fail("vision.image_tokens", "three distinct ids", "boi " + boi + ", image " + image + ", eoi " + eoi);
        Object q = v.get("quantization");
        if (!(q instanceof String) || !VISION_QUANT.contains(q))
            throw fail("vision.quantization", String.join(" or ", VISION_QUANT), Json.describe(q));
        Object bq = v.get("block_q");
        Integer blockQ = bq == null ? null : Json.asInt(bq, source + ": vision.block_q", 1, Integer.MAX_VALUE);
        Map<String, Object> tower = Json.asObject(v.get("config"), source + ": vision.config");
        for (String key : VISION_CONFIG_INTS) Json.asInt(tower.get(key), source + ": vision.config." + key, 1, Integer.MAX_VALUE);
        return new Vision(budgets, methodNames, hidden, patchDim, boi, image, eoi, (String) q, blockQ, tower);
    }

    /**
     * The "audio" entry, checked in Python's order (bundle_format.py {@code _check_audio}): both it and
     * {@code files.audio} or neither; a program of revision &gt;= 6; bound to this manifest's model_hash; its method,
     * the clip limit, the decoder's width, three distinct audio ids of the vocabulary (none of them an image id), the
     * scheme, the tower's config with its sizes. Null without an audio tower.
     */
    private Audio audio(Map<String, Object> m) {
        boolean hasFile = audioFile != null, hasEntry = m.containsKey("audio") && m.get("audio") != null;
        if (!hasFile && !hasEntry) return null;
        if (!hasEntry) throw fail("audio", "an object (files.audio is present: an audio program needs both)", "none");
        if (!hasFile) throw fail("files.audio", "an entry {path, bytes, sha256} (audio is present: an audio program needs both)", "none");
        Map<String, Object> a = Json.asObject(m.get("audio"), source + ": audio");
        Object export = m.get("export");
        Object rev = export instanceof Map ? Json.asObject(export, source + ": export").get("program_revision") : null;
        long revision = rev == null ? 1 : Json.asLong(rev, source + ": export.program_revision");
        if (revision < 6) throw fail("export.program_revision", ">= 6 (a step that takes soft_embeds) for a bundle with an audio program", String.valueOf(revision));
        Object hash = a.get("model_hash");
        if (!modelHash.equals(hash))
            throw fail("audio.model_hash", modelHash + " (the manifest's model_hash: the tower of the same checkpoint)", Json.describe(hash));
        String method = methodName(a.get("method"), "audio.method");
        int maxTokens = Json.asInt(a.get("max_tokens"), source + ": audio.max_tokens", 1, 750);
        int hidden = Json.asInt(config.get("hidden_size"), source + ": config.hidden_size", 1, Integer.MAX_VALUE);
        Object h = a.get("hidden_size");
        if (!(h instanceof Long) || (Long) h != hidden)
            throw fail("audio.hidden_size", hidden + " (config.hidden_size: soft tokens replace embeddings)", Json.describe(h));
        Map<String, Object> ids = Json.asObject(a.get("audio_tokens"), source + ": audio.audio_tokens");
        int boa = tokenId(ids.get("boa"), "audio.audio_tokens.boa");
        int placeholder = tokenId(ids.get("audio"), "audio.audio_tokens.audio");
        int eoa = tokenId(ids.get("eoa"), "audio.audio_tokens.eoa");
        if (boa == placeholder || placeholder == eoa || boa == eoa)
            throw fail("audio.audio_tokens", "three distinct ids", "boa " + boa + ", audio " + placeholder + ", eoa " + eoa);
        if (vision != null) {
            for (int id : new int[] {boa, placeholder, eoa})
                if (id == vision.boi || id == vision.image || id == vision.eoi)
                    throw fail("audio.audio_tokens", "ids none of vision.image_tokens holds", "boa " + boa + ", audio " + placeholder + ", eoa " + eoa);
        }
        Object q = a.get("quantization");
        if (!(q instanceof String) || !AUDIO_QUANT.contains(q))
            throw fail("audio.quantization", String.join(" or ", AUDIO_QUANT), Json.describe(q));
        Map<String, Object> tower = Json.asObject(a.get("config"), source + ": audio.config");
        for (String key : AUDIO_CONFIG_INTS) Json.asInt(tower.get(key), source + ": audio.config." + key, 1, Integer.MAX_VALUE);
        if (a.get("activation_bytes") != null && Json.asLong(a.get("activation_bytes"), source + ": audio.activation_bytes") < 0)
            throw fail("audio.activation_bytes", "an integer in [0, 2^63)", Json.describe(a.get("activation_bytes")));
        return new Audio(method, maxTokens, hidden, boa, placeholder, eoa, (String) q);
    }

    /** quantization.{key}: one of {@code allowed}. */
    private String oneOf(Map<String, Object> q, String key, String... allowed) {
        String field = "quantization." + key;
        Object v = q.get(key);
        if (!(v instanceof String) || !Arrays.asList(allowed).contains(v))
            throw fail(field, String.join(" or ", allowed), Json.describe(v));
        return (String) v;
    }

    /** What a step of {@code arity} inputs takes past the PLE rows, for messages. */
    private static String arityText(int arity) {
        return arity == 3 ? "no attend_len" : String.join(", ", INPUT_NAMES.subList(3, arity));
    }

    /**
     * How many of the step's inputs the role takes: 3, 4 (attend_len) or 5 (soft_embeds). The names must be the
     * step's, in order: a host that feeds tokens, positions and rows by position must not run a program that
     * wants something else.
     */
    private int stepArity(Map<String, Object> role, String where) {
        if (role.get("inputs") == null) return 3;   // a manifest that lists no inputs: the three-input step
        List<Object> inputs = Json.asArray(role.get("inputs"), source + ": " + where + ".inputs");
        List<String> names = new ArrayList<>();
        for (int k = 0; k < inputs.size(); k++) {
            String at = source + ": " + where + ".inputs[" + k + "]";
            names.add(Json.asString(Json.asObject(inputs.get(k), at).get("name"), at + ".name"));
        }
        if (names.size() < 3 || names.size() > INPUT_NAMES.size() || !names.equals(INPUT_NAMES.subList(0, names.size())))
            throw fail(where + ".inputs", "names " + INPUT_NAMES.subList(0, 3) + ", " + INPUT_NAMES.subList(0, 4) + " or "
                       + INPUT_NAMES, names.toString());
        return names.size();
    }

    private IllegalArgumentException fail(String field, String expected, String found) {
        return new IllegalArgumentException(source + ": " + field + ": expected " + expected + ", found " + found);
    }

    private int intIn(Map<String, Object> m, String k, int min, int max) {
        return Json.asInt(m.get(k), source + ": " + k, min, max);
    }

    private int tokenId(Object v, String field) {
        long id = Json.asLong(v, source + ": " + field);
        if (id < 0 || id >= vocabSize) throw fail(field, "an id in [0, " + vocabSize + ") (vocab_size)", String.valueOf(id));
        return (int) id;
    }

    private String methodName(Object v, String field) {
        String s = Json.asString(v, source + ": " + field);
        if (s.isEmpty()) throw fail(field, "a method name", "\"\"");
        return s;
    }

    /** config.{key} must be present and equal the top-level {@code field}. */
    private void agree(String field, int value, String key) {
        if (!config.containsKey(key)) throw fail("config." + key, "an integer (= " + field + " " + value + ")", "none");
        long cv = Json.asLong(config.get(key), source + ": config." + key);
        if (cv != value) throw fail("config." + key, value + " (= " + field + ")", String.valueOf(cv));
    }

    private String hex64(Object v, String field) {
        String s = Json.asString(v, source + ": " + field);
        if (!s.matches("[0-9a-f]{64}")) throw fail(field, "64 lowercase hex digits", Json.describe(s));
        return s;
    }

    private FileEntry entry(Map<String, Object> files, String role, boolean required) {
        Object v = files.get(role);
        if (!files.containsKey(role)) {
            if (required) throw fail("files." + role, "an entry {path, bytes, sha256}", "none");
            return null;
        }
        String where = "files." + role;
        Map<String, Object> e = Json.asObject(v, source + ": " + where);
        String path = Json.asString(e.get("path"), source + ": " + where + ".path");
        String why = pathProblem(path);
        if (why != null) throw fail(where + ".path", "a relative path inside the bundle folder", Json.describe(path) + " (" + why + ")");
        long bytes = Json.asLong(e.get("bytes"), source + ": " + where + ".bytes");
        if (bytes < 0) throw fail(where + ".bytes", "a size >= 0", String.valueOf(bytes));
        String sha = hex64(e.get("sha256"), where + ".sha256");
        String identity = "ple".equals(role) ? hex64(e.get("identity"), "files.ple.identity") : null;
        return new FileEntry(role, path, bytes, sha, identity);
    }

    /** Why a manifest path could leave the bundle folder (or names no file), or null; POSIX paths, as Python's. */
    private static String pathProblem(String path) {
        if (path.isEmpty()) return "empty";
        if (path.indexOf('\0') >= 0) return "a NUL character";
        if (path.startsWith("/")) return "absolute";
        for (String seg : path.split("/", -1)) if (seg.equals("..")) return "a '..' component";
        return null;
    }

    // ------------------------------------------------------------------ loading and checks

    /** Reads and checks {@code dir/manifest.json} (its content only; see {@link #checkFiles}). */
    public static Manifest load(File dir) throws IOException {
        File f = new File(dir, "manifest.json");
        if (!f.exists()) throw new IOException(f.getPath() + ": expected a bundle manifest, found no such file");
        // Not opened unless regular: opening a FIFO blocks until a writer comes, which may be never.
        if (!Files.isRegularFile(f.toPath())) throw new IOException(f.getPath() + ": expected a regular file, found " + kind(f));
        return new Manifest(dir.getCanonicalFile(), f.getPath(), Json.asObject(Json.parseFile(f), f.getPath()));
    }

    /**
     * The file of an entry, refused unless it is a regular file whose real path (symlinks resolved) lies
     * inside the bundle folder: a manifest must not make the host read /etc/passwd or another bundle.
     */
    public File fileOf(FileEntry e) throws IOException {
        String field = "files." + e.role;
        File f = new File(dir, e.path), real;
        try {
            real = f.getCanonicalFile();
        } catch (IOException err) {
            throw new IOException(source + ": " + field + ".path: expected a file name this system can resolve, found \"" + e.path + "\" (" + err.getMessage() + ")");
        }
        if (!real.getPath().startsWith(dir.getPath() + File.separator))
            throw new IOException(source + ": " + field + ".path: expected a file inside the bundle folder " + dir.getPath()
                    + ", found \"" + e.path + "\" resolving to " + real.getPath());
        if (!real.exists()) throw new IOException(source + ": " + field + ": expected " + f.getPath() + " to exist, found no such file");
        // A FIFO, device or folder is refused before anything opens it (opening a FIFO would block).
        if (!Files.isRegularFile(real.toPath()))
            throw new IOException(source + ": " + field + ": expected " + f.getPath() + " to be a regular file, found " + kind(real));
        return real;
    }

    private static String kind(File f) {
        return f.isDirectory() ? "a directory" : "a special file (FIFO, socket or device)";
    }

    /**
     * Refuses a bundle whose files are missing or differ from the manifest: each file's place (inside the
     * folder, regular) and size; SHA-256 of the program and tokenizer always, as Python's default
     * {@code verify="fast"}; of the {@code .ple} and the vision and audio programs too when {@code hashPle} (reads
     * every byte of the table, which its header identity and CRCs otherwise vouch for: seconds for a GB-sized table
     * on a phone; the tower programs are hashed by {@link #loadVision} and {@link #loadAudio} whenever they are
     * loaded: bundle_format.py's LAZY_ROLES).
     */
    public void checkFiles(boolean hashPle) throws IOException {
        for (FileEntry e : new FileEntry[] {program, ple, tokenizer, visionFile, audioFile}) {
            if (e == null) continue;
            File f = checkedSize(e);
            if ((e != ple && e != visionFile && e != audioFile) || hashPle) checkSha256(e, sha256Hex(f), f);
            if (e == program) programVerified = true;
        }
    }

    private File checkedSize(FileEntry e) throws IOException {
        File f = fileOf(e);
        long size = f.length();
        if (size != e.bytes)
            throw new IOException(source + ": files." + e.role + ".bytes: expected " + e.bytes + " bytes, found " + size + " bytes in " + f.getPath());
        return f;
    }

    private void checkSha256(FileEntry e, String got, File f) throws IOException {
        if (!got.equals(e.sha256))
            throw new IOException(source + ": files." + e.role + ".sha256: expected " + e.sha256 + ", found " + got + " for " + f.getPath());
    }

    /** Builds the runtime's program from a verified program file (the app: ExecuTorch's {@code Module}). */
    public interface ProgramLoader<P extends Program> {
        P load(File programFile) throws Exception;
    }

    /**
     * Hands {@code loader} the program file only once its size and SHA-256 match the manifest (hashed here
     * unless {@link #checkFiles} already did): ExecuTorch's loader trusts the bytes it maps, and a corrupted
     * program can crash the process or compute other tokens.
     */
    public <P extends Program> P loadProgram(ProgramLoader<P> loader) throws Exception {
        File f = checkedSize(program);
        if (!programVerified) {
            checkSha256(program, sha256Hex(f), f);
            programVerified = true;
        }
        return loader.load(f);
    }

    /** Opens a verified file (the app: ExecuTorch's {@code Module} over the vision program). */
    public interface FileLoader<T> {
        T load(File file) throws Exception;
    }

    /**
     * Hands {@code loader} the vision program's file once its size and SHA-256 match the manifest. Hashed at every
     * load, as Python's ProgramVisionEncoder does: the program is loaded for a prompt with images and released
     * after encoding, so a text-only session never reads the file, and one swapped between two image prompts is
     * still refused. Refused for a text-only bundle.
     */
    public <T> T loadVision(FileLoader<T> loader) throws Exception {
        if (visionFile == null) throw new IOException(source + ": files.vision: expected a vision program, found none (a text-only bundle)");
        File f = checkedSize(visionFile);
        checkSha256(visionFile, sha256Hex(f), f);
        return loader.load(f);
    }

    /**
     * Hands {@code loader} the audio program's file once its size and SHA-256 match the manifest, hashed at every load
     * as {@link #loadVision} hashes the vision program (Python's ProgramAudioEncoder does the same). Refused for a
     * bundle without an audio tower.
     */
    public <T> T loadAudio(FileLoader<T> loader) throws Exception {
        if (audioFile == null) throw new IOException(source + ": files.audio: expected an audio program, found none (a bundle without an audio tower)");
        File f = checkedSize(audioFile);
        checkSha256(audioFile, sha256Hex(f), f);
        return loader.load(f);
    }

    /** Opens the bundle's .ple and refuses it unless its identity, shape and dtype match this manifest. */
    public PleFile openPle() throws IOException {
        PleFile p = PleFile.open(checkedSize(ple).getPath());
        try {
            p.checkIdentity(ple.identity, source + " files.ple.identity");
            PleFile.Header h = p.header();
            String where = p.path();
            if (h.vocabSize != vocabSize) throw new PleFormatException(where, "vocab_size", vocabSize + " (" + source + ")", String.valueOf(h.vocabSize));
            if (h.numLayers != numLayers) throw new PleFormatException(where, "num_layers", numLayers + " (" + source + ")", String.valueOf(h.numLayers));
            if (h.pleDim != pleDim) throw new PleFormatException(where, "ple_dim", pleDim + " (" + source + ")", String.valueOf(h.pleDim));
            if (!pleDtype.equals(h.dtypeName()))
                throw new PleFormatException(where, "dtype", pleDtype + " (" + source + " quantization.ple_dtype)", h.dtypeName());
            return p;
        } catch (IOException | RuntimeException e) {
            p.close();
            throw e;
        }
    }

    /**
     * The bundle's tokenizer, or null when the manifest lists none. The bytes parsed are the bytes whose
     * size and SHA-256 were checked, so a file swapped after {@link #checkFiles} is still refused.
     */
    public Tokenizer loadTokenizer() throws IOException {
        if (tokenizer == null) return null;
        File f = checkedSize(tokenizer);
        byte[] bytes = Files.readAllBytes(f.toPath());
        if (bytes.length != tokenizer.bytes)
            throw new IOException(source + ": files.tokenizer.bytes: expected " + tokenizer.bytes + " bytes, found " + bytes.length + " bytes in " + f.getPath());
        MessageDigest md = sha256();
        md.update(bytes);
        checkSha256(tokenizer, hex(md.digest()), f);
        return Tokenizer.fromJson(Json.decodeUtf8(bytes, f.getPath()), f.getPath());
    }

    static String sha256Hex(File f) throws IOException {
        MessageDigest md = sha256();
        byte[] buf = new byte[1 << 20];
        try (InputStream in = new FileInputStream(f)) {
            for (int n; (n = in.read(buf)) > 0; ) md.update(buf, 0, n);
        }
        return hex(md.digest());
    }

    private static MessageDigest sha256() {
        try {
            return MessageDigest.getInstance("SHA-256");
        } catch (NoSuchAlgorithmException e) {
            throw new IllegalStateException("SHA-256: every Java platform provides it, this one does not", e);
        }
    }

    private static String hex(byte[] b) {
        StringBuilder s = new StringBuilder(2 * b.length);
        for (byte x : b) s.append(String.format("%02x", x & 0xff));
        return s.toString();
    }
}
