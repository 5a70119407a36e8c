//! The browser package: a wasm-bindgen surface over the `bitnet` core.
//!
//! Not built yet: the browser issue adds the JavaScript API (load a GGUF from
//! an ArrayBuffer, File or URL; generate with streaming) here. All logic stays
//! in the core; this crate only re-exports it so the workspace proves the core
//! compiles as a dependency of the browser package.
pub use bitnet;
