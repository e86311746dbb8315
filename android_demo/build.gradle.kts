// Top-level build file: declares the plugins the modules use, applies none itself.
plugins {
    alias(libs.plugins.android.application) apply false
    alias(libs.plugins.kotlin.android) apply false
}
