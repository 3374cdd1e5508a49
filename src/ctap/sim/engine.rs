//! (placeholder: the CTAPHID half of the simulated card is being written)
