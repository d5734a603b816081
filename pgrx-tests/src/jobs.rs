//! What the end-to-end tests share about backup jobs: a cluster with a populated database, the
//! backup records of a job, running a job now and waiting for its records, switching WAL until
//! the finished segment is in the catalog, what a recovery plan says of a catalog changed in a
//! transaction rolled back after, the marker rows a restore brought back.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::cluster::Cluster;

/// A cluster with the extension in `postgres` (the catalog database) and a populated `appdb`.
pub fn cluster_with_appdb() -> (Cluster, postgres::Client) {
    let cluster = Cluster::start_with_backups(&[]);
    let mut db = cluster.connect("postgres");
    for sql in ["CREATE EXTENSION backup_mgmt", "CREATE DATABASE appdb"] {
        db.batch_execute(sql).unwrap();
    }
    cluster
        .connect("appdb")
        .batch_execute(
            "CREATE TABLE orders (id int PRIMARY KEY, note text);
             INSERT INTO orders SELECT g, md5(g::text) FROM generate_series(1, 20000) g;
             CREATE ROLE app_reader;",
        )
        .unwrap();
    (cluster, db)
}

pub fn shell(script: &str) -> (bool, String) {
    let out = Command::new("/bin/sh")
        .args(["-c", script])
        .output()
        .expect("sh");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

pub struct Record {
    pub id: i64,
    pub path: PathBuf,
    pub size: i64,
    pub checksum: String,
    pub status: String,
    pub error: Option<String>,
    pub annotations: serde_like::Json,
}

/// Minimal access to the annotations JSON without another dependency: PostgreSQL extracts.
pub mod serde_like {
    #[derive(Debug, Default)]
    pub struct Json {
        pub globals_file: Option<String>,
        pub globals_sha256: Option<String>,
        pub job_name: Option<String>,
    }
}

pub fn records(db: &mut postgres::Client, job: &str) -> Vec<Record> {
    db.query(
        "SELECT backup_id, backup_file_path, backup_size, coalesce(checksum, ''), status, error_message,
                globals_file_path, globals_checksum, annotations->>'job_name'
           FROM backup_management.backup_records WHERE label = $1 ORDER BY backup_id",
        &[&job],
    )
    .unwrap()
    .iter()
    .map(|r| Record {
        id: r.get(0),
        path: PathBuf::from(r.get::<_, String>(1)),
        size: r.get(2),
        checksum: r.get(3),
        status: r.get(4),
        error: r.get(5),
        annotations: serde_like::Json {
            globals_file: r.get(6),
            globals_sha256: r.get(7),
            job_name: r.get(8),
        },
    })
    .collect()
}

pub fn wait_records(
    cluster: &Cluster,
    db: &mut postgres::Client,
    job: &str,
    status: &str,
    n: usize,
    secs: u64,
) -> Vec<Record> {
    let ok = Cluster::wait_for(Duration::from_secs(secs), || {
        records(db, job)
            .iter()
            .filter(|r| r.status == status)
            .count()
            >= n
    });
    let all = records(db, job);
    assert!(
        ok,
        "job {job}: wanted {n} {status} records, have {:?}\n{}",
        all.iter()
            .map(|r| (r.id, r.status.clone(), r.error.clone()))
            .collect::<Vec<_>>(),
        cluster.log()
    );
    all.into_iter().filter(|r| r.status == status).collect()
}

/// Schedules a yearly job (so only the manual run happens) and asks the worker to run it now.
pub fn run_now(db: &mut postgres::Client, job: &str, database: &str, method: &str, options: &str) {
    db.execute(
        "SELECT backup_mgmt.schedule_backup($1, '@yearly', $2, 'full', $3, $4::text::jsonb)",
        &[&job, &database, &method, &options],
    )
    .unwrap_or_else(|e| panic!("schedule {job}: {e}"));
    db.execute("SELECT backup_mgmt.run_job_now($1)", &[&job])
        .unwrap_or_else(|e| panic!("run {job}: {e}"));
}

pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().filter_map(Result::ok) {
            let p = e.path();
            out.push(p.clone());
            if p.is_dir() {
                stack.push(p);
            }
        }
    }
    out
}

