// Gemma 4's chat prompt (<|turn>role ... <turn|>), text and image items: the one Java statement of it, which the app uses.
package dev.gemmaedge.core;

import java.util.ArrayList;
import java.util.Collections;
import java.util.List;

/**
 * Renders a conversation as Gemma 4 E2B/E4B's chat template does (gemma_edge/contract/chat.py states the format;
 * ChatGoldenTest holds this class to transformers' apply_chat_template over that template):
 * {@code <bos>}, a system turn when the first message is system/developer or thinking is on
 * ({@code <|think|>} first in it), one {@code <|turn>role\n content <turn|>\n} per message ("assistant" written
 * "model"), then the generation prompt {@code <|turn>model\n} (thinking on or off: E2B/E4B close no empty
 * thought channel there, as the 26B/31B template does). A content is a list of items rendered in order with no
 * separator: a text item stripped of surrounding whitespace (a model turn's {@code <|channel>...<channel|>}
 * thinking dropped), an image item as {@code \n\n<|image|>\n\n}, the one placeholder the {@link Generator}
 * expands to the image's span.
 */
public final class Chat {
    public static final String TURN_OPEN = "<|turn>", TURN_CLOSE = "<turn|>", THINK = "<|think|>";
    public static final String CHANNEL_OPEN = "<|channel>", CHANNEL_CLOSE = "<channel|>";
    /** An image's placeholder token (Gemma's id 258880), one per image in the prompt. */
    public static final String IMAGE = "<|image|>";
    /**
     * An audio item's placeholder token (Gemma's id 258881), one per audio item in the prompt. The template renders
     * an audio item as this token alone (no newlines around it); {@link Item} has no audio kind yet, so a caller puts
     * it in a text item (a text item {@code AUDIO} before the message's text renders as the template renders the
     * audio item there).
     */
    public static final String AUDIO = "<|audio|>";
    static final String IMAGE_ITEM = "\n\n" + IMAGE + "\n\n";

    private Chat() {}

    /** One item of a message's content: a text, or an image (its pixels travel separately, in prompt order). */
    public static final class Item {
        public final String text;   // null for an image

        private Item(String text) { this.text = text; }

        public static Item text(String text) {
            if (text == null) throw new IllegalArgumentException("chat content item text: expected text, found null");
            return new Item(text);
        }

        public static Item image() { return new Item(null); }

        public boolean isImage() { return text == null; }
    }

    /** One message: role "system", "developer", "user", "assistant" or "model", and its content items. */
    public static final class Message {
        public final String role;
        public final List<Item> items;

        /** A message whose content is one text. */
        public Message(String role, String content) {
            this(role, Collections.singletonList(textContent(content)));
        }

        public Message(String role, List<Item> items) {
            if (!(role.equals("system") || role.equals("developer") || role.equals("user") || role.equals("assistant") || role.equals("model")))
                throw new IllegalArgumentException("chat message role: expected one of system, developer, user, assistant, model, found '" + role + "'");
            if (items == null) throw new IllegalArgumentException("chat message content: expected a list of items, found null");
            for (int k = 0; k < items.size(); k++)
                if (items.get(k) == null) throw new IllegalArgumentException("chat message content[" + k + "]: expected an item, found null");
            this.role = role;
            this.items = Collections.unmodifiableList(new ArrayList<>(items));
        }

        private static Item textContent(String content) {
            if (content == null) throw new IllegalArgumentException("chat message content: expected text, found null");
            return Item.text(content);
        }

        public int images() {
            int n = 0;
            for (Item it : items) if (it.isImage()) n++;
            return n;
        }
    }

    /** Image items in the messages, the images a prompt of them needs (in order). */
    public static int images(List<Message> messages) {
        int n = 0;
        for (Message m : messages) n += m.images();
        return n;
    }

    /**
     * The prompt text, starting with {@code <bos>} and ending with the generation prompt. A leading system turn is
     * text only (the template trims it as a string): an image there is refused.
     */
    public static String render(List<Message> messages, boolean thinking) {
        StringBuilder out = new StringBuilder("<bos>");
        List<Message> rest = new ArrayList<>(messages);
        boolean hasSystem = !rest.isEmpty() && (rest.get(0).role.equals("system") || rest.get(0).role.equals("developer"));
        if (thinking || hasSystem) {
            out.append(TURN_OPEN).append("system\n");
            if (thinking) out.append(THINK);
            if (hasSystem) {
                Message sys = rest.remove(0);
                if (sys.images() > 0)
                    throw new IllegalArgumentException("chat message 0 content: expected text (a " + sys.role + " turn), found "
                            + sys.images() + " image item(s)");
                StringBuilder text = new StringBuilder();
                for (Item it : sys.items) text.append(it.text);
                out.append(strip(text.toString()));
            }
            out.append(TURN_CLOSE).append('\n');
        }
        for (Message m : rest) {
            String role = m.role.equals("assistant") ? "model" : m.role;
            out.append(TURN_OPEN).append(role).append('\n');
            for (Item it : m.items)
                out.append(it.isImage() ? IMAGE_ITEM : role.equals("model") ? stripThinking(it.text) : strip(it.text));
            out.append(TURN_CLOSE).append('\n');
        }
        out.append(TURN_OPEN).append("model\n");
        return out.toString();
    }

    /**
     * The prompt's token ids: the rendered text encoded without added specials ({@code <bos>}, the turn markers
     * and {@code <|image|>} in it are the tokenizer's own special tokens). A tokenizer without Gemma 4's turn
     * tokens (a base or tiny-vocabulary model) is refused: its ids would be the markers spelled out; so is one
     * without the image placeholder when a message has an image.
     */
    public static int[] encode(Tokenizer tok, List<Message> messages, boolean thinking) {
        for (String special : new String[] {"<bos>", TURN_OPEN, TURN_CLOSE})
            if (tok.tokenToId(special) == null)
                throw new IllegalArgumentException(tok.source() + ": a chat prompt needs the Gemma 4 token '" + special
                        + "', which this tokenizer does not have (use a raw prompt)");
        if (images(messages) > 0) imagePlaceholderId(tok);
        return tok.encode(render(messages, thinking), false);
    }

    /**
     * The id {@code <|image|>} encodes to, refused unless it is one special token of {@code tok} (spelled out in
     * bytes, the placeholder would reach the model as text and no image would be spliced).
     */
    public static int imagePlaceholderId(Tokenizer tok) {
        int[] ids = tok.encode(IMAGE, false);
        Integer id = tok.tokenToId(IMAGE);
        if (ids.length != 1 || id == null || ids[0] != id)
            throw new IllegalArgumentException(tok.source() + ": a chat with an image needs the Gemma 4 special token '" + IMAGE
                    + "', which this tokenizer does not have (the text encodes to " + ids.length + " ids)");
        return ids[0];
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
