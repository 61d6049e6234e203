//! flotilla's fleet simulator.
//!
//! Empty until the simulations issue lands: a deterministic discrete-event simulation that drives
//! the protocol crate's sans-IO piece scheduler at fleet scale.
