//! Path confinement: every file backup_mgmt touches must resolve inside `backup_mgmt.backup_roots`;
//! and path components made from names (databases, jobs), which can never add a directory level.
//!
//! The checks are in two steps.  A lexical step refuses what is wrong on its face (relative paths,
//! `..` components) without touching the file system, so a refused path is never even looked up.
//! A resolving step canonicalises (following symlinks) and checks the result against the
//! canonicalised roots, so a symlink inside a root that points elsewhere is refused too.

use std::io;
use std::path::{Component, Path, PathBuf};

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
    #[error("path \"{0}\" is a backup root itself; a backup is a file or directory inside one")]
    IsRoot(String),
    #[error("path \"{path}\" lies in {what}, which backup_mgmt keeps for itself")]
    Reserved { path: String, what: &'static str },
    #[error("could not resolve path \"{path}\": {source}")]
    Resolve { path: String, source: io::Error },
    #[error("\"{0}\" is not a regular file or directory")]
    NotFileOrDirectory(String),
    #[error("could not create \"{path}\": {source}")]
    Create { path: String, source: io::Error },
    #[error("could not remove \"{path}\": {source}")]
    Remove { path: String, source: io::Error },
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

/// The configured roots, as given and resolved (a root that is itself a symlink, e.g. to a
/// mount point, counts as where it leads; one that does not resolve is left out of `canonical`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Roots {
    pub given: Vec<PathBuf>,
    pub canonical: Vec<PathBuf>,
}

impl Roots {
    pub fn resolve(given: &[PathBuf]) -> Roots {
        Roots {
            given: given.to_vec(),
            canonical: given.iter().filter_map(|r| r.canonicalize().ok()).collect(),
        }
    }

    /// Whether every root resolved (only then is the resolution worth keeping).
    pub fn complete(&self) -> bool {
        self.given.len() == self.canonical.len()
    }
}

/// Resolves `path` (which must exist, or whose parent directory must exist when `may_be_new`)
/// and returns its canonical form if it lies inside one of `roots`.  Roots are canonicalised
/// too, so a root that is itself a symlink (e.g. to a mount point) works.
pub fn confine(path: &str, roots: &[PathBuf], may_be_new: bool) -> Result<PathBuf, PathError> {
    confine_in(path, &Roots::resolve(roots), may_be_new)
}

/// `confine` with the roots already resolved.
pub fn confine_in(path: &str, roots: &Roots, may_be_new: bool) -> Result<PathBuf, PathError> {
    let p = validate_absolute(path)?;
    if roots.given.is_empty() {
        return Err(PathError::NoRoots);
    }
    // Refuse before any lookup what cannot be inside, so that probing files elsewhere (does
    // /etc/shadow exist?) learns nothing.
    if !is_inside(p, &roots.given) && !is_inside(p, &roots.canonical) {
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
    // A path that may not exist yet: its directory resolved, then its last component looked at
    // without following it (followed only when it is a symlink), one resolution instead of two.
    let resolved = match (may_be_new, p.parent(), p.file_name()) {
        (true, Some(parent), Some(name)) => {
            let joined = resolve(parent)?.join(name);
            match std::fs::symlink_metadata(&joined) {
                Ok(m) if m.file_type().is_symlink() => resolve(&joined)?,
                _ => joined,
            }
        }
        _ => resolve(p)?,
    };
    if is_inside(&resolved, &roots.canonical) {
        Ok(resolved)
    } else {
        Err(PathError::OutsideRoots {
            path: path.to_owned(),
            resolved: Some(resolved),
        })
    }
}

/// A path component from a database or job name: anything but `[A-Za-z0-9_-]` (and a dot that
/// is not leading) is percent-encoded, so a name can never add a directory level or `..`.
pub fn path_component(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for (i, b) in name.bytes().enumerate() {
        let plain = b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || (b == b'.' && i > 0);
        if plain {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    if out.is_empty() {
        out.push_str("%00");
    }
    out
}

/// `path` with `suffix` appended to its last component.
pub fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut s = std::ffi::OsString::from(path.as_os_str());
    s.push(suffix);
    PathBuf::from(s)
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
    fn names_cannot_add_path_levels() {
        assert_eq!(path_component("../etc"), "%2E.%2Fetc");
        assert_eq!(path_component("sales db"), "sales%20db");
        assert_eq!(path_component("a.b-c_d"), "a.b-c_d");
        assert_eq!(path_component(""), "%00");
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
