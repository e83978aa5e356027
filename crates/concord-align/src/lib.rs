//! Feature alignment between SAEs: MMCS, exact matching, activation correlation, nulls.
