//! Sparse autoencoder training and evaluation on libtorch.
