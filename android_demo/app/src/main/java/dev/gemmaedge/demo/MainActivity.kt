// The demo's only screen: pick a pushed bundle, type a prompt, watch tokens stream with RSS, PLE bytes and tok/s.
package dev.gemmaedge.demo

import android.app.Activity
import android.app.AlertDialog
import android.os.Bundle
import android.widget.Button
import android.widget.CheckBox
import android.widget.EditText
import android.widget.ScrollView
import android.widget.TextView
import dev.gemmaedge.core.Chat
import dev.gemmaedge.core.Generator
import dev.gemmaedge.core.Manifest
import dev.gemmaedge.core.PleFile
import dev.gemmaedge.core.Sampler
import dev.gemmaedge.core.Tokenizer
import java.io.File
import java.util.concurrent.Executors

class MainActivity : Activity() {

    /** What a loaded bundle holds open. */
    private class Session(val manifest: Manifest, val program: EtProgram, val ple: PleFile, val tokenizer: Tokenizer?) {
        val generator: Generator = Generator.forBundle(manifest, program, ple, tokenizer)
        fun close() {
            program.close()
            ple.close()
        }
    }

    private val worker = Executors.newSingleThreadExecutor()   // all model work runs here, one job at a time
    private var session: Session? = null

    private lateinit var bundleDir: EditText
    private lateinit var prompt: EditText
    private lateinit var status: TextView
    private lateinit var stats: TextView
    private lateinit var output: TextView
    private lateinit var scroll: ScrollView
    private lateinit var load: Button
    private lateinit var generate: Button
    private lateinit var stop: Button
    private lateinit var verifySha: CheckBox

    override fun onCreate(savedInstanceState: Bundle?) {
        super.onCreate(savedInstanceState)
        setContentView(R.layout.activity_main)
        bundleDir = findViewById(R.id.bundleDir)
        prompt = findViewById(R.id.prompt)
        status = findViewById(R.id.status)
        stats = findViewById(R.id.stats)
        output = findViewById(R.id.output)
        scroll = findViewById(R.id.scroll)
        load = findViewById(R.id.load)
        generate = findViewById(R.id.generate)
        stop = findViewById(R.id.stop)
        verifySha = findViewById(R.id.verifySha)
        load.setOnClickListener { pickBundle(File(bundleDir.text.toString().trim())) }
        generate.setOnClickListener { startGeneration() }
        stop.setOnClickListener { session?.generator?.cancel() }
        stats.text = memoryLine()
    }

    override fun onDestroy() {
        worker.execute { session?.close() }
        worker.shutdown()
        super.onDestroy()
    }

    /** A bundle directory is used as is; a parent directory offers the bundles inside it. */
    private fun pickBundle(dir: File) {
        if (File(dir, "manifest.json").isFile) return loadBundle(dir)
        val bundles = dir.listFiles()?.filter { File(it, "manifest.json").isFile }?.sortedBy { it.name }.orEmpty()
        when (bundles.size) {
            0 -> status.text = "$dir: expected a bundle (manifest.json) or a directory of bundles, found none. " +
                "Push one with android_demo/push_bundle.sh."
            1 -> loadBundle(bundles[0])
            else -> AlertDialog.Builder(this)
                .setTitle("Pick a bundle")
                .setItems(bundles.map { it.name }.toTypedArray()) { _, i -> loadBundle(bundles[i]) }
                .show()
        }
    }

