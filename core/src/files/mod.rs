//! Files on disk: I/O errors that name their path, durable writes, and opening files that may
//! have been planted.

pub mod beneath;
pub mod direct;
pub mod durable;
pub mod error;
pub mod open;
pub mod pace;
