//! Integration tests of concord-store: writing and reading hook datasets, resuming, orders,
//! lockstep reading, damaged files, corpus readers and tables.

mod corpus;
mod damage;
mod lockstep;
mod order;
mod resume;
mod roundtrip;
mod support;
mod table;
