//! End-to-end: `backup-mgmt wal-set-aside` against a cluster archiving through the module to a
//! filesystem target, where another object holds the key of a file the worker must copy.

use std::time::Duration;

use backup_mgmt_e2e::cluster::{sha256sum, Cluster};
use backup_mgmt_e2e::offsite_wal::{
    add_disk_target, archiving_cluster, copies, status, switch_segments, wait_caught_up,
};
use backup_mgmt_e2e::program::run;

/// A target that holds other bytes under an archived file's name (a second cluster with the same
/// system identifier wrote there): the copy fails every time, naming the key, and the object is
/// left as it is; `backup-mgmt wal-set-aside` moves it to `.set-aside` (copied, checked, then
/// removed from its key) and the worker's next try lands the archived file there. A name that is
/// not a WAL file's is refused; one the target does not hold is "nothing there"; the cluster's
/// own copy is refused.
#[test]
fn wal_set_aside_frees_a_key_that_holds_other_bytes_and_keeps_them() {
    let (cluster, second) = archiving_cluster(true);
    let second = second.unwrap();
    let mut db = cluster.connect("postgres");
    db.batch_execute("CREATE EXTENSION backup_mgmt").unwrap();
    let sysid = add_disk_target(&mut db, &second);
    switch_segments(&mut db, 2);
    wait_caught_up(&cluster, &mut db, "disk", 2);
    // The next segment's key, stored as the earlier ones are (compressed or not).
    let suffix = if copies(&mut db, "disk")[0].0.ends_with(".zst") {
        ".zst"
    } else {
        ""
    };
    let next: String = db
        .query_one("SELECT pg_walfile_name(pg_current_wal_insert_lsn())", &[])
        .unwrap()
        .get(0);
    let dir = second.join("pg");
    let key = format!("{sysid}/.wal/{next}{suffix}");
    std::fs::write(dir.join(&key), b"another cluster's bytes").unwrap();
    switch_segments(&mut db, 1);
    let refused = Cluster::wait_for(Duration::from_secs(60), || {
        db.query_one(
            "SELECT coalesce(last_error, '') FROM backup_mgmt.offsite_wal_status WHERE config_name = 'disk'",
            &[],
        )
        .unwrap()
        .get::<_, String>(0)
        .contains("already holds different content")
    });
    assert!(refused, "{:?}\n{}", status(&mut db, "disk"), cluster.log());
    assert_eq!(
        std::fs::read(dir.join(&key)).unwrap(),
        b"another cluster's bytes"
    );

    let dir_arg = dir.to_string_lossy().into_owned();
    let sysid_arg = sysid.to_string();
    let cli = |args: &[&str]| {
        let mut all = vec![
            "--dir",
            &dir_arg,
            "--cluster",
            &sysid_arg,
            "--output",
            "json",
        ];
        all.extend_from_slice(args);
        run(&cluster, &all)
    };
    let (code, _, err) = cli(&["wal-set-aside", "../../../etc/passwd"]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("not the name of an archived WAL file"),
        "{err}"
    );
    let (code, _, err) = cli(&["wal-set-aside", "0000000100000000000000FF"]);
    assert_eq!(code, 4, "{err}");
    let (code, out, err) = cli(&["wal-set-aside", &next]);
    assert_eq!(code, 0, "{out}\n{err}");
    let moved: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(moved["key"], key.as_str());
    let to = moved["set_aside_to"].as_str().unwrap().to_owned();
    assert!(
        to.starts_with(&format!("{sysid}/.set-aside/{next}{suffix}.")),
        "{to}"
    );
    assert_eq!(
        std::fs::read(dir.join(&to)).unwrap(),
        b"another cluster's bytes"
    );

    // The worker's next try (the file was held back for a minute) lands the archived file.
    wait_caught_up(&cluster, &mut db, "disk", 3);
    let landed = copies(&mut db, "disk");
    let (_, remote, local) = landed
        .iter()
        .find(|(k, _, _)| *k == key)
        .unwrap_or_else(|| panic!("{key} not copied: {landed:?}"));
    assert_eq!(remote, local);
    assert_eq!(&sha256sum(&dir.join(&key)), local);
    assert_eq!(
        std::fs::read(dir.join(&to)).unwrap(),
        b"another cluster's bytes"
    );

    // A mistyped name must not empty a good key: the cluster's own copy, as the mirror lists
    // it, is refused and stays.
    let (first, _, _) = landed[0].clone();
    let mirror = dir.join(format!("{sysid}/.catalog/catalog_mirror.json"));
    assert!(Cluster::wait_for(Duration::from_secs(60), || {
        let mut doc: serde_json::Value = std::fs::read(&mirror)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        backup_mgmt_e2e::offsite::with_wal_files(&mut doc, |k| std::fs::read(dir.join(k)).ok())
            && doc["wal_files"].to_string().contains(&first)
    }));
    let name = first.rsplit('/').next().unwrap().trim_end_matches(".zst");
    let (code, _, err) = cli(&["wal-set-aside", name]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("this cluster's own copy"), "{err}");
    assert!(dir.join(&first).is_file());
}
