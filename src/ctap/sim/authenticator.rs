//! (placeholder: the CTAP2 half of the simulated card is being written)
