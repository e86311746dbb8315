// The model program the generation loop drives: a prefill over T tokens and a one-token decode, both with PLE rows.
package dev.gemmaedge.core;

/**
 * What an exported {@code model.pte} offers (manifest "methods"): the Android app implements it with
 * ExecuTorch's {@code Module}, built by {@link Manifest#loadProgram} from a file whose size and SHA-256
 * matched the manifest; tests implement it with recorded logits. The program owns its KV cache.
 */
public interface Program {
    /**
     * Runs tokens at absolute positions startPos .. startPos+T-1 (T &lt;= prefill_chunk).
     *
     * @param pleRows the tokens' PLE rows, float[T * L * P], token-major
     * @return logits of the last position, float[V]
     */
    float[] prefill(int[] tokens, int startPos, float[] pleRows) throws Exception;

    /** Runs one token at position {@code pos}; {@code pleRow} is float[L * P]; returns logits float[V]. */
    float[] decode(int token, int pos, float[] pleRow) throws Exception;
}
