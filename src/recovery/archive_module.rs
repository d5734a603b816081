//! The WAL archive module: with `archive_library = 'backup_mgmt'`, PostgreSQL's archiver calls
//! this library for every WAL segment and history file, with no process forked per segment.
//!
//! Each file is copied into `<first backup root>/wal/<system identifier>/` by
//! `backup_mgmt_core::backup::archive` (durably, never overwriting, another cluster's segment
//! refused) and listed in that directory's manifest with its size, sha256 and the cluster's
//! segment size; the worker ingests the manifest into the catalog (`wal_catalog`).
//!
//! On PG15 an ERROR inside an archive callback kills the archiver, so nothing here raises: every
//! failure is a WARNING and `false`, and PostgreSQL retries the segment.

use std::fs::File;
use std::io::{self, Read};
use std::path::PathBuf;

use backup_mgmt_core::backup::archive::ArchiveError;
use backup_mgmt_core::backup::layout::wal_archive_dir;
use backup_mgmt_core::paths::PathError;

use crate::pg::roots;

#[derive(Debug, thiserror::Error)]
enum ModuleError {
    #[error("pg_control: {0}")]
    Control(io::Error),
    #[error(transparent)]
    Roots(#[from] PathError),
    #[error(transparent)]
    Archive(#[from] ArchiveError),
}

/// This cluster's system identifier, from `global/pg_control` (the archiver runs in the data
/// directory; the identifier is the control file's first field).
fn system_identifier() -> io::Result<u64> {
    let mut head = [0u8; 8];
    File::open("global/pg_control")?.read_exact(&mut head)?;
    Ok(u64::from_le_bytes(head))
}

/// The archive directory: `<first backup root>/wal/<system identifier>`.
fn archive_dir(system_identifier: u64) -> Result<PathBuf, PathError> {
    Ok(roots::first_root()?.join(wal_archive_dir(system_identifier)))
}

#[cfg(any(feature = "pg15", feature = "pg16", feature = "pg17", feature = "pg18"))]
mod callbacks {
    use std::ffi::{c_char, CStr};
    use std::path::Path;

    use pgrx::prelude::*;

    use backup_mgmt_core::backup::archive::{archive_file, Archived, Stored};

    use super::ModuleError;
    use crate::pg::{guc, server};

    fn archive_one(file: &str, path: &str) -> Result<(), ModuleError> {
        let sysid = super::system_identifier().map_err(ModuleError::Control)?;
        let dir = super::archive_dir(sysid)?;
        let stored = match guc::archive_compression() {
            Some(level) => Stored::Zstd(level),
            None => Stored::Plain,
        };
        match archive_file(
            Path::new(path),
            file,
            &dir,
            sysid,
            server::segment_size(),
            stored,
        )? {
            Archived::Copied { .. } => Ok(()),
            Archived::AlreadyThere => {
                pgrx::log!("backup_mgmt: {file} was already archived with the same content");
                Ok(())
            }
        }
    }

    fn check_configured() -> bool {
        let ok = PgTryBuilder::new(|| super::archive_dir(0).is_ok())
            .catch_others(|_| false)
            .execute();
        if !ok {
            warning!("backup_mgmt: archiving needs backup_mgmt.backup_roots to name an existing directory");
        }
        ok
    }

    /// # Safety
    /// `file` and `path` are NUL-terminated strings from the archiver.
    unsafe fn archive_file_cb(file: *const c_char, path: *const c_char) -> bool {
        // Nothing may raise here: an ERROR would kill the archiver (PG15; PG16+ survives it but
        // logs it as an ERROR, while this is a WARNING and a retry).
        PgTryBuilder::new(|| {
            // SAFETY: the archiver passes NUL-terminated strings valid for the call.
            let file = unsafe { CStr::from_ptr(file) }
                .to_string_lossy()
                .into_owned();
            // SAFETY: as above.
            let path = unsafe { CStr::from_ptr(path) }
                .to_string_lossy()
                .into_owned();
            match archive_one(&file, &path) {
                Ok(()) => true,
                Err(why) => {
                    warning!("backup_mgmt: could not archive {file}: {why}");
                    false
                }
            }
        })
        .catch_others(|e| {
            let message = match e {
                pgrx::pg_sys::panic::CaughtError::PostgresError(r)
                | pgrx::pg_sys::panic::CaughtError::ErrorReport(r) => r.message().to_owned(),
                pgrx::pg_sys::panic::CaughtError::RustPanic { ereport, .. } => {
                    ereport.message().to_owned()
                }
            };
            warning!("backup_mgmt: archiving failed: {message}");
            false
        })
        .execute()
    }

    #[cfg(feature = "pg15")]
    unsafe extern "C-unwind" fn check_configured_pg15() -> bool {
        check_configured()
    }

    #[cfg(feature = "pg15")]
    unsafe extern "C-unwind" fn archive_file_pg15(
        file: *const c_char,
        path: *const c_char,
    ) -> bool {
        // SAFETY: the archiver's arguments, passed on unchanged.
        unsafe { archive_file_cb(file, path) }
    }

    /// PostgreSQL 15's archive module entry point (`archive_library = 'backup_mgmt'`): it fills
    /// in the struct the archiver passes.
    ///
    /// # Safety
    /// Called by PostgreSQL's archiver with a valid callbacks struct.
    #[cfg(feature = "pg15")]
    #[unsafe(no_mangle)]
    pub unsafe extern "C-unwind" fn _PG_archive_module_init(
        cb: *mut pgrx::pg_sys::ArchiveModuleCallbacks,
    ) {
        // SAFETY: the archiver passes a valid, writable callbacks struct.
        unsafe {
            (*cb).check_configured_cb = Some(check_configured_pg15);
            (*cb).archive_file_cb = Some(archive_file_pg15);
            (*cb).shutdown_cb = None;
        }
    }

    /// PostgreSQL 16+'s `archive/archive_module.h`, which pgrx 0.18 does not bind: the state
    /// each callback receives (unused here: nothing is kept between files).
    #[cfg(any(feature = "pg16", feature = "pg17", feature = "pg18"))]
    #[repr(C)]
    pub struct ArchiveModuleState {
        pub private_data: *mut std::ffi::c_void,
    }

    /// PostgreSQL 16+'s callbacks struct, field for field as `archive_module.h` declares it.
    #[cfg(any(feature = "pg16", feature = "pg17", feature = "pg18"))]
    #[repr(C)]
    pub struct ArchiveModuleCallbacks {
        pub startup_cb: Option<unsafe extern "C-unwind" fn(*mut ArchiveModuleState)>,
        pub check_configured_cb:
            Option<unsafe extern "C-unwind" fn(*mut ArchiveModuleState) -> bool>,
        pub archive_file_cb: Option<
            unsafe extern "C-unwind" fn(
                *mut ArchiveModuleState,
                *const c_char,
                *const c_char,
            ) -> bool,
        >,
        pub shutdown_cb: Option<unsafe extern "C-unwind" fn(*mut ArchiveModuleState)>,
    }

    #[cfg(any(feature = "pg16", feature = "pg17", feature = "pg18"))]
    unsafe extern "C-unwind" fn check_configured_pg16(_state: *mut ArchiveModuleState) -> bool {
        check_configured()
    }

    #[cfg(any(feature = "pg16", feature = "pg17", feature = "pg18"))]
    unsafe extern "C-unwind" fn archive_file_pg16(
        _state: *mut ArchiveModuleState,
        file: *const c_char,
        path: *const c_char,
    ) -> bool {
        // SAFETY: the archiver's arguments, passed on unchanged.
        unsafe { archive_file_cb(file, path) }
    }

    /// The callbacks PostgreSQL 16 and later read from the pointer the entry point returns.
    #[cfg(any(feature = "pg16", feature = "pg17", feature = "pg18"))]
    static CALLBACKS: ArchiveModuleCallbacks = ArchiveModuleCallbacks {
        startup_cb: None,
        check_configured_cb: Some(check_configured_pg16),
        archive_file_cb: Some(archive_file_pg16),
        shutdown_cb: None,
    };

    /// PostgreSQL 16+'s archive module entry point: returns the callbacks (the state argument
    /// of each callback is unused; nothing is kept between files).
    #[cfg(any(feature = "pg16", feature = "pg17", feature = "pg18"))]
    #[unsafe(no_mangle)]
    pub extern "C-unwind" fn _PG_archive_module_init() -> *const ArchiveModuleCallbacks {
        &raw const CALLBACKS
    }
}
