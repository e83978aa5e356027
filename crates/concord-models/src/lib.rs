//! Language models through libtorch with explicit hook points: GPT-NeoX, Llama, BERT.
