//! Linker arguments of a Python extension module: on macOS its Python symbols are left for
//! the interpreter to resolve at import (nothing to do on Linux, where that is the default).

fn main() {
    pyo3_build_config::add_extension_module_link_args();
}
