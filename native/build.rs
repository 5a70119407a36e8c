//! Records the git commit the binary is built from, for `benchmark`'s
//! `build_commit` and `build_number` (llama-bench's fields): "unknown" and
//! 0 outside a git checkout.

use std::path::Path;
use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    (out.status.success() && !text.is_empty()).then_some(text)
}

fn main() {
    let commit = git(&["rev-parse", "--short=7", "HEAD"]).unwrap_or_else(|| "unknown".into());
    let number = git(&["rev-list", "--count", "HEAD"]).unwrap_or_else(|| "0".into());
    println!("cargo:rustc-env=BITNET_BUILD_COMMIT={commit}");
    println!("cargo:rustc-env=BITNET_BUILD_NUMBER={number}");
    // Run again when HEAD moves: HEAD itself and its reflog, appended on
    // every commit, checkout and reset (per worktree; only files that
    // exist: a missing one would rerun every build).
    println!("cargo:rerun-if-changed=build.rs");
    for f in ["HEAD", "logs/HEAD"] {
        if let Some(path) = git(&["rev-parse", "--path-format=absolute", "--git-path", f]) {
            if Path::new(&path).exists() {
                println!("cargo:rerun-if-changed={path}");
            }
        }
    }
}
