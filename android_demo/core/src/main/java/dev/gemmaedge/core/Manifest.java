// Reader of a bundle's manifest.json: the program/PLE/tokenizer files, their sizes, hashes and the PLE identity.
package dev.gemmaedge.core;

import java.io.File;
import java.io.FileInputStream;
import java.io.IOException;
import java.io.InputStream;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.security.MessageDigest;
import java.util.List;
import java.util.Map;

/**
 * A bundle directory's manifest (format "gemma-edge-bundle", format_version 1), written by
 * {@code gemma-edge export}. Unknown keys are ignored. {@link #load} checks the schema;
 * {@link #checkFiles} refuses missing files, size and sha256 mismatches; {@link #openPle} refuses a
 * {@code .ple} whose header identity or shape differs from the manifest.
 */
public final class Manifest {
    public static final String FORMAT = "gemma-edge-bundle";
    public static final int FORMAT_VERSION = 1;

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

    public final File dir;
    public final String source;              // path of manifest.json, for messages
    public final String modelHash;
    public final Map<String, Object> config; // Gemma4TextConfig fields, HF names
    public final int maxContext, prefillChunk, bosTokenId, padTokenId;
    public final int[] eosTokenIds;
    public final int vocabSize, numLayers, pleDim;
    public final Map<String, Object> quantization;
    public final FileEntry program, ple, tokenizer;   // tokenizer may be null
    public final Map<String, Object> methods;
    public final String prefillMethod, decodeMethod;  // program methods playing each role (often one "forward")
    // The methods take a fourth input, attend_len, whose length (last position + 1) bounds the cache slots
    // attended (program revision >= 5); older bundles list three inputs.
    public final boolean attendLen;
    public final int prefillMaxTokens;

    private Manifest(File dir, String source, Map<String, Object> m) {
        this.dir = dir;
        this.source = source;
        String fmt = Json.asString(m.get("format"), source + ": format");
        if (!FORMAT.equals(fmt)) throw fail("format", "\"" + FORMAT + "\"", "\"" + fmt + "\"");
        long ver = Json.asLong(m.get("format_version"), source + ": format_version");
        if (ver != FORMAT_VERSION) throw fail("format_version", String.valueOf(FORMAT_VERSION), ver + " (written by another gemma-edge version)");
        modelHash = hex64(m.get("model_hash"), "model_hash");
        config = Json.asObject(m.get("config"), source + ": config");
        maxContext = positive(m, "max_context");
        prefillChunk = positive(m, "prefill_chunk");
        bosTokenId = nonNegative(m, "bos_token_id");
        padTokenId = m.get("pad_token_id") == null ? 0 : nonNegative(m, "pad_token_id");
        List<Object> eos = Json.asArray(m.get("eos_token_ids"), source + ": eos_token_ids");
        if (eos.isEmpty()) throw fail("eos_token_ids", "at least one id", "[]");
        eosTokenIds = new int[eos.size()];
        for (int i = 0; i < eosTokenIds.length; i++) eosTokenIds[i] = (int) Json.asLong(eos.get(i), source + ": eos_token_ids[" + i + "]");
        vocabSize = positive(m, "vocab_size");
        numLayers = positive(m, "num_layers");
        pleDim = positive(m, "ple_dim");
        quantization = m.get("quantization") == null ? null : Json.asObject(m.get("quantization"), source + ": quantization");
        // The top-level shape must agree with the HF config it came from.
        agree("vocab_size", vocabSize, "config.vocab_size");
        agree("num_layers", numLayers, "config.num_hidden_layers");
        agree("ple_dim", pleDim, "config.hidden_size_per_layer_input");
        for (int i = 0; i < eosTokenIds.length; i++)
            if (eosTokenIds[i] < 0 || eosTokenIds[i] >= vocabSize) throw fail("eos_token_ids[" + i + "]", "an id in [0, " + vocabSize + ")", String.valueOf(eosTokenIds[i]));
        if (bosTokenId >= vocabSize) throw fail("bos_token_id", "an id in [0, " + vocabSize + ")", String.valueOf(bosTokenId));
        Map<String, Object> files = Json.asObject(m.get("files"), source + ": files");
        program = entry(files, "program", true);
        ple = entry(files, "ple", true);
        tokenizer = entry(files, "tokenizer", false);
        methods = Json.asObject(m.get("methods"), source + ": methods");
        Map<String, Object> prefill = Json.asObject(methods.get("prefill"), source + ": methods.prefill");
        Map<String, Object> decode = Json.asObject(methods.get("decode"), source + ": methods.decode");
        prefillMethod = prefill.get("method") == null ? "prefill" : Json.asString(prefill.get("method"), source + ": methods.prefill.method");
        decodeMethod = decode.get("method") == null ? "decode" : Json.asString(decode.get("method"), source + ": methods.decode.method");
        boolean prefillAttends = takesAttendLen(prefill, "methods.prefill"), decodeAttends = takesAttendLen(decode, "methods.decode");
        if (prefillAttends != decodeAttends)
            throw fail("methods.decode.inputs", (prefillAttends ? "" : "no ") + "attend_len, as methods.prefill.inputs",
                       decodeAttends ? "attend_len" : "none");
        attendLen = prefillAttends;
        prefillMaxTokens = prefill.get("max_tokens") == null ? prefillChunk : (int) Json.asLong(prefill.get("max_tokens"), source + ": methods.prefill.max_tokens");
        if (prefillChunk > prefillMaxTokens)
            throw fail("prefill_chunk", "<= methods.prefill.max_tokens " + prefillMaxTokens, String.valueOf(prefillChunk));
        if (prefillChunk > maxContext) throw fail("prefill_chunk", "<= max_context " + maxContext, String.valueOf(prefillChunk));
    }

