//! A failover, as the timeline tests stage it: a standby caught up with a marker row, the
//! primary crashing, the standby promoted onto timeline 2.

use std::time::Duration;

use crate::cluster::Cluster;
use crate::offsite::promoted;

/// The timeline `db` writes on: the first eight hex digits of its current WAL file's name.
pub fn timeline(db: &mut postgres::Client) -> String {
    db.query_one(
        "SELECT substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8)",
        &[],
    )
    .unwrap()
    .get(0)
}

/// Waits until `standby` has replayed row `id` of table `markers`.
pub fn wait_replayed(standby: &Cluster, sdb: &mut postgres::Client, id: i32) {
    assert!(
        Cluster::wait_for(Duration::from_secs(60), || {
            sdb.query_one("SELECT count(*) FROM markers WHERE id = $1", &[&id])
                .map(|r| r.get::<_, i64>(0) == 1)
                .unwrap_or(false)
        }),
        "marker {id} not replayed\n{}",
        standby.log()
    );
}

/// The primary crashes (an immediate stop: the segment it was writing is never completed on
/// timeline 1, the standby continues it on timeline 2) and the standby is promoted; returns a
/// connection to it, checked to write on timeline 2.
pub fn crash_and_promote(primary: &mut Cluster, standby: &Cluster) -> postgres::Client {
    primary.pg_ctl_stop("immediate");
    standby.promote();
    let mut sdb = promoted(standby);
    assert_eq!(timeline(&mut sdb), "00000002");
    sdb
}
