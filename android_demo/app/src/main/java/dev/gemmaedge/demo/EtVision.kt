// The core's VisionEncoder with ExecuTorch's Module: the bundle's vision.pte, loaded for a prompt's images and destroyed after.
package dev.gemmaedge.demo

import dev.gemmaedge.core.ImagePreprocessor
import dev.gemmaedge.core.Manifest
import dev.gemmaedge.core.VisionEncoder
import java.nio.ByteBuffer
import org.pytorch.executorch.DType
import org.pytorch.executorch.EValue
import org.pytorch.executorch.Module
import org.pytorch.executorch.Tensor

/**
 * Wraps `vision.pte` (manifest "vision"): one static method per budget b, `vision_{b}`(pixel_values f32
 * [1, 9b, patch_dim], pixel_position_ids i64 [1, 9b, 2]) -> (soft f32 [1, b, H], valid bool [1, b]). The image's
 * soft tokens are the rows marked valid, which must be the first `softTokens` rows: any other mask is refused.
 *
 * The program is opened on the first image of a prompt — through [Manifest.loadVision], which checks its size and
 * SHA-256 first, every time, so a text-only session never reads the file — and destroyed by [release], which the
 * core's Generator calls as soon as the prompt's images are encoded: the tower's weights are not held while the
 * decoder generates.
 */
class EtVision(private val manifest: Manifest) : VisionEncoder {
    private val vision: Manifest.Vision =
        requireNotNull(manifest.vision) { "${manifest.source}: vision: expected a vision entry, found none (a text-only bundle)" }
    private var module: Module? = null
    private val loaded = mutableSetOf<String>()

    /** The budget the app preprocesses at: the processor's default when the program has it, else its largest. */
    val budget: Int =
        if (vision.budgets.contains(ImagePreprocessor.DEFAULT_BUDGET)) ImagePreprocessor.DEFAULT_BUDGET else vision.budgets.last()

    override fun encode(image: ImagePreprocessor.Prepared): FloatArray {
        val method = vision.method(image.budget)
            ?: throw IllegalArgumentException("image budget ${image.budget}: this bundle's vision program has budgets " +
                vision.budgets.contentToString())
        val rows = 9L * image.budget
        require(image.pixelValues.size.toLong() == rows * vision.patchDim && image.positions.size.toLong() == rows * 2) {
            "$method inputs: expected pixel_values [1, $rows, ${vision.patchDim}] and positions [1, $rows, 2], found " +
                "${image.pixelValues.size} and ${image.positions.size} values"
        }
        val m = module ?: manifest.loadVision { f -> Module.load(f.path, Module.LOAD_MODE_MMAP) }.also { module = it }
        if (method !in loaded) {
            val err = m.loadMethod(method)
            require(err == 0) { "${manifest.visionFile.path}: method \"$method\": expected it to load (error 0), found ExecuTorch error 0x${err.toString(16)}" }
            loaded.add(method)
        }
        val out = m.execute(method,
            EValue.from(Tensor.fromBlob(image.pixelValues, longArrayOf(1, rows, vision.patchDim.toLong()))),
            EValue.from(Tensor.fromBlob(image.positions, longArrayOf(1, rows, 2))))
        check(out.size == 2) { "${manifest.visionFile.path}: method \"$method\": expected 2 outputs (soft, valid), found ${out.size}" }
        val soft = out[0].toTensor()
        val h = vision.hiddenSize
        check(soft.shape().contentEquals(longArrayOf(1, image.budget.toLong(), h.toLong()))) {
            "${manifest.visionFile.path}: method \"$method\" soft: expected [1, ${image.budget}, $h], found ${soft.shape().contentToString()}"
        }
        val valid = mask(out[1].toTensor(), method)
        check(valid.size == image.budget) { "${manifest.visionFile.path}: method \"$method\" valid: expected ${image.budget} values, found ${valid.size}" }
        val n = image.softTokens
        check(valid.count { it } == n && (0 until n).all { valid[it] }) {
            "${manifest.visionFile.path}: method \"$method\": expected the first $n soft tokens valid (the image's), found " +
                "${valid.count { it }} valid"
        }
        return soft.dataAsFloatArray.copyOf(n * h)
    }

    /**
     * The valid mask. ExecuTorch's Java binding hands a bool output over as a tensor with no data accessor
     * (Tensor_unsupported, which keeps the native bytes in its `data` buffer, one byte a value): those bytes are
     * read directly. A uint8 or int8 mask (an export that casts it) is read through the public accessors.
     */
    private fun mask(t: Tensor, method: String): BooleanArray = when (t.dtype()) {
        DType.UINT8 -> t.dataAsUnsignedByteArray.let { b -> BooleanArray(b.size) { b[it].toInt() != 0 } }
        DType.INT8 -> t.dataAsByteArray.let { b -> BooleanArray(b.size) { b[it].toInt() != 0 } }
        DType.BOOL -> {
            val data = try {
                t.javaClass.getDeclaredField("data").apply { isAccessible = true }.get(t) as ByteBuffer
            } catch (e: ReflectiveOperationException) {
                throw IllegalStateException("${manifest.visionFile.path}: method \"$method\" valid: this ExecuTorch Java binding " +
                    "gives no access to a bool output (${e.javaClass.simpleName}); export the mask as uint8", e)
            }
            val b = ByteArray(data.capacity())
            data.duplicate().apply { rewind() }.get(b)
            BooleanArray(b.size) { b[it].toInt() != 0 }
        }
        else -> throw IllegalStateException("${manifest.visionFile.path}: method \"$method\" valid: expected a bool mask, found ${t.dtype()}")
    }

    /** Destroys the program (its packed weights go with it); the next image loads it again. */
    override fun release() {
        module?.destroy()
        module = null
        loaded.clear()
    }
}
