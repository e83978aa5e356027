//! Integration tests of the study crate: the committed study files and their plans.

mod studies;
