// A minimal, strict JSON (RFC 8259) parser for manifests, tokenizer.json and golden files, with no dependencies.
package dev.gemmaedge.core;

import java.io.File;
import java.io.IOException;
import java.math.BigInteger;
import java.nio.Buffer;
import java.nio.ByteBuffer;
import java.nio.CharBuffer;
import java.nio.charset.CharsetDecoder;
import java.nio.charset.CoderResult;
import java.nio.charset.CodingErrorAction;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;

/**
 * Parses JSON text into plain Java values: objects become {@code LinkedHashMap<String, Object>}
 * (key order kept), arrays {@code ArrayList<Object>}, strings {@code String}, {@code true/false}
 * {@code Boolean}, {@code null} {@code null}; integer literals become {@code Long}, or
 * {@code BigInteger} past 64 bits (so {@link #asLong} can say the value is too large rather than "not an
 * integer"), every other number {@code Double} (parsed with {@link Double#parseDouble}, so a float32
 * written by Python's {@code repr} round-trips exactly through {@code (float) d}; one that overflows to
 * infinity is refused). Every malformed input is an {@link IllegalArgumentException} naming the source,
 * line and column.
 */
public final class Json {
    private final String s;
    private final String source;
    private int i;

    private Json(String text, String source) {
        this.s = text;
        this.source = source;
    }

    /** Parses {@code text}; {@code source} (a file name) appears in error messages. */
    public static Object parse(String text, String source) {
        Json p = new Json(text, source);
        p.skipWs();
        Object v = p.value(0);
        p.skipWs();
        if (p.i != p.s.length()) throw p.error("end of input", p.found());
        return v;
    }

    public static Object parse(String text) {
        return parse(text, "<json>");
    }

    /**
     * Reads {@code f} as strict UTF-8 (as Python's and HF's readers do): an invalid byte is an
     * {@link IllegalArgumentException} naming the file and offset, never a silent U+FFFD.
     */
    public static String readUtf8(File f) throws IOException {
        return decodeUtf8(Files.readAllBytes(f.toPath()), f.getPath());
    }

    /** Strict UTF-8 decoding of {@code bytes}; {@code source} names them in the error. */
    public static String decodeUtf8(byte[] bytes, String source) {
        CharsetDecoder dec = StandardCharsets.UTF_8.newDecoder()
                .onMalformedInput(CodingErrorAction.REPORT).onUnmappableCharacter(CodingErrorAction.REPORT);
        ByteBuffer in = ByteBuffer.wrap(bytes);
        CharBuffer out = CharBuffer.allocate(bytes.length);   // UTF-8 never decodes to more chars than bytes
        CoderResult r = dec.decode(in, out, true);
        if (!r.isError()) r = dec.flush(out);
        if (r.isError())
            throw new IllegalArgumentException(source + ": expected UTF-8 text, found an invalid byte sequence at byte offset " + in.position());
        ((Buffer) out).flip();   // Buffer.flip: the covariant CharBuffer override is not on every Android
        return out.toString();
    }

    /** {@link #readUtf8} then {@link #parse}, naming the file in every error. */
    public static Object parseFile(File f) throws IOException {
        return parse(readUtf8(f), f.getPath());
    }

    private IllegalArgumentException error(String expected, String found) {
        int line = 1, col = 1;
        for (int k = 0; k < i && k < s.length(); k++) {
            if (s.charAt(k) == '\n') { line++; col = 1; } else col++;
        }
        return new IllegalArgumentException(source + ": invalid JSON at line " + line + " column " + col
                + ": expected " + expected + ", found " + found);
    }

    private void skipWs() {
        while (i < s.length()) {
            char c = s.charAt(i);
            if (c == ' ' || c == '\t' || c == '\n' || c == '\r') i++; else break;
        }
    }

