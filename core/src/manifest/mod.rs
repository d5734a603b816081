//! The manifests backup_mgmt writes beside what it stores, and reads back as untrusted input.

pub mod archive;
pub mod directory;
pub mod native;
pub mod postgres;
