//! Throwaway PostgreSQL clusters for end-to-end tests.
//!
//! Each `Cluster` is a fresh `initdb` in its own directory under /tmp, started with the
//! installed server (`pg_config --bindir`), listening only on a Unix socket in that directory.
//! PostgreSQL refuses to run as root, so when the tests run as root every server program runs as
//! the `postgres` OS user (setuid in the child, no sudo needed).  Dropping the value stops the
//! server and removes the directory.

use std::ffi::CString;
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

/// The OS user that owns and runs test clusters when the tests run as root.
const SERVER_OS_USER: &str = "postgres";

pub struct Cluster {
    /// Holds the data directory and the socket; removed on drop.
    root: tempfile::TempDir,
    pub port: u16,
    bindir: PathBuf,
    running: bool,
    /// A second directory that lives as long as the cluster (backup roots).
    extra: Option<tempfile::TempDir>,
}

/// Whether any process has its working directory in `data` (every server process does).
fn processes_using(data: &Path) -> bool {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return false;
    };
    entries
        .filter_map(Result::ok)
        .any(|e| std::fs::read_link(e.path().join("cwd")).is_ok_and(|cwd| cwd.starts_with(data)))
}

/// uid and gid of `user`, when this process is root and so must switch to it.
fn server_ids() -> Option<(u32, u32)> {
    if unsafe { libc::geteuid() } != 0 {
        return None;
    }
    let name = CString::new(SERVER_OS_USER).expect("no NUL in a user name");
    let pw = unsafe { libc::getpwnam(name.as_ptr()) };
    assert!(
        !pw.is_null(),
        "running as root, but there is no '{SERVER_OS_USER}' OS user to run PostgreSQL"
    );
    let pw = unsafe { &*pw };
    Some((pw.pw_uid, pw.pw_gid))
}

/// The installed server's bin directory (PG_CONFIG may name another pg_config).
pub fn bindir() -> PathBuf {
    let pg_config = std::env::var("PG_CONFIG").unwrap_or_else(|_| "pg_config".into());
    let out = Command::new(&pg_config)
        .arg("--bindir")
        .output()
        .expect("pg_config runs");
    assert!(out.status.success(), "pg_config --bindir failed");
    PathBuf::from(String::from_utf8(out.stdout).expect("utf-8 path").trim())
}

