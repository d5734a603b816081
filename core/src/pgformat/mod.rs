//! PostgreSQL's own formats, read without a server: the data directory's layout, data page
//! checksums, pg_dump's archive format, and what a globals file creates.

pub mod datadir;
pub mod dumpfacts;
pub mod globals;
pub mod pagecheck;
