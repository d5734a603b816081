//! End-to-end: a directory-format dump (`pg_dump_directory`, each file compressed with zstd)
//! with its globals on a filesystem target comes back through `backup-mgmt restore-logical`
//! into a new database of a fresh server, roles first, every file checked against the dump's
//! manifest on the way.  One file replaced on the target by a zstd bomb (a few kB that
//! decompress to 256 MB) is refused by its sha256 before it is decompressed (the work directory
//! is a 64 MB tmpfs, which the bomb would fill first): exit 3, no database, nothing left in the
//! work directory.

use backup_mgmt_e2e::cluster::Cluster;
use backup_mgmt_e2e::jobs::run_job;
use backup_mgmt_e2e::offsite::{add_disk_target, switch_sync_and_wait};
use backup_mgmt_e2e::program::run;

#[test]
fn a_directory_dump_comes_back_checked_and_a_bomb_in_it_is_never_decompressed() {
    let cluster =
        Cluster::start_with_backups(&["archive_mode = on", "archive_library = 'backup_mgmt'"]);
    let mut db = cluster.connect("postgres");
    let disk = cluster.second_backup_root("second-disk");
    db.batch_execute(
        "CREATE EXTENSION backup_mgmt;
         CREATE ROLE shop_owner LOGIN;
         CREATE SCHEMA shop AUTHORIZATION shop_owner;
         SET ROLE shop_owner;
         CREATE TABLE shop.big AS SELECT g, md5(g::text) AS pad FROM generate_series(1, 50000) g;
         RESET ROLE;
         SELECT backup_mgmt.schedule_backup('dir', '@yearly', 'postgres', 'full',
                'pg_dump_directory', '{\"include_globals\": true}');",
    )
    .unwrap();
    add_disk_target(&mut db, &disk);
    run_job(&cluster, &mut db, "dir");
    let (target, _, doc) = switch_sync_and_wait(&cluster, &mut db, &disk, 1);
    let key = doc["backups"][0]["key"].as_str().unwrap().to_owned();
    // The test's premise: the dump's files are stored compressed.
    let members: Vec<std::path::PathBuf> = std::fs::read_dir(target.join(&key))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "zst"))
        .collect();
    assert!(!members.is_empty(), "no .zst file under {key}");

    let fresh = Cluster::start(&[]);
    let work = fresh.dir().join("work");
    std::fs::create_dir(&work).unwrap();
    let uid = std::os::unix::fs::MetadataExt::uid(&std::fs::metadata(fresh.data_dir()).unwrap());
    // The work directory holds 64 MB: a bomb decompressed before its check would fill it and
    // fail with "No space left on device" instead of the sha256 mismatch asserted below.
    let _small = Tmpfs::mount(&work, uid);
    let bindir = backup_mgmt_e2e::cluster::bindir();
    let restore = |database: &str| {
        run(
            &fresh,
            &[
                "--dir",
                target.to_str().unwrap(),
                "restore-logical",
                "--source-database",
                "postgres",
                "--database",
                database,
                "--host",
                fresh.socket_dir().to_str().unwrap(),
                "--port",
                &fresh.port.to_string(),
                "--user",
                "postgres",
                "--pg-bin",
                bindir.to_str().unwrap(),
                "--work-dir",
                work.to_str().unwrap(),
            ],
        )
    };
    let (code, out, err) = restore("restored");
    assert_eq!(code, 0, "{out}\n{err}\n{}", fresh.log());
    let mut r = fresh.connect("restored");
    let row = r
        .query_one(
            "SELECT count(*), sum(g)::bigint, pg_catalog.pg_get_userbyid(c.relowner)::text
               FROM shop.big, pg_catalog.pg_class c
              WHERE c.oid = 'shop.big'::regclass GROUP BY c.relowner",
            &[],
        )
        .unwrap();
    assert_eq!(row.get::<_, i64>(0), 50_000);
    assert_eq!(row.get::<_, i64>(1), 50_000 * 50_001 / 2);
    assert_eq!(row.get::<_, String>(2), "shop_owner", "{out}");
    drop(r);
    assert_eq!(std::fs::read_dir(&work).unwrap().count(), 0, "left behind");

    // The largest file replaced by a few kB that decompress to 256 MB.
    let biggest = members
        .iter()
        .max_by_key(|p| std::fs::metadata(p).unwrap().len())
        .unwrap();
    let mut zst = backup_mgmt_core::stream::compress(Vec::new(), 19).unwrap();
    std::io::Write::write_all(&mut zst, &vec![0u8; 256 << 20]).unwrap();
    let bomb = zst.finish().unwrap();
    assert!(bomb.len() < 64 << 10);
    std::fs::write(biggest, &bomb).unwrap();
    let (code, out, err) = restore("again");
    assert_eq!(code, 3, "{out}\n{err}");
    let name = biggest.file_name().unwrap().to_str().unwrap();
    // The refusal, not a full disk ("No space left on device" when it was decompressed first).
    let refusal = err.lines().last().unwrap_or_default();
    assert!(
        refusal.contains(&format!("{name}: sha256 ")) && refusal.contains("the mirror says"),
        "{err}"
    );
    let mut f = fresh.connect("postgres");
    let left: i64 = f
        .query_one(
            "SELECT count(*) FROM pg_database WHERE datname = 'again'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(left, 0, "a database was left");
    assert_eq!(std::fs::read_dir(&work).unwrap().count(), 0, "left behind");
}

/// A 64 MB tmpfs mounted (as root) for the test's duration; unmounted when dropped.  Where
/// mounting is not allowed the directory stays as it is (the bound is then only checked by
/// core's `a_directory_dump_member_is_decompressed_only_once_its_bytes_are_checked`).
struct Tmpfs(Option<std::path::PathBuf>);

impl Tmpfs {
    fn mount(dir: &std::path::Path, uid: u32) -> Tmpfs {
        let mounted = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o"])
            .arg(format!("size=64m,mode=0700,uid={uid}"))
            .arg("tmpfs")
            .arg(dir)
            .status()
            .is_ok_and(|s| s.success());
        if !mounted {
            eprintln!("could not mount a tmpfs on {}: unbounded", dir.display());
            std::os::unix::fs::chown(dir, Some(uid), None).unwrap();
        }
        Tmpfs(mounted.then(|| dir.to_owned()))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        if let Some(dir) = &self.0 {
            let _ = std::process::Command::new("umount")
                .arg("--lazy")
                .arg(dir)
                .status();
        }
    }
}