    private fun loadBundle(dir: File) {
        bundleDir.setText(dir.path)
        setBusy(true, "Loading $dir ...")
        val checkSha = verifySha.isChecked
        worker.execute {
            try {
                session?.close()
                session = null
                val t0 = System.nanoTime()
                val m = Manifest.load(dir)
                m.checkFiles(checkSha)   // the program and tokenizer are always hashed; the box adds the .ple
                val ple = m.openPle()
                val loaded = try {
                    val tokenizer = m.loadTokenizer()
                    // loadProgram hands ExecuTorch the file only once its size and SHA-256 match the manifest.
                    val program: EtProgram = m.loadProgram { f ->
                        EtProgram(f.path, m.prefillMethod, m.decodeMethod, m.numLayers, m.pleDim, m.vocabSize, m.attendLen,
                                  m.softEmbedsWidth)
                    }
                    try {
                        Session(m, program, ple, tokenizer)   // runs one probe step: the program's vocabulary
                    } catch (e: Throwable) {
                        program.close()
                        throw e
                    }
                } catch (e: Throwable) {
                    ple.close()
                    throw e
                }
                session = loaded
                val tok = loaded.tokenizer
                val h = ple.header()
                val ms = (System.nanoTime() - t0) / 1e6
                ui {
                    setBusy(false, "${dir.name}: V=${m.vocabSize} L=${m.numLayers} P=${m.pleDim}, PLE ${h.dtypeName()} " +
                        "(${m.ple.bytes / (1 shl 20)} MiB in flash), context ${m.maxContext}, loaded in %.0f ms".format(ms) +
                        if (tok == null) " — no tokenizer.json in the bundle" else "")
                    generate.isEnabled = tok != null
                    stats.text = memoryLine()
                }
            } catch (e: Throwable) {
                ui { setBusy(false, "Refused ${dir.path}:\n${e.message ?: e.toString()}") }
            }
        }
    }

    private fun startGeneration() {
        val s = session ?: return
        val tok = s.tokenizer ?: return
        val text = prompt.text.toString()
        output.text = ""
        setBusy(true, null)
        stop.isEnabled = true
        worker.execute {
            try {
                val ids = promptIds(tok, s.manifest, text)
                // The rest of the context; at least 1, so a prompt that fills it is refused for its length.
                val maxNew = maxOf(1, s.manifest.maxContext - ids.size)
                val r = s.generator.generate(ids, maxNew, Sampler.greedy()) { _, delta, st ->
                    val line = statsLine(st, s.ple)
                    ui {
                        output.append(delta)
                        stats.text = line
                        scroll.post { scroll.fullScroll(ScrollView.FOCUS_DOWN) }
                    }
                }
                ui { stats.text = statsLine(r.stats, s.ple); setBusy(false, null) }
            } catch (e: Throwable) {
                ui { setBusy(false, "Generation failed: ${e.message ?: e.toString()}") }
            }
        }
    }

    /** The Gemma 4 chat prompt (the core's Chat, the one Java statement of the format) when the tokenizer has
     *  its turn tokens, else <bos> + the raw text (a base or tiny-vocabulary model). */
    private fun promptIds(tok: Tokenizer, m: Manifest, text: String): IntArray {
        if (tok.tokenToId(Chat.TURN_OPEN) != null && tok.tokenToId(Chat.TURN_CLOSE) != null)
            return Chat.encode(tok, listOf(Chat.Message("user", text)), false)
        return intArrayOf(m.bosTokenId) + tok.encode(text, false)
    }

    private fun statsLine(st: Generator.Stats, ple: PleFile): String =
        "prompt %d tok | prefill %.0f ms (%.1f tok/s) | first token %.0f ms\n".format(
            st.promptTokens, st.prefillNanos / 1e6, st.prefillTokPerS(), st.firstTokenNanos / 1e6) +
        "decode %d tok, %.2f tok/s | PLE read %.2f MiB (%d pages) this run, %.2f MiB total\n".format(
            st.generatedTokens, st.decodeTokPerS(), st.pleBytesRequested / 1048576.0, st.plePagesTouched,
            ple.totalBytesRequested() / 1048576.0) +
        memoryLine() + (st.stopReason?.let { " | stop: $it" } ?: "")

    /** Resident set size of this process, from /proc/self/status. */
    private fun memoryLine(): String {
        val rss = try {
            File("/proc/self/status").readLines().firstOrNull { it.startsWith("VmRSS:") }
                ?.split(Regex("\\s+"))?.getOrNull(1)?.toLong()?.let { "%.0f MiB".format(it / 1024.0) } ?: "?"
        } catch (e: Exception) {
            "?"
        }
        return "RSS $rss"
    }

    private fun setBusy(busy: Boolean, message: String?) {
        load.isEnabled = !busy
        generate.isEnabled = !busy && session?.tokenizer != null
        stop.isEnabled = false
        if (message != null) status.text = message
    }

    private fun ui(block: () -> Unit) = runOnUiThread(block)
}
