//! Path confinement: every file backup_mgmt touches must resolve inside `backup_mgmt.backup_roots`.
//!
//! The checks are in two steps.  A lexical step refuses what is wrong on its face (relative paths,
//! `..` components) without touching the file system, so a refused path is never even looked up.
//! A resolving step canonicalises (following symlinks) and checks the result against the
//! canonicalised roots, so a symlink inside a root that points elsewhere is refused too.

use std::io;
use std::path::{Component, Path, PathBuf};

use pgrx::prelude::*;
use pgrx::{pg_sys::panic::ErrorReport, PgSqlErrorCode};

use crate::guc;

#[derive(Debug, thiserror::Error)]
pub enum PathError {
    #[error("path is empty")]
    Empty,
    #[error("path \"{0}\" is not absolute")]
    NotAbsolute(String),
    #[error("path \"{0}\" contains a \"..\" component")]
    ParentComponent(String),
    #[error(
        "backup root \"{0}\" in backup_mgmt.backup_roots is not an absolute path without \"..\""
    )]
    BadRoot(String),
    #[error("backup_mgmt.backup_roots is empty, so no backup file may be read or written")]
    NoRoots,
    #[error("path \"{path}\" is outside backup_mgmt.backup_roots")]
    OutsideRoots {
        path: String,
        resolved: Option<PathBuf>,
    },
    #[error("could not resolve path \"{path}\": {source}")]
    Resolve { path: String, source: io::Error },
}

impl From<PathError> for ErrorReport {
    fn from(e: PathError) -> Self {
        let (code, hint) = match &e {
            PathError::Empty | PathError::NotAbsolute(_) | PathError::ParentComponent(_) => (
                PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
                "Give an absolute path without \"..\" components, e.g. /var/backups/pg/db.dump.",
            ),
            PathError::BadRoot(_) => (
                PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
                "List absolute directories separated by commas, e.g. backup_mgmt.backup_roots = '/var/backups/pg'.",
            ),
            PathError::NoRoots => (
                PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
                "Set backup_mgmt.backup_roots in postgresql.conf and reload.",
            ),
            PathError::OutsideRoots { .. } => (
                PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
                "Only files below backup_mgmt.backup_roots may be read or written; symlinks are followed before the check.",
            ),
            PathError::Resolve { source, .. } if source.kind() == io::ErrorKind::NotFound => (
                PgSqlErrorCode::ERRCODE_UNDEFINED_FILE,
                "Check that the file or its directory exists.",
            ),
            PathError::Resolve { .. } => (
                PgSqlErrorCode::ERRCODE_IO_ERROR,
                "Check the file's permissions for the server's OS user.",
            ),
        };
        let mut report = ErrorReport::new(code, e.to_string(), "backup_mgmt").set_hint(hint);
        if let PathError::OutsideRoots {
            resolved: Some(r), ..
        } = &e
        {
            report = report.set_detail(format!("The path resolves to \"{}\".", r.display()));
        }
        report
    }
}

/// Lexical check of a path given by a user: absolute, not empty, no `..` component.
pub fn validate_absolute(path: &str) -> Result<&Path, PathError> {
    if path.is_empty() {
        return Err(PathError::Empty);
    }
    let p = Path::new(path);
    if !p.is_absolute() {
        return Err(PathError::NotAbsolute(path.to_owned()));
    }
    if p.components().any(|c| matches!(c, Component::ParentDir)) {
        return Err(PathError::ParentComponent(path.to_owned()));
    }
    Ok(p)
}

/// Parses `backup_mgmt.backup_roots`: comma-separated absolute directories, blanks ignored.
pub fn parse_roots(setting: &str) -> Result<Vec<PathBuf>, PathError> {
    setting
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            validate_absolute(s)
                .map(Path::to_path_buf)
                .map_err(|_| PathError::BadRoot(s.to_owned()))
        })
        .collect()
}

/// True when `path` is one of `roots` or below one, compared component by component (so
/// `/backups2` is not inside `/backups`).
pub fn is_inside(path: &Path, roots: &[PathBuf]) -> bool {
    roots.iter().any(|root| path.starts_with(root))
}

