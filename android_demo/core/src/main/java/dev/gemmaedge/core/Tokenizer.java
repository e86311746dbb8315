// Encoder/decoder for a bundle's tokenizer.json: Gemma's byte-fallback BPE exactly as HF `tokenizers` serialises it.
package dev.gemmaedge.core;

import java.io.File;
import java.io.IOException;
import java.nio.charset.CharacterCodingException;
import java.nio.charset.CodingErrorAction;
import java.nio.charset.StandardCharsets;
import java.nio.ByteBuffer;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import java.util.PriorityQueue;
import java.util.regex.Matcher;
import java.util.regex.Pattern;
import java.util.regex.PatternSyntaxException;

/**
 * Supports exactly what Gemma-style tokenizers use, and refuses anything else by name:
 * <ul>
 *   <li>model BPE: vocab, merges ("a b" strings or [a, b] pairs), byte_fallback, unk_token, fuse_unk,
 *       ignore_merges; no dropout, no continuing_subword_prefix / end_of_word_suffix;</li>
 *   <li>added_tokens (matched leftmost-longest before BPE; normalized=false on the raw text,
 *       normalized=true after normalization); single_word / lstrip / rstrip must be false;</li>
 *   <li>normalizer: null, Replace (String or Regex pattern), Prepend, or a Sequence of them;</li>
 *   <li>pre_tokenizer: null, Split (String or Regex, all five behaviours, invert), Metaspace, or a Sequence;</li>
 *   <li>post_processor: null or TemplateProcessing (single sequence);</li>
 *   <li>decoder: Replace, ByteFallback, Fuse, Strip, Metaspace, or a Sequence of them.</li>
 * </ul>
 * The pipeline follows HF tokenizers: split out added tokens, normalize each remaining piece,
 * pre-tokenize, BPE each word (merges applied lowest rank first, leftmost on ties).
 */
public final class Tokenizer {
    // Ids are array indices in every host: [0, 2^31 - 2] keeps vocabSize() = max id + 1 an int.
    static final int MAX_ID = Integer.MAX_VALUE - 1;
    private final String source;
    private final Map<String, Integer> vocab = new HashMap<>();
    private final Map<Integer, String> idToToken = new HashMap<>();
    private final Map<Long, long[]> merges = new HashMap<>();    // (a << 32 | b) -> {rank, newId}
    private final boolean byteFallback, fuseUnk, ignoreMerges;
    private final Integer unkId;
    private final int[] byteIds = new int[256];                    // id of "<0xXX>", -1 if absent
    private final Map<String, Integer> addedToId = new HashMap<>();
    private final Map<Integer, String> addedById = new HashMap<>();
    private final java.util.Set<Integer> specialIds = new java.util.HashSet<>();
    private final Map<Character, List<String>> rawAdded = new HashMap<>();   // normalized=false, longest first
    private final Map<Character, List<String>> normAdded = new HashMap<>();  // normalized=true, longest first
    private final List<Map<String, Object>> normalizers = new ArrayList<>();
    private final List<Map<String, Object>> preTokenizers = new ArrayList<>();
    private final List<Map<String, Object>> decoders = new ArrayList<>();
    private final int[] templatePrefix, templateSuffix;            // ids around $A when add_special_tokens

    // ------------------------------------------------------------------ loading

    public static Tokenizer fromFile(String path) throws IOException {
        return new Tokenizer(Json.readUtf8(new File(path)), path);
    }

    public static Tokenizer fromJson(String json, String source) {
        return new Tokenizer(json, source);
    }

    private IllegalArgumentException unsupported(String field, String expected, Object found) {
        return new IllegalArgumentException(source + ": " + field + ": expected " + expected + ", found " + Json.describe(found)
                + " (unsupported tokenizer component)");
    }

