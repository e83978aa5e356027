//! Integration tests of concord-train: one binary, one module per area.

mod archs;
mod errors;
mod evaluation;
mod import;
mod precision;
mod reference;
mod resume;
mod util;
