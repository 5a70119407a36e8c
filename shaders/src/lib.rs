//! WGSL compute shaders for the wgpu backend.
//!
//! Empty on purpose: the wgpu backend (a later issue) adds one `.wgsl` file
//! per operation family here, exposed as `include_str!` constants and
//! validated by naga in this crate's tests. Nothing here runs on a GPU yet.
