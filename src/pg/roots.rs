//! The backup roots (`backup_mgmt.backup_roots`): every file backup_mgmt touches must resolve
//! inside them (`backup_mgmt_core::paths` does the checking), and `check_backup_path()` lets an
//! operator ask before pointing a job or a script at a path.

use std::cell::RefCell;
use std::path::PathBuf;

use backup_mgmt_core::backup::layout;
use backup_mgmt_core::files::beneath::Removed;
use backup_mgmt_core::paths::{self, PathError, Roots};
use pgrx::pg_sys::panic::ErrorReport;
use pgrx::prelude::*;

use super::guc;
use super::log::escape_for_log;
use crate::pg::sql_error::report;

/// The first backup root, resolved: where the worker writes.
pub fn first_root() -> Result<PathBuf, PathError> {
    let roots = guc::backup_roots()?;
    roots
        .first()
        .and_then(|r| r.canonicalize().ok())
        .ok_or(PathError::NoRoots)
}

/// `path` resolved inside the configured roots.
pub fn confine(path: &str, may_be_new: bool) -> Result<PathBuf, PathError> {
    paths::confine(path, &guc::backup_roots()?, may_be_new)
}

thread_local! {
    /// The roots as last resolved, with the setting they were resolved from.
    static RESOLVED: RefCell<Option<(String, Roots)>> = const { RefCell::new(None) };
}

/// The configured roots, as given and resolved.  The resolution is kept for this session while
/// the setting stays the same and every root resolved (the record functions ask on every call).
pub fn resolved() -> Result<Roots, PathError> {
    let text = guc::backup_roots_text();
    if let Some(roots) = RESOLVED.with(|c| {
        c.borrow()
            .as_ref()
            .filter(|(t, _)| *t == text)
            .map(|(_, r)| r.clone())
    }) {
        return Ok(roots);
    }
    let roots = Roots::resolve(&paths::parse_roots(&text)?);
    if roots.complete() {
        RESOLVED.with(|c| *c.borrow_mut() = Some((text, roots.clone())));
    }
    Ok(roots)
}

/// A backup's recorded path resolved strictly inside the configured roots, and outside what
/// backup_mgmt keeps there (see `layout::confine_backup`).
pub fn confine_backup(path: &str, may_be_new: bool) -> Result<PathBuf, PathError> {
    layout::confine_backup_in(path, &resolved()?, may_be_new).map(|(p, _)| p)
}

/// Removes a backup's file or directory inside the configured roots, never a root itself or
/// what backup_mgmt keeps there, never through a symlink (see `layout::remove_backup`).
pub fn remove(path: &str) -> Result<Removed, PathError> {
    layout::remove_backup(path, &guc::backup_roots()?)
}

/// Returns the canonical form of `path` when it is inside `backup_mgmt.backup_roots`, and
/// raises an error naming it otherwise.  Lets an operator check a path (and the roots setting)
/// before pointing a job at it.
#[pg_extern(volatile, parallel_safe, security_definer)]
#[search_path(pg_catalog, pg_temp)]
fn check_backup_path(path: &str) -> Result<String, ErrorReport> {
    match confine(path, true) {
        Ok(p) => Ok(p.display().to_string()),
        Err(e) => {
            if let PathError::OutsideRoots { resolved, .. } = &e {
                // Escape attempts belong in the server log, not only in the caller's session.
                // Where a symlink points is told to the log alone: the caller may not learn
                // what lies outside the roots.
                pgrx::log!(
                    "backup_mgmt: refused path outside backup roots: {}{}",
                    escape_for_log(&e.to_string()),
                    resolved
                        .as_ref()
                        .map(|r| format!(
                            " (it resolves to \"{}\")",
                            escape_for_log(&r.to_string_lossy())
                        ))
                        .unwrap_or_default()
                );
            }
            Err(report(e))
        }
    }
}

#[cfg(any(test, feature = "pg_test"))]
#[pgrx::pg_schema]
mod tests {
    use pgrx::prelude::*;

    #[allow(unused_imports)]
    use crate::testing::*;

    #[pg_test]
    fn backup_paths_are_confined_to_the_roots() {
        // postgresql_conf_options() sets backup_mgmt.backup_roots to this directory.
        let root = std::path::Path::new(crate::testing::TEST_ROOT);
        std::fs::create_dir_all(root).unwrap();
        std::fs::write(root.join("ok.dump"), b"x").unwrap();
        let link = root.join("escape");
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink("/etc/passwd", &link).unwrap();

        let ok = Spi::get_one_with_args::<String>(
            "SELECT backup_mgmt.check_backup_path($1)",
            &[root.join("ok.dump").to_str().unwrap().into()],
        )
        .unwrap();
        assert_eq!(
            ok.as_deref(),
            root.join("ok.dump").canonicalize().unwrap().to_str()
        );
        assert_fails(
            "SELECT backup_mgmt.check_backup_path('/etc/passwd')",
            "42501",
            "/etc/passwd",
        );
        assert_fails(
            &format!(
                "SELECT backup_mgmt.check_backup_path('{}/../etc/passwd')",
                crate::testing::TEST_ROOT
            ),
            "22023",
            "..",
        );
        assert_fails(
            &format!("SELECT backup_mgmt.check_backup_path('{}')", link.display()),
            "42501",
            "escape",
        );
    }
}