    private Tokenizer(String json, String source) {
        this.source = source;
        Map<String, Object> root = Json.asObject(Json.parse(json, source), source);
        Map<String, Object> model = Json.asObject(root.get("model"), source + ": model");
        Object type = model.get("type");
        if (type != null && !"BPE".equals(type)) throw unsupported("model.type", "\"BPE\"", type);
        if (model.get("dropout") != null && Json.asDouble(model.get("dropout"), source + ": model.dropout") != 0.0)
            throw unsupported("model.dropout", "null", model.get("dropout"));
        for (String k : new String[] {"continuing_subword_prefix", "end_of_word_suffix"}) {
            Object v = model.get(k);
            if (v != null && !"".equals(v)) throw unsupported("model." + k, "null", v);
        }
        byteFallback = Boolean.TRUE.equals(model.get("byte_fallback"));
        fuseUnk = Boolean.TRUE.equals(model.get("fuse_unk"));
        ignoreMerges = Boolean.TRUE.equals(model.get("ignore_merges"));
        for (Map.Entry<String, Object> e : Json.asObject(model.get("vocab"), source + ": model.vocab").entrySet()) {
            int id = Json.asInt(e.getValue(), source + ": model.vocab[\"" + e.getKey() + "\"]", 0, MAX_ID);
            vocab.put(e.getKey(), id);
            idToToken.put(id, e.getKey());
        }
        Object unk = model.get("unk_token");
        if (unk != null) {
            unkId = vocab.get(Json.asString(unk, source + ": model.unk_token"));
            if (unkId == null) throw new IllegalArgumentException(source + ": model.unk_token: expected a token of model.vocab, found \"" + unk + "\"");
        } else unkId = null;
        for (int b = 0; b < 256; b++) {
            Integer id = vocab.get(String.format("<0x%02X>", b));
            byteIds[b] = id == null ? -1 : id;
        }
        List<Object> ms = Json.asArray(model.get("merges"), source + ": model.merges");
        for (int r = 0; r < ms.size(); r++) {
            String where = source + ": model.merges[" + r + "]";
            String a, b;
            Object m = ms.get(r);
            if (m instanceof String) {
                String s = (String) m;
                int sp = s.indexOf(' ');
                if (sp < 0 || s.indexOf(' ', sp + 1) >= 0) throw new IllegalArgumentException(where + ": expected \"a b\" (one space), found \"" + s + "\"");
                a = s.substring(0, sp);
                b = s.substring(sp + 1);
            } else {
                List<Object> pair = Json.asArray(m, where);
                if (pair.size() != 2) throw new IllegalArgumentException(where + ": expected a pair [a, b], found " + pair.size() + " items");
                a = Json.asString(pair.get(0), where);
                b = Json.asString(pair.get(1), where);
            }
            Integer ia = vocab.get(a), ib = vocab.get(b), in = vocab.get(a + b);
            if (ia == null || ib == null || in == null)
                throw new IllegalArgumentException(where + ": expected \"" + a + "\", \"" + b + "\" and \"" + a + b + "\" in model.vocab, found "
                        + (ia == null ? "\"" + a + "\"" : ib == null ? "\"" + b + "\"" : "\"" + a + b + "\"") + " missing");
            merges.put(((long) ia << 32) | (ib & 0xFFFFFFFFL), new long[] {r, in});
        }

        Object added = root.get("added_tokens");
        if (added != null) {
            List<Object> list = Json.asArray(added, source + ": added_tokens");
            for (int k = 0; k < list.size(); k++) {
                String where = source + ": added_tokens[" + k + "]";
                Map<String, Object> t = Json.asObject(list.get(k), where);
                for (String flag : new String[] {"single_word", "lstrip", "rstrip"})
                    if (Boolean.TRUE.equals(t.get(flag))) throw unsupported("added_tokens[" + k + "]." + flag, "false", true);
                int id = Json.asInt(t.get("id"), where + ".id", 0, MAX_ID);
                String content = Json.asString(t.get("content"), where + ".content");
                if (content.isEmpty()) continue;
                addedToId.put(content, id);
                addedById.put(id, content);
                if (Boolean.TRUE.equals(t.get("special"))) specialIds.add(id);
                boolean normalized = t.get("normalized") == null ? !Boolean.TRUE.equals(t.get("special")) : Json.asBool(t.get("normalized"), where + ".normalized");
                Map<Character, List<String>> into = normalized ? normAdded : rawAdded;
                into.computeIfAbsent(content.charAt(0), c -> new ArrayList<>()).add(content);
            }
            for (List<String> l : rawAdded.values()) l.sort((x, y) -> y.length() - x.length());
            for (List<String> l : normAdded.values()) l.sort((x, y) -> y.length() - x.length());
        }
        flatten(root.get("normalizer"), "normalizer", "normalizers", normalizers, new String[] {"Replace", "Prepend"});
        flatten(root.get("pre_tokenizer"), "pre_tokenizer", "pretokenizers", preTokenizers, new String[] {"Split", "Metaspace"});
        flatten(root.get("decoder"), "decoder", "decoders", decoders, new String[] {"Replace", "ByteFallback", "Fuse", "Strip", "Metaspace"});
        for (Map<String, Object> n : normalizers) if ("Replace".equals(n.get("type"))) compilePattern(n, "normalizer Replace");
        for (Map<String, Object> n : preTokenizers) if ("Split".equals(n.get("type"))) {
            compilePattern(n, "pre_tokenizer Split");
            String beh = String.valueOf(n.get("behavior"));
            if (!Arrays.asList("Removed", "Isolated", "MergedWithPrevious", "MergedWithNext", "Contiguous").contains(beh))
                throw unsupported("pre_tokenizer Split.behavior", "Removed, Isolated, MergedWithPrevious, MergedWithNext or Contiguous", beh);
        }
        for (Map<String, Object> d : decoders) if ("Replace".equals(d.get("type"))) compilePattern(d, "decoder Replace");
        // The fields encode/decode read later are checked here, once, so a bad file fails at load, not mid-generation.
        for (Map<String, Object> d : decoders) {
            if ("Strip".equals(d.get("type"))) {
                nonEmpty(d.get("content"), "decoder Strip.content");
                Json.asInt(d.get("start"), source + ": decoder Strip.start", 0, Integer.MAX_VALUE);
                Json.asInt(d.get("stop"), source + ": decoder Strip.stop", 0, Integer.MAX_VALUE);
            } else if ("Metaspace".equals(d.get("type"))) nonEmpty(d.get("replacement"), "decoder Metaspace.replacement");
        }
        for (Map<String, Object> t : preTokenizers)
            if ("Metaspace".equals(t.get("type"))) nonEmpty(t.get("replacement"), "pre_tokenizer Metaspace.replacement");

        int[][] tpl = parseTemplate(root.get("post_processor"));
        templatePrefix = tpl[0];
        templateSuffix = tpl[1];
    }

