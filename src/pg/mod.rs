//! The extension's own small layer over PostgreSQL: configuration parameters, transactions and
//! SPI for the worker, facts about the running server, NOTIFY, time conversions, waiting on the
//! latch while a helper thread works, and the backup roots.  Everything above talks to the
//! server through here or through pgrx directly; nothing here knows about backups.

pub mod guc;
pub mod log;
pub mod notify;
pub mod roots;
pub mod server;
pub mod spi;
pub mod sql_error;
pub mod srf;
pub mod time;
pub mod wait;
