//! Build script shared by the crates that link libtorch (models, train, cli, benches).
//!
//! torch-sys tells the linker where libtorch is but not the loader: without a run path the
//! binaries and test executables would need `LD_LIBRARY_PATH`. This script adds the canonical
//! path of libtorch's `lib` folder as an rpath. The canonical path matters: the wheel's
//! libraries find their CUDA runtime through `$ORIGIN/../../nvidia/...`, which only resolves
//! from the real `site-packages/torch/lib`, not through the `.venv/libtorch` link.

use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-env-changed=LIBTORCH");
    let Some(libtorch) = std::env::var_os("LIBTORCH") else {
        return;
    };
    let lib = PathBuf::from(libtorch).join("lib");
    let lib = std::fs::canonicalize(&lib).unwrap_or(lib);
    println!("cargo:rerun-if-changed={}", lib.display());
    println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib.display());
}
