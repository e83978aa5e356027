//! The `concord` command: where the domain crates meet.

fn main() {}