/// A job's executions: (scheduled slot as text, status), oldest first.
pub fn executions(db: &mut postgres::Client, job: &str) -> Vec<(Option<String>, String)> {
    db.query(
        "SELECT e.scheduled_for::text, e.execution_status
           FROM enterprise_backup.backup_job_executions e JOIN enterprise_backup.backup_jobs j USING (job_id)
          WHERE j.job_name = $1 ORDER BY e.execution_id",
        &[&job],
    )
    .unwrap()
    .iter()
    .map(|r| (r.get(0), r.get(1)))
    .collect()
}

/// Switches to a new WAL file and waits until the one just finished is archived and ingested.
pub fn switch_and_wait_ingested(cluster: &Cluster, db: &mut postgres::Client) -> String {
    let done: String = db
        .query_one("SELECT pg_walfile_name(pg_switch_wal())", &[])
        .unwrap()
        .get(0);
    let ingested = Cluster::wait_for(Duration::from_secs(60), || {
        db.query_one(
            "SELECT count(*) FROM backup_management.wal_archive WHERE file_name = $1",
            &[&done],
        )
        .map(|r| r.get::<_, i64>(0) == 1)
        .unwrap_or(false)
    });
    assert!(
        ingested,
        "{done} not archived and ingested\n{}",
        cluster.log()
    );
    done
}

/// Runs job `job` now and waits for its backup; returns the backup's id.
pub fn run_job(cluster: &Cluster, db: &mut postgres::Client, job: &str) -> i64 {
    // Ids only grow: the run's record is the job's first finished one above this maximum.
    let before: i64 = db
        .query_one(
            "SELECT coalesce(max(backup_id), 0) FROM backup_management.backup_records",
            &[],
        )
        .unwrap()
        .get(0);
    db.execute("SELECT backup_mgmt.run_job_now($1)", &[&job])
        .unwrap();
    let mut id = None;
    let done = Cluster::wait_for(Duration::from_secs(180), || {
        id = db
            .query_opt(
                "SELECT backup_id, status FROM backup_management.backup_records
                  WHERE label = $1 AND backup_id > $2 AND status <> 'running'
                  ORDER BY backup_id LIMIT 1",
                &[&job, &before],
            )
            .ok()
            .flatten()
            .map(|r| (r.get::<_, i64>(0), r.get::<_, String>(1)));
        id.is_some()
    });
    assert!(done, "job {job} did not finish\n{}", cluster.log());
    let (id, status) = id.unwrap();
    let error: Option<String> = db
        .query_one(
            "SELECT error_message FROM backup_management.backup_records WHERE backup_id = $1",
            &[&id],
        )
        .unwrap()
        .get(0);
    assert_eq!(status, "completed", "{error:?}\n{}", cluster.log());
    id
}

/// A fingerprint of every pgbench table's contents.
pub fn pgbench_fingerprint(db: &mut postgres::Client) -> String {
    db.query_one(
        "SELECT concat_ws(' ',
            (SELECT md5(string_agg(a::text, ',' ORDER BY aid)) FROM pgbench_accounts a),
            (SELECT md5(string_agg(b::text, ',' ORDER BY bid)) FROM pgbench_branches b),
            (SELECT md5(string_agg(t::text, ',' ORDER BY tid)) FROM pgbench_tellers t),
            (SELECT md5(coalesce(string_agg(h::text, ',' ORDER BY h::text), '')) FROM pgbench_history h))",
        &[],
    )
    .unwrap()
    .get(0)
}

/// `plan_recovery(target)`'s `reachable` and `reason` after `change` (one statement, its
/// parameters `args`), in a transaction rolled back after it.
pub fn plan_after(
    db: &mut postgres::Client,
    change: &str,
    args: &[&str],
    target: &str,
) -> (bool, String) {
    let mut tx = db.transaction().unwrap();
    let params: Vec<&(dyn postgres::types::ToSql + Sync)> = args
        .iter()
        .map(|a| a as &(dyn postgres::types::ToSql + Sync))
        .collect();
    tx.execute(change, &params).unwrap();
    let plan = tx
        .query_one(
            "SELECT reachable, reason FROM backup_mgmt.plan_recovery($1::text::timestamptz)",
            &[&target],
        )
        .map(|r| (r.get(0), r.get(1)))
        .unwrap();
    tx.rollback().unwrap();
    plan
}

/// The ids of table `markers`, in order.
pub fn marker_ids(db: &mut postgres::Client) -> Vec<i32> {
    db.query("SELECT id FROM markers ORDER BY id", &[])
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect()
}
