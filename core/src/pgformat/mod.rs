//! PostgreSQL's own formats, read without a server: the data directory's layout, data page
//! checksums, pg_dump's archive format, what a globals file creates, and the member of a base backup's tar
//! stream a chain needs.

pub mod datadir;
pub mod dumpfacts;
pub mod globals;
pub mod pagecheck;
pub mod tar;
