//! Benchmarks of the alignment kernels.

fn main() {}
