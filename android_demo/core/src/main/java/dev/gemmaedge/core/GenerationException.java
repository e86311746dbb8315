// A run the generation loop refuses before any work; names the field that is wrong (gemma_edge/contract/loop.md).
package dev.gemmaedge.core;

/**
 * Thrown by {@link Generator#generate} before the PLE store, the program or a tower is touched. {@link #field}
 * is one of "prompt", "images", "image_budget", "audio", "max_new_tokens" or "context", as Python's
 * {@code GenerationError.field} and the native runner's {@code LoopError::field}; the message starts with a phrase
 * naming it.
 */
public final class GenerationException extends IllegalArgumentException {
    private static final long serialVersionUID = 1L;

    /** What is wrong: "prompt", "images", "image_budget", "audio", "max_new_tokens" or "context". */
    public final String field;

    public GenerationException(String field, String message) {
        super(message);
        this.field = field;
    }
}