    /** Flattens a component or a Sequence of components into {@code out}, refusing unknown types. */
    private void flatten(Object v, String field, String seqKey, List<Map<String, Object>> out, String[] allowed) {
        if (v == null) return;
        Map<String, Object> m = Json.asObject(v, source + ": " + field);
        Object type = m.get("type");
        if ("Sequence".equals(type)) {
            for (Object c : Json.asArray(m.get(seqKey), source + ": " + field + "." + seqKey)) flatten(c, field, seqKey, out, allowed);
            return;
        }
        if (!Arrays.asList(allowed).contains(type)) throw unsupported(field + ".type", String.join(", ", allowed) + " or Sequence", type);
        out.add(m);
    }

    private void nonEmpty(Object v, String field) {
        if (Json.asString(v, source + ": " + field).isEmpty())
            throw new IllegalArgumentException(source + ": " + field + ": expected a non-empty string, found \"\"");
    }

    /** Stores a compiled java.util.regex Pattern under "_re" (a String pattern is quoted). */
    private void compilePattern(Map<String, Object> m, String where) {
        Map<String, Object> p = Json.asObject(m.get("pattern"), source + ": " + where + ".pattern");
        if (p.get("String") != null) m.put("_re", Pattern.compile(Pattern.quote(Json.asString(p.get("String"), where))));
        else if (p.get("Regex") != null) {
            String re = Json.asString(p.get("Regex"), where);
            try {
                m.put("_re", Pattern.compile(re));
            } catch (PatternSyntaxException e) {
                throw new IllegalArgumentException(source + ": " + where + ".pattern.Regex: expected a regular expression, found "
                        + Json.describe(re) + " (" + e.getDescription() + " at index " + e.getIndex() + ")");
            }
        }
        else throw unsupported(where + ".pattern", "{\"String\": ...} or {\"Regex\": ...}", p);
    }