    private boolean takesAttendLen(Map<String, Object> role, String where) {
        if (role.get("inputs") == null) return false;   // a manifest that lists no inputs: the three-input step
        boolean found = false;
        for (Object in : Json.asArray(role.get("inputs"), source + ": " + where + ".inputs")) {
            Object name = Json.asObject(in, source + ": " + where + ".inputs[]").get("name");
            found |= "attend_len".equals(name);
        }
        return found;
    }

    private IllegalArgumentException fail(String field, String expected, String found) {
        return new IllegalArgumentException(source + ": " + field + ": expected " + expected + ", found " + found);
    }

    private int positive(Map<String, Object> m, String k) {
        long v = Json.asLong(m.get(k), source + ": " + k);
        if (v <= 0 || v > Integer.MAX_VALUE) throw fail(k, "a positive integer", String.valueOf(v));
        return (int) v;
    }

    private int nonNegative(Map<String, Object> m, String k) {
        long v = Json.asLong(m.get(k), source + ": " + k);
        if (v < 0 || v > Integer.MAX_VALUE) throw fail(k, "an integer >= 0", String.valueOf(v));
        return (int) v;
    }

    private void agree(String field, int value, String configPath) {
        String key = configPath.substring("config.".length());
        Object c = config.get(key);
        if (c == null) return;   // the config may omit it; the PLE header is checked later anyway
        long cv = Json.asLong(c, source + ": " + configPath);
        if (cv != value) throw fail(field, value + " = " + configPath, String.valueOf(cv) + " in " + configPath);
    }

    private String hex64(Object v, String field) {
        String s = Json.asString(v, source + ": " + field);
        if (!s.matches("[0-9a-fA-F]{64}")) throw fail(field, "64 hex digits", "\"" + s + "\"");
        return s.toLowerCase();
    }

