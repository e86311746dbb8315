// The model program the generation loop drives: a prefill over T tokens and a one-token decode, both with PLE rows.
package dev.gemmaedge.core;

/**
 * What an exported {@code model.pte} offers (manifest "methods"): the Android app implements it with
 * ExecuTorch's {@code Module}, built by {@link Manifest#loadProgram} from a file whose size and SHA-256
 * matched the manifest; tests implement it with recorded logits. The program owns its KV cache.
 */
public interface Program {
    /**
     * Runs tokens at absolute positions startPos .. startPos+T-1 (T &lt;= prefill_chunk), a text chunk: a program
     * that takes soft_embeds (revision &gt;= 6) is fed zeros.
     *
     * @param pleRows the tokens' PLE rows, float[T * L * P], token-major
     * @return logits of the last position, float[V]
     */
    float[] prefill(int[] tokens, int startPos, float[] pleRows) throws Exception;

    /**
     * As {@link #prefill(int[], int, float[])}, for a prompt with images: {@code softEmbeds} float[T * H] holds the
     * images' soft tokens at their placeholder positions (zeros elsewhere), which the program splices in place of
     * those tokens' embeddings. A program without a soft_embeds input (revision &lt; 6) cannot take an image: the
     * default refuses, so no image is silently dropped.
     */
    default float[] prefill(int[] tokens, int startPos, float[] pleRows, float[] softEmbeds) throws Exception {
        throw new IllegalStateException(getClass().getName() + ": prefill with soft_embeds: expected a program that takes "
                + "them (revision >= 6), found one that does not (a prompt with images cannot run on it)");
    }

    /** Runs one token at position {@code pos}; {@code pleRow} is float[L * P]; returns logits float[V]. */
    float[] decode(int token, int pos, float[] pleRow) throws Exception;
}