    private int[][] parseTemplate(Object pp) {
        if (pp == null) return new int[][] {new int[0], new int[0]};
        Map<String, Object> m = Json.asObject(pp, source + ": post_processor");
        if (!"TemplateProcessing".equals(m.get("type"))) throw unsupported("post_processor.type", "TemplateProcessing or null", m.get("type"));
        Map<String, Object> specials = m.get("special_tokens") == null ? new HashMap<>() : Json.asObject(m.get("special_tokens"), source + ": post_processor.special_tokens");
        List<Integer> pre = new ArrayList<>(), post = new ArrayList<>();
        boolean seenA = false;
        for (Object item : Json.asArray(m.get("single"), source + ": post_processor.single")) {
            Map<String, Object> it = Json.asObject(item, source + ": post_processor.single[]");
            if (it.containsKey("Sequence")) {
                String id = Json.asString(Json.asObject(it.get("Sequence"), source + ": post_processor.single[].Sequence").get("id"), source + ": post_processor Sequence.id");
                if (!"A".equals(id) || seenA) throw unsupported("post_processor.single", "one $A sequence", id);
                seenA = true;
            } else if (it.containsKey("SpecialToken")) {
                String name = Json.asString(Json.asObject(it.get("SpecialToken"), source + ": post_processor.single[].SpecialToken").get("id"), source + ": post_processor SpecialToken.id");
                Map<String, Object> sp = Json.asObject(specials.get(name), source + ": post_processor.special_tokens[\"" + name + "\"]");
                for (Object id : Json.asArray(sp.get("ids"), source + ": post_processor.special_tokens[\"" + name + "\"].ids"))
                    (seenA ? post : pre).add(Json.asInt(id, source + ": post_processor ids", 0, MAX_ID));
            } else throw unsupported("post_processor.single[]", "Sequence or SpecialToken", it);
        }
        return new int[][] {pre.stream().mapToInt(Integer::intValue).toArray(), post.stream().mapToInt(Integer::intValue).toArray()};
    }

    // ------------------------------------------------------------------ vocabulary

    public int vocabSize() {
        int n = 0;
        for (int id : idToToken.keySet()) n = Math.max(n, id + 1);
        for (int id : addedById.keySet()) n = Math.max(n, id + 1);
        return n;
    }

    /** The token string of {@code id} (added tokens first, as HF), or null. */
    public String idToToken(int id) {
        String s = addedById.get(id);
        return s != null ? s : idToToken.get(id);
    }

    public Integer tokenToId(String token) {
        Integer id = addedToId.get(token);
        return id != null ? id : vocab.get(token);
    }

    public boolean isSpecial(int id) { return specialIds.contains(id); }

    /** Where the tokenizer was read from (a path, or the name given to {@link #fromJson}), for error messages. */
    public String source() { return source; }

    // ------------------------------------------------------------------ encode

    /** A piece of text on its way through the pipeline; {@code id} >= 0 once it is an added token. */
    private static final class Piece {
        final String text;
        final int id;
        final boolean atOrigin;   // starts at offset 0 of the original text (Metaspace prepend_scheme "first")

        Piece(String text, int id, boolean atOrigin) {
            this.text = text;
            this.id = id;
            this.atOrigin = atOrigin;
        }
    }

    /** Token ids of {@code text}; with {@code addSpecialTokens} the post_processor template (e.g. &lt;bos&gt;) is applied. */
    public int[] encode(String text, boolean addSpecialTokens) {
        List<Piece> pieces = splitAdded(new Piece(text, -1, true), rawAdded);
        List<Piece> normed = new ArrayList<>();
        for (Piece p : pieces) {
            if (p.id >= 0) { normed.add(p); continue; }
            String n = normalize(p.text);
            if (!n.isEmpty()) normed.addAll(splitAdded(new Piece(n, -1, p.atOrigin), normAdded));
        }
        List<Integer> ids = new ArrayList<>();
        if (addSpecialTokens) for (int id : templatePrefix) ids.add(id);
        for (Piece p : normed) {
            if (p.id >= 0) { ids.add(p.id); continue; }
            for (Piece w : preTokenize(p)) bpe(w.text, ids);
        }
        if (addSpecialTokens) for (int id : templateSuffix) ids.add(id);
        int[] out = new int[ids.size()];
        for (int i = 0; i < out.length; i++) out[i] = ids.get(i);
        return out;
    }

