//! The parquet activation store: sharded writer, streaming and shuffled readers.
