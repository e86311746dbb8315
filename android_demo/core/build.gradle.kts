// The plain-Java core (no Android imports, Java 11): PLE reader, manifest, tokenizer, sampler, generation loop.
plugins {
    `java-library`
}

tasks.withType<JavaCompile>().configureEach {
    options.release.set(11)
    options.encoding = "UTF-8"
}

dependencies {
    testImplementation(libs.junit)
}

// The golden tests need files written by golden/make_golden.py (Python); run_tests.sh is the canonical runner.
tasks.test {
    val golden = layout.buildDirectory.dir("golden").get().asFile
    systemProperty("golden.dir", golden.path)
    onlyIf("golden files exist (run core/run_tests.sh)") { golden.isDirectory }
}