    private FileEntry entry(Map<String, Object> files, String role, boolean required) {
        Object v = files.get(role);
        if (v == null) {
            if (required) throw fail("files." + role, "an entry {path, bytes, sha256}", "none");
            return null;
        }
        Map<String, Object> e = Json.asObject(v, source + ": files." + role);
        String path = Json.asString(e.get("path"), source + ": files." + role + ".path");
        if (path.isEmpty() || path.startsWith("/") || path.contains(".."))
            throw fail("files." + role + ".path", "a file name inside the bundle directory", "\"" + path + "\"");
        long bytes = Json.asLong(e.get("bytes"), source + ": files." + role + ".bytes");
        String sha = hex64(e.get("sha256"), "files." + role + ".sha256");
        String identity = "ple".equals(role) ? hex64(e.get("identity"), "files.ple.identity") : null;
        return new FileEntry(role, path, bytes, sha, identity);
    }

    // ------------------------------------------------------------------ loading and checks

    /** Reads and checks {@code dir/manifest.json} (schema only; see {@link #checkFiles}). */
    public static Manifest load(File dir) throws IOException {
        File f = new File(dir, "manifest.json");
        if (!f.isFile()) throw new IOException(f.getPath() + ": expected a bundle manifest, found no such file");
        String text = new String(Files.readAllBytes(f.toPath()), StandardCharsets.UTF_8);
        return new Manifest(dir, f.getPath(), Json.asObject(Json.parse(text, f.getPath()), f.getPath()));
    }

    public File fileOf(FileEntry e) { return new File(dir, e.path); }

    /**
     * Refuses a bundle whose files are missing or differ from the manifest: existence and size always;
     * SHA-256 when {@code checkSha256} (reads every byte: seconds for a multi-GB bundle on a phone).
     */
    public void checkFiles(boolean checkSha256) throws IOException {
        for (FileEntry e : new FileEntry[] {program, ple, tokenizer}) {
            if (e == null) continue;
            File f = fileOf(e);
            if (!f.isFile()) throw new IOException(source + ": files." + e.role + ": expected " + f.getPath() + " to exist, found no such file");
            if (f.length() != e.bytes)
                throw new IOException(source + ": files." + e.role + ".bytes: expected " + e.bytes + " bytes, found " + f.length() + " bytes in " + f.getPath());
            if (checkSha256) {
                String got = sha256Hex(f);
                if (!got.equals(e.sha256))
                    throw new IOException(source + ": files." + e.role + ".sha256: expected " + e.sha256 + ", found " + got + " for " + f.getPath());
            }
        }
    }

    /** Opens the bundle's .ple and refuses it unless its identity, shape and dtype match this manifest. */
    public PleFile openPle() throws IOException {
        PleFile p = PleFile.open(fileOf(ple).getPath());
        try {
            p.checkIdentity(ple.identity, source + " files.ple.identity");
            PleFile.Header h = p.header();
            String where = p.path();
            if (h.vocabSize != vocabSize) throw new PleFormatException(where, "vocab_size", vocabSize + " (" + source + ")", String.valueOf(h.vocabSize));
            if (h.numLayers != numLayers) throw new PleFormatException(where, "num_layers", numLayers + " (" + source + ")", String.valueOf(h.numLayers));
            if (h.pleDim != pleDim) throw new PleFormatException(where, "ple_dim", pleDim + " (" + source + ")", String.valueOf(h.pleDim));
            Object want = quantization == null ? null : quantization.get("ple_dtype");
            if (want != null && !want.equals(h.dtypeName()))
                throw new PleFormatException(where, "dtype", want + " (" + source + " quantization.ple_dtype)", h.dtypeName());
            return p;
        } catch (IOException | RuntimeException e) {
            p.close();
            throw e;
        }
    }

    /** The bundle's tokenizer, or null when the manifest lists none. */
    public Tokenizer loadTokenizer() throws IOException {
        return tokenizer == null ? null : Tokenizer.fromFile(fileOf(tokenizer).getPath());
    }

    static String sha256Hex(File f) throws IOException {
        MessageDigest md = PleFile.sha256();
        byte[] buf = new byte[1 << 20];
        try (InputStream in = new FileInputStream(f)) {
            for (int n; (n = in.read(buf)) > 0; ) md.update(buf, 0, n);
        }
        return PleFile.hex(md.digest());
    }
}
