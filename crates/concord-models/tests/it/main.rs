//! Integration tests of concord-models: tokenizers and activations against transformers'
//! goldens, loaders on corrupt files, hooks and splices, packing.

mod goldens;
mod hooks;
mod loaders;
mod packing;
mod support;
