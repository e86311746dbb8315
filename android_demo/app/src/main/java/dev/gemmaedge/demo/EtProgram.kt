// The core's Program implemented with ExecuTorch's Module: runs the methods the manifest names for prefill and decode.
package dev.gemmaedge.demo

import dev.gemmaedge.core.Program
import org.pytorch.executorch.EValue
import org.pytorch.executorch.Module
import org.pytorch.executorch.Tensor

/**
 * Wraps `model.pte` (manifest "methods"): prefill(tokens [1, T] int64, input_pos [T] int64,
 * ple_rows [1, T, L, P] float32, attend_len [N] int64, soft_embeds [1, T, H] float32) -> logits [1, V]; decode
 * is the same with T = 1. input_pos holds absolute positions; the program keeps its KV cache between calls.
 * attend_len's length N = last position + 1 bounds the cache slots attention reads (its values are not read); a
 * revision < 5 program takes no attend_len (manifest: `attendLen` false). soft_embeds (revision >= 6) carries the
 * images' soft tokens at their placeholder positions, which the program splices in; a text step gets zeros. Both
 * roles are usually played by one dynamic method ("forward"), so XNNPACK packs the weights once.
 */
class EtProgram(
    private val ptePath: String,
    private val prefillMethod: String,
    private val decodeMethod: String,
    private val numLayers: Int,
    private val pleDim: Int,
    private val vocabSize: Int,
    private val attendLen: Boolean,
    private val softEmbedsWidth: Int = 0   // Manifest.softEmbedsWidth: soft_embeds [1, T, H] (revision >= 6), 0: none
) : Program, AutoCloseable {

    // mmap: the program's weights are paged in once and stay resident; no second copy on the Java heap.
    private val module: Module = Module.load(ptePath, Module.LOAD_MODE_MMAP)

    init {
        for (method in setOf(prefillMethod, decodeMethod)) {
            val err = module.loadMethod(method)
            require(err == 0) { "$ptePath: method \"$method\": expected it to load (error 0), found ExecuTorch error 0x${err.toString(16)}" }
        }
    }

    override fun prefill(tokens: IntArray, startPos: Int, pleRows: FloatArray): FloatArray =
        run(prefillMethod, tokens, startPos, pleRows, null)

    /** A chunk of a prompt with images: [softEmbeds] is its slice of the soft tokens, float[T * H]. */
    override fun prefill(tokens: IntArray, startPos: Int, pleRows: FloatArray, softEmbeds: FloatArray): FloatArray =
        run(prefillMethod, tokens, startPos, pleRows, softEmbeds)

    override fun decode(token: Int, pos: Int, pleRow: FloatArray): FloatArray =
        run(decodeMethod, intArrayOf(token), pos, pleRow, null)

    private fun run(method: String, tokens: IntArray, startPos: Int, rows: FloatArray, soft: FloatArray?): FloatArray {
        val t = tokens.size.toLong()
        require(rows.size.toLong() == t * numLayers * pleDim) {
            "$method ple_rows: expected ${t * numLayers * pleDim} floats [1, $t, $numLayers, $pleDim], found ${rows.size}"
        }
        val tok = Tensor.fromBlob(LongArray(tokens.size) { tokens[it].toLong() }, longArrayOf(1, t))
        val pos = Tensor.fromBlob(LongArray(tokens.size) { (startPos + it).toLong() }, longArrayOf(t))
        val ple = Tensor.fromBlob(rows, longArrayOf(1, t, numLayers.toLong(), pleDim.toLong()))
        val inputs = mutableListOf(EValue.from(tok), EValue.from(pos), EValue.from(ple))
        if (attendLen) {   // only the length is read: N = last position + 1 (at most max_context: 8 KB)
            val n = startPos + tokens.size
            inputs.add(EValue.from(Tensor.fromBlob(LongArray(n), longArrayOf(n.toLong()))))
        }
        check(soft == null || softEmbedsWidth > 0) {
            "$ptePath: method \"$method\": expected a soft_embeds input for a prompt with images, found a program without one " +
                "(revision < 6)"
        }
        if (softEmbedsWidth > 0) {   // the images' slice, or zeros in a text step (read only at image placeholders)
            require(soft == null || soft.size.toLong() == t * softEmbedsWidth) {
                "$method soft_embeds: expected ${t * softEmbedsWidth} floats [1, $t, $softEmbedsWidth], found ${soft?.size}"
            }
            inputs.add(EValue.from(Tensor.fromBlob(soft ?: FloatArray(tokens.size * softEmbedsWidth),
                                                   longArrayOf(1, t, softEmbedsWidth.toLong()))))
        }
        val out = module.execute(method, *inputs.toTypedArray())
        check(out.isNotEmpty()) { "$ptePath: method \"$method\": expected 1 output (logits), found none" }
        val logits = out[0].toTensor().dataAsFloatArray
        check(logits.size == vocabSize) { "$ptePath: method \"$method\" logits: expected $vocabSize floats [1, V], found ${logits.size}" }
        return logits
    }

    override fun close() = module.destroy()
}