    /** Splits out added tokens, leftmost-longest. */
    private List<Piece> splitAdded(Piece p, Map<Character, List<String>> table) {
        List<Piece> out = new ArrayList<>();
        if (table.isEmpty()) { out.add(p); return out; }
        String s = p.text;
        int last = 0;
        for (int i = 0; i < s.length(); ) {
            List<String> cands = table.get(s.charAt(i));
            String hit = null;
            if (cands != null) for (String c : cands) if (s.startsWith(c, i)) { hit = c; break; }
            if (hit == null) { i++; continue; }
            if (i > last) out.add(new Piece(s.substring(last, i), -1, p.atOrigin && last == 0));
            out.add(new Piece(hit, addedToId.get(hit), false));
            i += hit.length();
            last = i;
        }
        if (last < s.length()) out.add(new Piece(s.substring(last), -1, p.atOrigin && last == 0));
        return out;
    }

    private String normalize(String s) {
        for (Map<String, Object> n : normalizers) {
            if ("Replace".equals(n.get("type"))) s = ((Pattern) n.get("_re")).matcher(s).replaceAll(Matcher.quoteReplacement(String.valueOf(n.get("content"))));
            else if ("Prepend".equals(n.get("type")) && !s.isEmpty()) s = n.get("prepend") + s;
        }
        return s;
    }

    private List<Piece> preTokenize(Piece p) {
        List<Piece> cur = new ArrayList<>();
        cur.add(p);
        for (Map<String, Object> pt : preTokenizers) {
            List<Piece> next = new ArrayList<>();
            for (Piece q : cur) {
                if ("Split".equals(pt.get("type"))) {
                    split(q, (Pattern) pt.get("_re"), String.valueOf(pt.get("behavior")), Boolean.TRUE.equals(pt.get("invert")), next);
                } else { // Metaspace
                    String rep = Json.asString(pt.get("replacement"), source + ": pre_tokenizer Metaspace.replacement");
                    String scheme = pt.get("prepend_scheme") != null ? String.valueOf(pt.get("prepend_scheme"))
                            : Boolean.FALSE.equals(pt.get("add_prefix_space")) ? "never" : "always";
                    String t = q.text.replace(" ", rep);
                    if (!t.startsWith(rep) && ("always".equals(scheme) || ("first".equals(scheme) && q.atOrigin))) t = rep + t;
                    Piece r = new Piece(t, -1, q.atOrigin);
                    if (pt.get("split") == null || Boolean.TRUE.equals(pt.get("split"))) split(r, Pattern.compile(Pattern.quote(rep)), "MergedWithNext", false, next);
                    else next.add(r);
                }
            }
            cur = next;
        }
        return cur;
    }