    private Object value(int depth) {
        if (depth > 512) throw error("nesting depth <= 512", "deeper nesting");
        if (i >= s.length()) throw error("a value", "end of input");
        char c = s.charAt(i);
        switch (c) {
            case '{': return object(depth);
            case '[': return array(depth);
            case '"': return string();
            case 't': return literal("true", Boolean.TRUE);
            case 'f': return literal("false", Boolean.FALSE);
            case 'n': return literal("null", null);
            default:
                if (c == '-' || (c >= '0' && c <= '9')) return number();
                throw error("a value", found());
        }
    }

    private Object literal(String word, Object v) {
        if (!s.startsWith(word, i)) throw error("'" + word + "'", quote(s.substring(i, Math.min(s.length(), i + word.length()))));
        i += word.length();
        return v;
    }

    private Map<String, Object> object(int depth) {
        Map<String, Object> m = new LinkedHashMap<>();
        i++; // {
        skipWs();
        if (i < s.length() && s.charAt(i) == '}') { i++; return m; }
        while (true) {
            skipWs();
            if (i >= s.length() || s.charAt(i) != '"') throw error("a string key", found());
            String k = string();
            skipWs();
            expect(':');
            skipWs();
            m.put(k, value(depth + 1));
            skipWs();
            if (i < s.length() && s.charAt(i) == ',') { i++; continue; }
            expect('}');
            return m;
        }
    }

    private List<Object> array(int depth) {
        List<Object> a = new ArrayList<>();
        i++; // [
        skipWs();
        if (i < s.length() && s.charAt(i) == ']') { i++; return a; }
        while (true) {
            skipWs();
            a.add(value(depth + 1));
            skipWs();
            if (i < s.length() && s.charAt(i) == ',') { i++; continue; }
            expect(']');
            return a;
        }
    }

    private String found() {
        return i >= s.length() ? "end of input" : quote(String.valueOf(s.charAt(i)));
    }

    /** Text for a message, control and non-ASCII characters as U+XXXX so the message stays one readable line. */
    private static String quote(String t) {
        StringBuilder b = new StringBuilder("'");
        for (char c : t.toCharArray()) b.append(c >= 0x20 && c < 0x7f ? String.valueOf(c) : String.format("U+%04X", (int) c));
        return b.append('\'').toString();
    }

    private void expect(char c) {
        if (i >= s.length() || s.charAt(i) != c) throw error("'" + c + "'", found());
        i++;
    }

    private String string() {
        i++; // opening quote
        StringBuilder b = new StringBuilder();
        while (true) {
            if (i >= s.length()) throw error("closing '\"'", "end of input");
            char c = s.charAt(i++);
            if (c == '"') return b.toString();
            if (c == '\\') {
                if (i >= s.length()) throw error("an escape", "end of input");
                char e = s.charAt(i++);
                switch (e) {
                    case '"': b.append('"'); break;
                    case '\\': b.append('\\'); break;
                    case '/': b.append('/'); break;
                    case 'b': b.append('\b'); break;
                    case 'f': b.append('\f'); break;
                    case 'n': b.append('\n'); break;
                    case 'r': b.append('\r'); break;
                    case 't': b.append('\t'); break;
                    case 'u':
                        if (i + 4 > s.length()) throw error("4 hex digits", "end of input");
                        int cp = 0;
                        for (int k = 0; k < 4; k++) {
                            int d = Character.digit(s.charAt(i + k), 16);
                            if (d < 0 || s.charAt(i + k) > 'f') { i += k; throw error("a hex digit", found()); }
                            cp = cp * 16 + d;
                        }
                        i += 4;
                        b.append((char) cp); // surrogate pairs arrive as two escapes and join naturally
                        break;
                    default:
                        i--;
                        throw error("a valid escape", quote("\\" + e));
                }
            } else if (c < 0x20) {
                i--;
                throw error("no raw control character in a string", String.format("U+%04X", (int) c));
            } else {
                b.append(c);
            }
        }
    }

