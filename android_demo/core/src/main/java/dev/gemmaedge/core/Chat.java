// Gemma 4's chat prompt (<|turn>role ... <turn|>), text-only: the one Java statement of it, which the app uses.
package dev.gemmaedge.core;

import java.util.ArrayList;
import java.util.List;

/**
 * Renders a conversation as Gemma 4 E2B/E4B's chat template does (gemma_edge/contract/chat.py states the format;
 * ChatGoldenTest holds this class to transformers' apply_chat_template over that template):
 * {@code <bos>}, a system turn when the first message is system/developer or thinking is on
 * ({@code <|think|>} first in it), one {@code <|turn>role\n text <turn|>\n} per message ("assistant" written
 * "model", text stripped of surrounding whitespace, a model turn's {@code <|channel>...<channel|>} thinking
 * dropped), then the generation prompt {@code <|turn>model\n} (thinking on or off: E2B/E4B close no empty
 * thought channel there, as the 26B/31B template does).
 */
public final class Chat {
    public static final String TURN_OPEN = "<|turn>", TURN_CLOSE = "<turn|>", THINK = "<|think|>";
    public static final String CHANNEL_OPEN = "<|channel>", CHANNEL_CLOSE = "<channel|>";

    private Chat() {}

    /** One message: role "system", "developer", "user", "assistant" or "model", and its text. */
    public static final class Message {
        public final String role, content;

        public Message(String role, String content) {
            if (!(role.equals("system") || role.equals("developer") || role.equals("user") || role.equals("assistant") || role.equals("model")))
                throw new IllegalArgumentException("chat message role: expected one of system, developer, user, assistant, model, found '" + role + "'");
            if (content == null) throw new IllegalArgumentException("chat message content: expected text, found null");
            this.role = role;
            this.content = content;
        }
    }

    /** The prompt text, starting with {@code <bos>} and ending with the generation prompt. */
    public static String render(List<Message> messages, boolean thinking) {
        StringBuilder out = new StringBuilder("<bos>");
        List<Message> rest = new ArrayList<>(messages);
        boolean hasSystem = !rest.isEmpty() && (rest.get(0).role.equals("system") || rest.get(0).role.equals("developer"));
        if (thinking || hasSystem) {
            out.append(TURN_OPEN).append("system\n");
            if (thinking) out.append(THINK);
            if (hasSystem) out.append(strip(rest.remove(0).content));
            out.append(TURN_CLOSE).append('\n');
        }
        for (Message m : rest) {
            String role = m.role.equals("assistant") ? "model" : m.role;
            out.append(TURN_OPEN).append(role).append('\n')
               .append(role.equals("model") ? stripThinking(m.content) : strip(m.content))
               .append(TURN_CLOSE).append('\n');
        }
        out.append(TURN_OPEN).append("model\n");
        return out.toString();
    }

    /**
     * The prompt's token ids: the rendered text encoded without added specials ({@code <bos>} and the
     * turn markers in it are the tokenizer's own special tokens). A tokenizer without Gemma 4's turn
     * tokens (a base or tiny-vocabulary model) is refused: its ids would be the markers spelled out.
     */
    public static int[] encode(Tokenizer tok, List<Message> messages, boolean thinking) {
        for (String special : new String[] {"<bos>", TURN_OPEN, TURN_CLOSE})
            if (tok.tokenToId(special) == null)
                throw new IllegalArgumentException(tok.source() + ": a chat prompt needs the Gemma 4 token '" + special
                        + "', which this tokenizer does not have (use a raw prompt)");
        return tok.encode(render(messages, thinking), false);
    }

    /** A model turn's text without its thinking: every {@code <|channel>...<channel|>} span dropped, then stripped. */
    static String stripThinking(String text) {
        StringBuilder out = new StringBuilder();
        int from = 0;
        while (true) {
            int close = text.indexOf(CHANNEL_CLOSE, from);
            String part = close < 0 ? text.substring(from) : text.substring(from, close);
            int open = part.indexOf(CHANNEL_OPEN);
            out.append(open >= 0 ? part.substring(0, open) : part);
            if (close < 0) break;
            from = close + CHANNEL_CLOSE.length();
        }
        return strip(out.toString());
    }

    /** Python's str.strip() (jinja's trim): the characters Python calls whitespace, which String.strip() does not all take. */
    static String strip(String s) {
        int a = 0, b = s.length();
        while (a < b && isPySpace(s.charAt(a))) a++;
        while (b > a && isPySpace(s.charAt(b - 1))) b--;
        return s.substring(a, b);
    }

    private static boolean isPySpace(char c) {
        return (c >= '\t' && c <= '\r') || (c >= '\u001c' && c <= ' ') || c == '\u0085' || c == '\u00a0' || c == '\u1680'
                || (c >= '\u2000' && c <= '\u200a') || c == '\u2028' || c == '\u2029' || c == '\u202f' || c == '\u205f' || c == '\u3000';
    }
}
