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
    // Run again when HEAD moves: HEAD itself and the branch file it names
    // (only files that exist: a missing one would rerun every build).
    println!("cargo:rerun-if-changed=build.rs");
    if let Some(dir) = git(&["rev-parse", "--absolute-git-dir"]) {
        let branch = git(&["symbolic-ref", "-q", "HEAD"]);
        let files = ["HEAD", "packed-refs"]
            .map(String::from)
            .into_iter()
            .chain(branch);
        for f in files {
            let path = Path::new(&dir).join(f);
            if path.exists() {
                println!("cargo:rerun-if-changed={}", path.display());
            }
        }
    }
}
