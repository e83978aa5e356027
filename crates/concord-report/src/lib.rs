//! The study report: figures, tables and the results parquet.
