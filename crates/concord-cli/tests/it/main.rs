//! Integration tests of the `concord` command and of the workspace's layering.

mod commands;
mod hub;
mod interop;
mod layering;
mod study;