/// Independent sha256 of a file: coreutils, not backup_mgmt's code.
pub fn sha256sum(path: &Path) -> String {
    let out = Command::new("sha256sum")
        .arg(path)
        .output()
        .expect("sha256sum runs");
    assert!(out.status.success(), "sha256sum {}", path.display());
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_owned()
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

fn check(what: &str, out: Output) -> Output {
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

impl Cluster {
    /// A cluster value with its own directory (owned by the server's OS user when running as
    /// root) and a free port; nothing in it yet.
    fn unstarted() -> Cluster {
        let root = tempfile::Builder::new()
            .prefix("bm-e2e-")
            .tempdir_in("/tmp")
            .expect("temp dir");
        if let Some((uid, gid)) = server_ids() {
            std::os::unix::fs::chown(root.path(), Some(uid), Some(gid)).expect("chown test dir");
        }
        Cluster {
            root,
            port: free_port(),
            bindir: bindir(),
            running: false,
            extra: None,
        }
    }

    /// initdb a new cluster, append `conf` lines to postgresql.conf, and start it.
    pub fn start(conf: &[&str]) -> Cluster {
        Cluster::start_initdb(&[], conf)
    }

    /// Like `start`, with more initdb options (e.g. `--data-checksums`).
    pub fn start_initdb(initdb: &[&str], conf: &[&str]) -> Cluster {
        let mut cluster = Cluster::unstarted();
        let data = cluster.data_dir();
        check(
            "initdb",
            cluster
                .server_command("initdb")
                .args([
                    "--auth=trust",
                    "--username=postgres",
                    "--encoding=UTF8",
                    "--locale=C",
                    "--no-sync",
                ])
                .args(initdb)
                .arg("-D")
                .arg(&data)
                .output()
                .expect("initdb runs"),
        );
        let mut settings = vec![
            "listen_addresses = ''".to_owned(),
            format!("port = {}", cluster.port),
            format!(
                "unix_socket_directories = '{}'",
                cluster.socket_dir().display()
            ),
            "fsync = off".to_owned(),
            "log_min_messages = warning".to_owned(),
        ];
        settings.extend(conf.iter().map(|s| s.to_string()));
        cluster.append_conf(&settings.join("\n"));
        cluster.pg_ctl_start();
        cluster
    }

    /// Like `start`, with `backup_mgmt` preloaded and a backup root (owned by the server's OS
    /// user) configured as `backup_mgmt.backup_roots`.
    pub fn start_with_backups(conf: &[&str]) -> Cluster {
        Cluster::start_with_backups_initdb(&[], conf)
    }

    /// `start_with_backups` with more initdb options.
    pub fn start_with_backups_initdb(initdb: &[&str], conf: &[&str]) -> Cluster {
        let root = tempfile::Builder::new()
            .prefix("bm-e2e-")
            .tempdir_in("/tmp")
            .expect("temp dir");
        let backups = root.path().join("backups");
        std::fs::create_dir(&backups).expect("backup root");
        if let Some((uid, gid)) = server_ids() {
            std::os::unix::fs::chown(&backups, Some(uid), Some(gid)).expect("chown backups");
        }
        let roots = format!("backup_mgmt.backup_roots = '{}'", backups.display());
        let mut all = vec!["shared_preload_libraries = 'backup_mgmt'", roots.as_str()];
        all.extend_from_slice(conf);
        let mut cluster = Cluster::start_initdb(initdb, &all);
        cluster.extra = Some(root);
        cluster
    }

    /// A streaming standby of `primary` (pg_basebackup -R), on its own port and socket, started.
    /// It keeps the primary's settings, backup_mgmt included.
    pub fn standby_of(primary: &Cluster) -> Cluster {
        let mut standby = Cluster::unstarted();
        let data = standby.data_dir();
        check(
            "pg_basebackup",
            primary
                .client_command("pg_basebackup")
                .args(["-R", "-X", "stream", "-c", "fast", "-D"])
                .arg(&data)
                .output()
                .expect("pg_basebackup runs"),
        );
        // Later lines win: the copied postgresql.conf names the primary's port and socket.
        standby.append_conf(&format!(
            "port = {}\nunix_socket_directories = '{}'",
            standby.port,
            standby.socket_dir().display()
        ));
        standby.pg_ctl_start();
        standby
    }

    /// A cluster directory owned by the server's OS user with no data directory yet (a restore
    /// writes `data_dir()`), on its own port; `start_restored` starts it.
    pub fn empty() -> Cluster {
        Cluster::unstarted()
    }

    /// Starts a data directory a restore wrote: its own port and socket, `conf` lines after.
    pub fn start_restored(&mut self, conf: &[&str]) {
        self.append_conf(&format!(
            "port = {}\nunix_socket_directories = '{}'\n{}",
            self.port,
            self.socket_dir().display(),
            conf.join("\n")
        ));
        self.pg_ctl_start();
    }

    /// A new cluster made by a restore recipe (`bash recipe NEW_DATA_DIRECTORY`, run as the
    /// server's OS user), on its own port and socket, started.  Returns the recipe's output too.
    pub fn restored_by(recipe: &str) -> (Cluster, String) {
        let mut restored = Cluster::unstarted();
        let script = restored.dir().join("recipe.sh");
        std::fs::write(&script, recipe).expect("write recipe");
        let mut bash = restored.server_command("/bin/bash");
        // As an operator would point a chain's recipe at this server's pg_combinebackup (a
        // relocatable PostgreSQL is neither on PATH nor where Debian puts it).
        let combine = restored.bindir.join("pg_combinebackup");
        if combine.exists() {
            bash.env("PG_COMBINEBACKUP", combine);
        }
        // And at its postgres, with which the recipe reads the backed-up configuration.
        bash.env("POSTGRES", restored.bindir.join("postgres"));
        let out = check(
            "restore recipe",
            bash.arg(&script)
                .arg(restored.data_dir())
                .output()
                .expect("bash runs"),
        );
        restored.append_conf(&format!(
            "port = {}\nunix_socket_directories = '{}'",
            restored.port,
            restored.socket_dir().display()
        ));
        restored.pg_ctl_start();
        let said = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (restored, said)
    }

    /// `restored_by`, then waits (up to `timeout`) until the restored server has finished
    /// recovery and promoted; returns it, a connection to its `postgres` database, and what the
    /// recipe said.  Panics with the recipe's output and the server log when it does not.
    pub fn restored_and_promoted(
        recipe: &str,
        timeout: Duration,
    ) -> (Cluster, postgres::Client, String) {
        let (restored, said) = Cluster::restored_by(recipe);
        let mut db = restored.connect("postgres");
        let promoted = Cluster::wait_for(timeout, || {
            db.query_one("SELECT NOT pg_is_in_recovery()", &[])
                .map(|row| row.get::<_, bool>(0))
                .unwrap_or(false)
        });
        assert!(
            promoted,
            "recovery did not finish\n{said}\n{}",
            restored.log()
        );
        (restored, db, said)
    }

    /// `pg_ctl promote`, waiting for it.
    pub fn promote(&self) {
        check(
            "pg_ctl promote",
            self.server_command("pg_ctl")
                .args(["-w", "-t", "60", "-D"])
                .arg(self.data_dir())
                .arg("promote")
                .output()
                .expect("pg_ctl runs"),
        );
    }

    /// Writes a file only the server's OS user can read (mode 0600, owned by it), e.g. a
    /// credentials file that a `file:` reference names.
    pub fn write_private_file(&self, path: &Path, contents: &str) {
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .expect("create private file");
        std::io::Write::write_all(&mut f, contents.as_bytes()).expect("write private file");
        if let Some((uid, gid)) = server_ids() {
            std::os::unix::fs::chown(path, Some(uid), Some(gid)).expect("chown private file");
        }
    }

    /// Hands `path` (made by the test, as root) to the server's OS user, so the server and
    /// the programs run as that user can write it.  Nothing to do when not root.
    pub fn give_to_server(&self, path: &Path) {
        if let Some((uid, gid)) = server_ids() {
            std::os::unix::fs::chown(path, Some(uid), Some(gid)).expect("chown to the server");
        }
    }

    /// The configured backup root of `start_with_backups`.
    pub fn backup_root(&self) -> PathBuf {
        self.extra
            .as_ref()
            .expect("cluster started with start_with_backups")
            .path()
            .join("backups")
    }

    /// The postmaster's pid, from postmaster.pid.
    pub fn postmaster_pid(&self) -> i32 {
        let text = std::fs::read_to_string(self.data_dir().join("postmaster.pid"))
            .expect("postmaster.pid");
        text.lines()
            .next()
            .and_then(|l| l.trim().parse().ok())
            .expect("pid in postmaster.pid")
    }

    /// SIGKILL to the postmaster, as a crash would; waits until every server process is gone.
    pub fn kill_postmaster(&mut self) {
        let pid = self.postmaster_pid();
        unsafe { libc::kill(pid, libc::SIGKILL) };
        self.running = false;
        // Backends notice the postmaster's death and exit; the data directory can only be
        // started again once none is left attached to the old shared memory.
        let data = self.data_dir();
        let gone = Cluster::wait_for(Duration::from_secs(60), || !processes_using(&data));
        assert!(gone, "server processes survived the postmaster's death");
        // pg_ctl left the postmaster to be reaped by PID 1, which in some containers never
        // reaps: a zombie postmaster keeps its pid "alive" and the next start refuses to run.
        // A zombie holds no resources, so its lock file may go, as an operator would remove it.
        let state = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let zombie = state
            .rsplit(')')
            .next()
            .is_some_and(|rest| rest.trim_start().starts_with('Z'));
        if zombie {
            let _ = std::fs::remove_file(self.data_dir().join("postmaster.pid"));
            let socket_lock = format!(".s.PGSQL.{}.lock", self.port);
            let _ = std::fs::remove_file(self.socket_dir().join(socket_lock));
        }
    }

    /// A command for a server program, run as the server's OS user, with a clean environment:
    /// a developer's PGHOST or PGDATABASE must not leak into a test cluster.
    pub fn server_command(&self, program: &str) -> Command {
        let mut cmd = Command::new(self.bindir.join(program));
        cmd.env_clear()
            .env("PATH", "/usr/bin:/bin")
            .env("LC_ALL", "C")
            .env("RUST_BACKTRACE", "0");
        if let Some((uid, gid)) = server_ids() {
            cmd.uid(uid).gid(gid);
        }
        cmd
    }

    /// A second backup root, `name` beside the first (mode 0700, the server's OS user's), listed
    /// in `backup_mgmt.backup_roots` and the configuration reloaded: where a filesystem target
    /// (a "second disk") may write.
    pub fn second_backup_root(&self, name: &str) -> PathBuf {
        self.add_backup_root(name, false)
    }

    /// A new backup root, `name` beside the first, put in front of it (a new disk taking over):
    /// the WAL archive and new backups move there; everything before stays where it is.
    pub fn new_first_backup_root(&self, name: &str) -> PathBuf {
        self.add_backup_root(name, true)
    }

    fn add_backup_root(&self, name: &str, first: bool) -> PathBuf {
        let dir = self.dir().join(name);
        let made = self
            .server_command("/bin/mkdir")
            .arg("-m")
            .arg("700")
            .arg(&dir)
            .status()
            .unwrap();
        assert!(made.success(), "mkdir {}", dir.display());
        let (old, new) = (self.backup_root(), dir.clone());
        let roots = match first {
            true => format!("{},{}", new.display(), old.display()),
            false => format!("{},{}", old.display(), new.display()),
        };
        let mut db = self.connect("postgres");
        db.execute(
            &format!("ALTER SYSTEM SET backup_mgmt.backup_roots = '{roots}'"),
            &[],
        )
        .unwrap();
        db.batch_execute("SELECT pg_reload_conf()").unwrap();
        dir
    }

    /// A client program (pg_dump, psql, …) connecting to this cluster.
    pub fn client_command(&self, program: &str) -> Command {
        let mut cmd = self.server_command(program);
        cmd.env("PGHOST", self.socket_dir())
            .env("PGPORT", self.port.to_string())
            .env("PGUSER", "postgres");
        cmd
    }

    pub fn dir(&self) -> &Path {
        self.root.path()
    }

    pub fn data_dir(&self) -> PathBuf {
        self.root.path().join("data")
    }

    pub fn socket_dir(&self) -> PathBuf {
        self.root.path().to_path_buf()
    }

    pub fn append_conf(&self, lines: &str) {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(self.data_dir().join("postgresql.conf"))
            .expect("postgresql.conf");
        writeln!(f, "\n{lines}").expect("write postgresql.conf");
    }

    pub fn pg_ctl_start(&mut self) {
        let log = self.root.path().join("server.log");
        let out = self
            .server_command("pg_ctl")
            .args(["-w", "-t", "60", "-D"])
            .arg(self.data_dir())
            .arg("-l")
            .arg(&log)
            .arg("start")
            .output()
            .expect("pg_ctl runs");
        if !out.status.success() {
            panic!(
                "pg_ctl start failed ({}):\n{}\nserver log:\n{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                self.log()
            );
        }
        self.running = true;
    }

    pub fn pg_ctl_stop(&mut self, mode: &str) {
        if self.running {
            let _ = self
                .server_command("pg_ctl")
                .args(["-w", "-t", "60", "-m", mode, "-D"])
                .arg(self.data_dir())
                .arg("stop")
                .output();
            self.running = false;
        }
    }

    /// The server log so far (for assertions and for failure messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.root.path().join("server.log")).unwrap_or_default()
    }

    pub fn connect_as(
        &self,
        database: &str,
        user: &str,
    ) -> Result<postgres::Client, postgres::Error> {
        postgres::Config::new()
            .host_path(self.socket_dir())
            .port(self.port)
            .user(user)
            .dbname(database)
            .connect_timeout(Duration::from_secs(30))
            .connect(postgres::NoTls)
    }

    /// A superuser connection to `database`.
    pub fn connect(&self, database: &str) -> postgres::Client {
        self.connect_as(database, "postgres")
            .unwrap_or_else(|e| panic!("connect to {database}: {e}\n{}", self.log()))
    }

    /// Runs a client program to completion and returns its output, panicking on failure.
    pub fn run_client(&self, program: &str, args: &[&str]) -> Output {
        check(
            program,
            self.client_command(program)
                .args(args)
                .output()
                .expect("client program runs"),
        )
    }

    /// Waits until `cond` holds, polling, for at most `timeout`.
    pub fn wait_for(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if cond() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        cond()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.pg_ctl_stop("immediate");
    }
}