    private Object number() {
        int start = i;
        boolean integral = true;
        if (s.charAt(i) == '-') i++;
        if (i >= s.length()) throw error("a digit", "end of input");
        if (s.charAt(i) == '0') i++;
        else if (s.charAt(i) >= '1' && s.charAt(i) <= '9') { while (i < s.length() && Character.isDigit(s.charAt(i)) && s.charAt(i) < 128) i++; }
        else throw error("a digit", found());
        if (i < s.length() && s.charAt(i) == '.') {
            integral = false;
            i++;
            int d = i;
            while (i < s.length() && s.charAt(i) >= '0' && s.charAt(i) <= '9') i++;
            if (i == d) throw error("a digit after '.'", found());
        }
        if (i < s.length() && (s.charAt(i) == 'e' || s.charAt(i) == 'E')) {
            integral = false;
            i++;
            if (i < s.length() && (s.charAt(i) == '+' || s.charAt(i) == '-')) i++;
            int d = i;
            while (i < s.length() && s.charAt(i) >= '0' && s.charAt(i) <= '9') i++;
            if (i == d) throw error("a digit in the exponent", found());
        }
        String t = s.substring(start, i);
        if (integral && t.length() <= 18) return Long.parseLong(t);
        if (integral) {
            BigInteger b = new BigInteger(t);
            return b.bitLength() < 64 ? (Object) b.longValue() : b;
        }
        double d = Double.parseDouble(t);
        if (Double.isInfinite(d)) { i = start; throw error("a number within the float64 range", "'" + t + "'"); }
        return d;
    }

    // ---------------------------------------------------------------- typed access helpers

    /** Casts {@code v} to a JSON object or says which field of which file was not one. */
    @SuppressWarnings("unchecked")
    public static Map<String, Object> asObject(Object v, String where) {
        if (!(v instanceof Map)) throw new IllegalArgumentException(where + ": expected a JSON object, found " + describe(v));
        return (Map<String, Object>) v;
    }

    @SuppressWarnings("unchecked")
    public static List<Object> asArray(Object v, String where) {
        if (!(v instanceof List)) throw new IllegalArgumentException(where + ": expected a JSON array, found " + describe(v));
        return (List<Object>) v;
    }

    public static String asString(Object v, String where) {
        if (!(v instanceof String)) throw new IllegalArgumentException(where + ": expected a string, found " + describe(v));
        return (String) v;
    }

    public static long asLong(Object v, String where) {
        if (v instanceof BigInteger) throw new IllegalArgumentException(where + ": expected an integer in [-2^63, 2^63), found " + v);
        if (!(v instanceof Long)) throw new IllegalArgumentException(where + ": expected an integer, found " + describe(v));
        return (Long) v;
    }

    /** An integer in [min, max] (both within int), or an error naming the field, the range and the value. */
    public static int asInt(Object v, String where, int min, int max) {
        long x = asLong(v, where);
        if (x < min || x > max) throw new IllegalArgumentException(where + ": expected an integer in [" + min + ", " + max + "], found " + x);
        return (int) x;
    }

    public static double asDouble(Object v, String where) {
        if (!(v instanceof Number)) throw new IllegalArgumentException(where + ": expected a number, found " + describe(v));
        return ((Number) v).doubleValue();
    }

    public static boolean asBool(Object v, String where) {
        if (!(v instanceof Boolean)) throw new IllegalArgumentException(where + ": expected true or false, found " + describe(v));
        return (Boolean) v;
    }

    /** A short description of a parsed value for error messages. */
    public static String describe(Object v) {
        if (v == null) return "null";
        if (v instanceof String) {
            String t = (String) v;
            StringBuilder b = new StringBuilder("string \"");
            for (char c : (t.length() > 40 ? t.substring(0, 40) : t).toCharArray())
                b.append(c < 0x20 || c == 0x7f ? String.format("\\u%04x", (int) c) : String.valueOf(c));
            return b.append(t.length() > 40 ? "...\"" : "\"").toString();
        }
        if (v instanceof Map) return "an object";
        if (v instanceof List) return "an array";
        if (v instanceof Long || v instanceof BigInteger) return "integer " + v;
        if (v instanceof Double) return "number " + v;
        return v.getClass().getSimpleName().toLowerCase() + " " + v;
    }
}