    /** HF's NormalizedString::split with a SplitDelimiterBehavior; empty pieces are dropped. */
    private static void split(Piece p, Pattern re, String behavior, boolean invert, List<Piece> out) {
        String s = p.text;
        List<int[]> segs = new ArrayList<>();   // {start, end, isMatch}
        Matcher m = re.matcher(s);
        int prev = 0;
        while (m.find()) {
            if (m.start() == m.end()) continue;
            if (prev != m.start()) segs.add(new int[] {prev, m.start(), 0});
            segs.add(new int[] {m.start(), m.end(), 1});
            prev = m.end();
        }
        if (prev != s.length()) segs.add(new int[] {prev, s.length(), 0});
        if (invert) for (int[] g : segs) g[2] ^= 1;
        List<int[]> res = new ArrayList<>();    // {start, end, remove}
        boolean prevMatch = false;
        switch (behavior) {
            case "Isolated": for (int[] g : segs) res.add(new int[] {g[0], g[1], 0}); break;
            case "Removed": for (int[] g : segs) res.add(new int[] {g[0], g[1], g[2]}); break;
            case "MergedWithPrevious":
                for (int[] g : segs) {
                    boolean isM = g[2] == 1;
                    if (isM && !prevMatch && !res.isEmpty()) res.get(res.size() - 1)[1] = g[1];
                    else res.add(new int[] {g[0], g[1], 0});
                    prevMatch = isM;
                }
                break;
            case "MergedWithNext":
                for (int k = segs.size() - 1; k >= 0; k--) {
                    int[] g = segs.get(k);
                    boolean isM = g[2] == 1;
                    if (isM && !prevMatch && !res.isEmpty()) res.get(res.size() - 1)[0] = g[0];
                    else res.add(new int[] {g[0], g[1], 0});
                    prevMatch = isM;
                }
                java.util.Collections.reverse(res);
                break;
            default: // Contiguous
                for (int k = 0; k < segs.size(); k++) {
                    int[] g = segs.get(k);
                    boolean isM = g[2] == 1;
                    if (k > 0 && isM == prevMatch) res.get(res.size() - 1)[1] = g[1];
                    else res.add(new int[] {g[0], g[1], 0});
                    prevMatch = isM;
                }
        }
        for (int[] r : res) {
            if (r[2] == 1 || r[0] == r[1]) continue;
            out.add(new Piece(s.substring(r[0], r[1]), -1, p.atOrigin && r[0] == 0));
        }
    }

    /** BPE of one word, appending ids: characters (or their UTF-8 byte tokens) then merges by rank, leftmost first. */
    private void bpe(String word, List<Integer> out) {
        if (word.isEmpty()) return;
        if (ignoreMerges) {
            Integer whole = vocab.get(word);
            if (whole != null) { out.add(whole); return; }
        }
        int n = word.length();
        int[] sym = new int[4 * n];   // a UTF-16 unit expands to at most 4 byte tokens
        int cnt = 0;
        boolean prevUnk = false;
        for (int i = 0; i < n; ) {
            int cp = word.codePointAt(i);
            String ch = new String(Character.toChars(cp));
            i += ch.length();
            Integer id = vocab.get(ch);
            if (id != null) { sym[cnt++] = id; prevUnk = false; continue; }
            if (byteFallback) {
                byte[] bs = ch.getBytes(StandardCharsets.UTF_8);
                boolean all = true;
                for (byte b : bs) all &= byteIds[b & 0xFF] >= 0;
                if (all) {
                    for (byte b : bs) sym[cnt++] = byteIds[b & 0xFF];
                    prevUnk = false;
                    continue;
                }
            }
            if (unkId != null) {
                if (!(fuseUnk && prevUnk)) sym[cnt++] = unkId;
                prevUnk = true;
            }
        }
        // Linked symbols + a queue of candidate merges ordered by (rank, position), as HF's Word::merge_all.
        int[] next = new int[cnt], prev = new int[cnt];
        boolean[] dead = new boolean[cnt];
        for (int k = 0; k < cnt; k++) { next[k] = k + 1 < cnt ? k + 1 : -1; prev[k] = k - 1; }
        PriorityQueue<long[]> q = new PriorityQueue<>((x, y) -> x[0] != y[0] ? Long.compare(x[0], y[0]) : Long.compare(x[1], y[1]));
        for (int k = 0; k + 1 < cnt; k++) push(q, sym[k], sym[k + 1], k);
        while (!q.isEmpty()) {
            long[] top = q.poll();   // {rank, pos, newId}
            int pos = (int) top[1];
            if (dead[pos] || next[pos] < 0) continue;
            int right = next[pos];
            long[] mg = merges.get(((long) sym[pos] << 32) | (sym[right] & 0xFFFFFFFFL));
            if (mg == null || mg[1] != top[2]) continue;
            sym[pos] = (int) top[2];
            dead[right] = true;
            next[pos] = next[right];
            if (next[right] >= 0) prev[next[right]] = pos;
            if (prev[pos] >= 0) push(q, sym[prev[pos]], sym[pos], prev[pos]);
            if (next[pos] >= 0) push(q, sym[pos], sym[next[pos]], pos);
        }
        for (int k = 0; k >= 0 && k < cnt; k = next[k]) out.add(sym[k]);
    }

