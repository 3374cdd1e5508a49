//! Bring-up tools for a card: offline decoding of captured bytes and, with
//! a card attached, the `card` commands.

pub mod card;
pub mod decode;
pub mod describe;
pub mod doctor;
pub mod hidraw;