/// Resolves `path` (which must exist, or whose parent directory must exist when `may_be_new`)
/// and returns its canonical form if it lies inside one of `roots`.  Roots are canonicalised
/// too, so a root that is itself a symlink (e.g. to a mount point) works.
pub fn confine(path: &str, roots: &[PathBuf], may_be_new: bool) -> Result<PathBuf, PathError> {
    let p = validate_absolute(path)?;
    if roots.is_empty() {
        return Err(PathError::NoRoots);
    }
    // Refuse before any lookup what cannot be inside, so that probing files elsewhere (does
    // /etc/shadow exist?) learns nothing.
    if !is_inside(p, roots) {
        return Err(PathError::OutsideRoots {
            path: path.to_owned(),
            resolved: None,
        });
    }
    let resolve = |q: &Path| {
        q.canonicalize().map_err(|source| PathError::Resolve {
            path: path.to_owned(),
            source,
        })
    };
    let resolved = match resolve(p) {
        Ok(r) => r,
        Err(PathError::Resolve { source, .. })
            if may_be_new && source.kind() == io::ErrorKind::NotFound =>
        {
            let (Some(parent), Some(name)) = (p.parent(), p.file_name()) else {
                return Err(PathError::Resolve {
                    path: path.to_owned(),
                    source,
                });
            };
            resolve(parent)?.join(name)
        }
        Err(e) => return Err(e),
    };
    let canonical_roots: Vec<PathBuf> =
        roots.iter().filter_map(|r| r.canonicalize().ok()).collect();
    if is_inside(&resolved, &canonical_roots) {
        Ok(resolved)
    } else {
        Err(PathError::OutsideRoots {
            path: path.to_owned(),
            resolved: Some(resolved),
        })
    }
}

/// Returns the canonical form of `path` when it is inside `backup_mgmt.backup_roots`, and
/// raises an error naming it otherwise.  Lets an operator check a path (and the roots setting)
/// before pointing a job at it.
#[pg_extern(volatile, parallel_safe, security_definer)]
#[search_path(pg_catalog, pg_temp)]
fn check_backup_path(path: &str) -> Result<String, ErrorReport> {
    let roots = guc::backup_roots()?;
    match confine(path, &roots, true) {
        Ok(p) => Ok(p.display().to_string()),
        Err(e) => {
            if matches!(e, PathError::OutsideRoots { .. }) {
                // Escape attempts belong in the server log, not only in the caller's session.
                pgrx::log!("backup_mgmt: refused path outside backup roots: {e}");
            }
            Err(e.into())
        }
    }
}

/// What `remove_confined` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Removal {
    Removed,
    AlreadyGone,
}