    private void push(PriorityQueue<long[]> q, int a, int b, int pos) {
        long[] mg = merges.get(((long) a << 32) | (b & 0xFFFFFFFFL));
        if (mg != null) q.add(new long[] {mg[0], pos, mg[1]});
    }

    // ------------------------------------------------------------------ decode

    /** Text of {@code ids} through the decoder chain; unknown ids are dropped (as HF). */
    public String decode(int[] ids, boolean skipSpecialTokens) {
        List<String> toks = new ArrayList<>();
        for (int id : ids) {
            String t = idToToken(id);
            if (t == null || (skipSpecialTokens && specialIds.contains(id))) continue;
            toks.add(t);
        }
        if (decoders.isEmpty()) return String.join(" ", toks);
        for (Map<String, Object> d : decoders) {
            String type = String.valueOf(d.get("type"));
            List<String> nt = new ArrayList<>();
            switch (type) {
                case "Replace": {
                    Pattern re = (Pattern) d.get("_re");
                    String rep = Matcher.quoteReplacement(String.valueOf(d.get("content")));
                    for (String t : toks) nt.add(re.matcher(t).replaceAll(rep));
                    break;
                }
                case "ByteFallback": {
                    java.io.ByteArrayOutputStream pending = new java.io.ByteArrayOutputStream();
                    for (String t : toks) {
                        int b = byteToken(t);
                        if (b >= 0) { pending.write(b); continue; }
                        flushBytes(pending, nt);
                        nt.add(t);
                    }
                    flushBytes(pending, nt);
                    break;
                }
                case "Fuse":
                    nt.add(String.join("", toks));
                    break;
                case "Strip": {
                    String c = Json.asString(d.get("content"), source + ": decoder Strip.content");
                    int start = Json.asInt(d.get("start"), source + ": decoder Strip.start", 0, Integer.MAX_VALUE);
                    int stop = Json.asInt(d.get("stop"), source + ": decoder Strip.stop", 0, Integer.MAX_VALUE);
                    for (String t : toks) nt.add(strip(t, c.codePointAt(0), start, stop));
                    break;
                }
                default: { // Metaspace
                    String rep = Json.asString(d.get("replacement"), source + ": decoder Metaspace.replacement");
                    String scheme = d.get("prepend_scheme") != null ? String.valueOf(d.get("prepend_scheme"))
                            : Boolean.FALSE.equals(d.get("add_prefix_space")) ? "never" : "always";
                    for (int i = 0; i < toks.size(); i++)
                        nt.add(toks.get(i).replace(rep, i == 0 && !"never".equals(scheme) ? "" : " "));
                }
            }
            toks = nt;
        }
        return String.join("", toks);
    }

    /** The byte of a "&lt;0xXX&gt;" token, or -1. */
    private static int byteToken(String t) {
        if (t.length() != 6 || !t.startsWith("<0x") || t.charAt(5) != '>') return -1;
        int hi = Character.digit(t.charAt(3), 16), lo = Character.digit(t.charAt(4), 16);
        return hi < 0 || lo < 0 ? -1 : hi * 16 + lo;
    }

    /** Valid UTF-8 becomes one string; invalid bytes become one U+FFFD each (HF ByteFallback). */
    private static void flushBytes(java.io.ByteArrayOutputStream pending, List<String> out) {
        if (pending.size() == 0) return;
        byte[] bs = pending.toByteArray();
        pending.reset();
        try {
            out.add(StandardCharsets.UTF_8.newDecoder().onMalformedInput(CodingErrorAction.REPORT)
                    .onUnmappableCharacter(CodingErrorAction.REPORT).decode(ByteBuffer.wrap(bs)).toString());
        } catch (CharacterCodingException e) {
            for (int k = 0; k < bs.length; k++) out.add("\uFFFD");
        }
    }

    private static String strip(String t, int c, int start, int stop) {
        int[] cps = t.codePoints().toArray();
        int a = 0, b = cps.length;
        for (int k = 0; k < start && a < cps.length && cps[a] == c; k++) a++;
        for (int k = 0; k < stop && b > a && cps[b - 1] == c; k++) b--;
        return new String(cps, a, b - a);
    }
}