/// Removes a backup's file or directory, only inside `roots` (resolved, so no `..` or symlink
/// leads out), and only a regular file or a directory (never a FIFO, device or socket).
pub fn remove_confined(path: &str, roots: &[PathBuf]) -> Result<Removal, String> {
    let resolved = match confine(path, roots, false) {
        Ok(p) => p,
        Err(PathError::Resolve { .. }) => return Ok(Removal::AlreadyGone),
        Err(e) => return Err(e.to_string()),
    };
    let removed = match std::fs::symlink_metadata(&resolved) {
        Ok(m) if m.is_file() => std::fs::remove_file(&resolved),
        Ok(m) if m.is_dir() => std::fs::remove_dir_all(&resolved),
        Ok(_) => return Err("not a regular file or directory".into()),
        Err(_) => return Ok(Removal::AlreadyGone),
    };
    removed.map(|_| Removal::Removed).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roots(dirs: &[&Path]) -> Vec<PathBuf> {
        dirs.iter().map(|d| d.to_path_buf()).collect()
    }

    #[test]
    fn lexical_checks() {
        assert!(matches!(validate_absolute(""), Err(PathError::Empty)));
        assert!(matches!(
            validate_absolute("backups/x"),
            Err(PathError::NotAbsolute(_))
        ));
        assert!(matches!(
            validate_absolute("/b/../etc/passwd"),
            Err(PathError::ParentComponent(_))
        ));
        assert!(validate_absolute("/b/./x.dump").is_ok());
        assert!(
            validate_absolute("/b/x..dump").is_ok(),
            "dots inside a name are not a parent component"
        );
    }

    #[test]
    fn roots_parse() {
        let r = parse_roots(" /a , /b/c,,").unwrap();
        assert_eq!(r, vec![PathBuf::from("/a"), PathBuf::from("/b/c")]);
        assert!(parse_roots("").unwrap().is_empty());
        assert!(matches!(parse_roots("/a,rel"), Err(PathError::BadRoot(s)) if s == "rel"));
        assert!(matches!(parse_roots("/a/../b"), Err(PathError::BadRoot(_))));
    }

    #[test]
    fn inside_is_component_wise() {
        let r = vec![PathBuf::from("/backups")];
        assert!(is_inside(Path::new("/backups"), &r));
        assert!(is_inside(Path::new("/backups/db/x"), &r));
        assert!(!is_inside(Path::new("/backups2/x"), &r));
        assert!(!is_inside(Path::new("/etc/passwd"), &r));
    }

    #[test]
    fn confine_resolves_and_refuses_escapes() {
        let root = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let r = roots(&[root.path()]);
        let inside_file = root.path().join("a.dump");
        std::fs::write(&inside_file, b"x").unwrap();
        std::fs::write(outside.path().join("secret"), b"s").unwrap();
        std::os::unix::fs::symlink(outside.path().join("secret"), root.path().join("link"))
            .unwrap();
        std::os::unix::fs::symlink(outside.path(), root.path().join("dirlink")).unwrap();

        let ok = confine(inside_file.to_str().unwrap(), &r, false).unwrap();
        assert_eq!(ok, inside_file.canonicalize().unwrap());

        // New file in an existing directory inside the root.
        let new = root.path().join("new.dump");
        assert!(confine(new.to_str().unwrap(), &r, true).is_ok());
        assert!(matches!(
            confine(new.to_str().unwrap(), &r, false),
            Err(PathError::Resolve { .. })
        ));

        // Absolute path outside the roots: refused before any lookup.
        assert!(matches!(
            confine("/etc/passwd", &r, false),
            Err(PathError::OutsideRoots { resolved: None, .. })
        ));
        // `..` escaping the root.
        let dotdot = format!("{}/../etc/passwd", root.path().display());
        assert!(matches!(
            confine(&dotdot, &r, false),
            Err(PathError::ParentComponent(_))
        ));
        // Symlinks that escape, to a file and through a directory, also for new files.
        let link = root.path().join("link");
        assert!(matches!(
            confine(link.to_str().unwrap(), &r, false),
            Err(PathError::OutsideRoots {
                resolved: Some(_),
                ..
            })
        ));
        let through = root.path().join("dirlink").join("secret");
        assert!(matches!(
            confine(through.to_str().unwrap(), &r, false),
            Err(PathError::OutsideRoots { .. })
        ));
        let new_through = root.path().join("dirlink").join("new");
        assert!(matches!(
            confine(new_through.to_str().unwrap(), &r, true),
            Err(PathError::OutsideRoots { .. })
        ));
        // No roots at all.
        assert!(matches!(
            confine(inside_file.to_str().unwrap(), &[], false),
            Err(PathError::NoRoots)
        ));
    }

    #[test]
    fn root_that_is_a_symlink_works() {
        let real = tempfile::tempdir().unwrap();
        let holder = tempfile::tempdir().unwrap();
        let link_root = holder.path().join("backups");
        std::os::unix::fs::symlink(real.path(), &link_root).unwrap();
        std::fs::write(real.path().join("x"), b"x").unwrap();
        let r = roots(&[&link_root]);
        assert!(confine(link_root.join("x").to_str().unwrap(), &r, false).is_ok());
    }
}
