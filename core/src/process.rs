//! Running PostgreSQL's own programs (pg_dump, pg_restore, pg_verifybackup, postgres...): argument
//! vectors, never a shell; an empty environment; no inherited descriptor; the end of stderr kept
//! as the error; cancellable through `Progress`.

use std::ffi::OsString;
use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::progress::Progress;

/// How much of a failing program's stderr is kept as the error message (its end, where the
/// reason is).
const STDERR_KEEP: usize = 8 * 1024;
/// How much of a program's stderr `run_collecting` keeps (pg_restore's list of what failed).
const STDERR_COLLECT: usize = 1 << 20;

/// How long a cancelled program gets after SIGTERM before SIGKILL.
pub const KILL_GRACE: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    #[error("could not start {program}: {source}")]
    Spawn {
        program: String,
        source: std::io::Error,
    },
    #[error("{program} failed ({status}): {stderr}")]
    Failed {
        program: String,
        status: String,
        stderr: String,
    },
    #[error("{program} was stopped")]
    Cancelled { program: String },
}

/// A command with an empty environment (nothing of the server's environment, secrets included,
/// leaks into it) and with every inherited descriptor above stderr closed on exec.
pub fn command(argv: &[OsString]) -> Command {
    let mut cmd = Command::new(&argv[0]);
    cmd.args(&argv[1..])
        .env_clear()
        .env("PGAPPNAME", "backup_mgmt")
        .env("LC_ALL", "C")
        .stdin(Stdio::null());
    // SAFETY: close_range is async-signal-safe; the closure runs between fork and exec.  The
    // worker holds the postmaster-death pipe, relation files and sockets, which a backup program
    // must not keep open (it would keep them alive past the server).
    unsafe {
        cmd.pre_exec(|| {
            libc::syscall(
                libc::SYS_close_range,
                3u32,
                u32::MAX,
                libc::CLOSE_RANGE_CLOEXEC,
            );
            Ok(())
        });
    }
    cmd
}

/// The program's file name, for messages.
pub fn program_name(cmd: &Command) -> String {
    Path::new(cmd.get_program())
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Collects the end of a program's stderr on a helper thread.
pub fn collect_stderr(child: &mut Child) -> Option<JoinHandle<String>> {
    collect_stderr_keeping(child, STDERR_KEEP)
}

/// Collects the stderr lines `keep` accepts, up to 1 MB, on a helper thread.
fn collect_stderr_lines(child: &mut Child, keep: fn(&str) -> bool) -> Option<JoinHandle<String>> {
    let err = child.stderr.take()?;
    std::thread::Builder::new()
        .name("backup_mgmt stderr".into())
        .spawn(move || {
            use std::io::BufRead;
            let mut kept = String::new();
            for line in std::io::BufReader::new(err).split(b'\n') {
                let Ok(line) = line else { break };
                let line = String::from_utf8_lossy(&line);
                if keep(&line) && kept.len() + line.len() < STDERR_COLLECT {
                    kept.push_str(&line);
                    kept.push('\n');
                }
            }
            kept
        })
        .ok()
}

/// Collects the last `keep` bytes of a program's stderr on a helper thread.
fn collect_stderr_keeping(child: &mut Child, keep: usize) -> Option<JoinHandle<String>> {
    let mut err = child.stderr.take()?;
    std::thread::Builder::new()
        .name("backup_mgmt stderr".into())
        .spawn(move || {
            let mut kept: Vec<u8> = Vec::new();
            let mut buf = [0u8; 4096];
            while let Ok(n) = err.read(&mut buf) {
                if n == 0 {
                    break;
                }
                kept.extend_from_slice(&buf[..n]);
                if kept.len() > 2 * keep {
                    kept.drain(..kept.len() - keep);
                }
            }
            let start = kept.len().saturating_sub(keep);
            String::from_utf8_lossy(&kept[start..]).trim().to_owned()
        })
        .ok()
}

/// Starts `cmd` with its stderr piped, unless the work was cancelled; `progress` learns its pid.
pub fn spawn(mut cmd: Command, progress: &Progress, stdout: Stdio) -> Result<Child, ProcessError> {
    let program = program_name(&cmd);
    if progress.is_cancelled() {
        return Err(ProcessError::Cancelled { program });
    }
    let child = cmd
        .stdout(stdout)
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| ProcessError::Spawn { program, source })?;
    progress.set_child(child.id() as i32);
    Ok(child)
}

/// Waits for the program and turns a failure into an error carrying its stderr; on success,
/// returns the end of what it said on stderr (pg_basebackup's WAL positions are there).
pub fn finish(
    mut child: Child,
    program: String,
    stderr: Option<JoinHandle<String>>,
    progress: &Progress,
) -> Result<String, ProcessError> {
    let status = child.wait();
    progress.set_child(0);
    let stderr = stderr.and_then(|h| h.join().ok()).unwrap_or_default();
    let status = status.map_err(|source| ProcessError::Spawn {
        program: program.clone(),
        source,
    })?;
    if progress.is_cancelled() {
        return Err(ProcessError::Cancelled { program });
    }
    if !status.success() {
        return Err(ProcessError::Failed {
            program,
            status: describe_status(status),
            stderr: if stderr.is_empty() {
                "(no error output)".into()
            } else {
                stderr
            },
        });
    }
    Ok(stderr)
}

fn describe_status(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(c), _) => format!("exit code {c}"),
        (None, Some(s)) => format!("killed by signal {s}"),
        _ => "unknown status".into(),
    }
}

/// The end of a program's message, at most 4000 bytes, cut on a character boundary.
pub fn tail(s: &str) -> String {
    let s = s.trim();
    let mut i = s.len().saturating_sub(4000);
    while !s.is_char_boundary(i) {
        i += 1;
    }
    s[i..].to_owned()
}

/// The major version a PostgreSQL program says it is of (`pg_combinebackup --version`), or
/// None when it does not run or says something else.
pub fn major_version(program: &Path) -> Option<i64> {
    let out = command(&[program.as_os_str().to_owned(), "--version".into()])
        .stderr(Stdio::null())
        .output()
        .ok()?;
    major_in(&String::from_utf8_lossy(&out.stdout))
}

/// "pg_combinebackup (PostgreSQL) 18.1" (or "18beta2", "17.6 (Debian 17.6-1)"): 18.
fn major_in(version_line: &str) -> Option<i64> {
    let after = version_line.split_once("(PostgreSQL) ")?.1;
    let digits: String = after.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

/// Runs a program to completion (stopped when `progress` is cancelled) and returns its stdout.
pub fn run_to_end(
    argv: &[OsString],
    stdin: Option<Stdio>,
    progress: &Progress,
) -> Result<String, ProcessError> {
    let mut cmd = command(argv);
    if let Some(s) = stdin {
        cmd.stdin(s);
    }
    let program = program_name(&cmd);
    let mut child = spawn(cmd, progress, Stdio::piped())?;
    let stderr = collect_stderr(&mut child);
    let mut out = String::new();
    if let Some(mut o) = child.stdout.take() {
        let _ = o.read_to_string(&mut out);
    }
    finish(child, program, stderr, progress).map(|_| out)
}

/// A program's whole run: what it wrote, and whether it succeeded (a failure is not an `Err`
/// here: the caller reads what it said).
#[derive(Debug)]
pub struct Ran {
    pub stdout: String,
    pub stderr: String,
    pub success: bool,
    pub status: String,
    /// Why feeding its stdin failed, when it did (a decompressor's error).
    pub input_error: Option<String>,
}

/// What a program reads on stdin.
pub enum Input {
    Nothing,
    Bytes(Vec<u8>),
    File(std::fs::File),
    /// Written by the function, on a thread of its own.
    Fed(Box<dyn FnOnce(std::process::ChildStdin) -> Result<(), crate::stream::PumpError> + Send>),
}

/// Runs `cmd` to completion with `input` on its stdin, keeping its stdout and the last 1 MB of
/// its stderr.  Stopped when `progress` is cancelled.
pub fn run_collecting(
    cmd: Command,
    input: Input,
    progress: &Progress,
) -> Result<Ran, ProcessError> {
    run_collecting_lines(cmd, input, None, progress)
}

/// As `run_collecting`, keeping only the stderr lines `keep_line` accepts (up to 1 MB of them),
/// for programs that say a line about every object they handle.
pub fn run_collecting_lines(
    mut cmd: Command,
    input: Input,
    keep_line: Option<fn(&str) -> bool>,
    progress: &Progress,
) -> Result<Ran, ProcessError> {
    let program = program_name(&cmd);
    match &input {
        Input::Nothing => {}
        Input::File(_) => {}
        Input::Bytes(_) | Input::Fed(_) => {
            cmd.stdin(Stdio::piped());
        }
    }
    let input = match input {
        Input::File(f) => {
            cmd.stdin(Stdio::from(f));
            Input::Nothing
        }
        other => other,
    };
    let mut child = spawn(cmd, progress, Stdio::piped())?;
    let stderr = match keep_line {
        None => collect_stderr_keeping(&mut child, STDERR_COLLECT),
        Some(keep) => collect_stderr_lines(&mut child, keep),
    };
    let feeder = match (input, child.stdin.take()) {
        (Input::Bytes(bytes), Some(mut sink)) => Some(std::thread::spawn(move || {
            use std::io::Write;
            // A program that stops reading early fails on its own; its error says why.
            let _ = sink.write_all(&bytes);
            Ok(())
        })),
        (Input::Fed(f), Some(sink)) => Some(std::thread::spawn(move || f(sink))),
        _ => None,
    };
    let mut out = String::new();
    if let Some(mut o) = child.stdout.take() {
        let _ = o.read_to_string(&mut out);
    }
    let status = child.wait();
    progress.set_child(0);
    let input_error = feeder.and_then(|f| match f.join() {
        Ok(Ok(())) => None,
        Ok(Err(e)) => Some(e.to_string()),
        Err(_) => Some("the thread feeding the program panicked".to_owned()),
    });
    let stderr = stderr.and_then(|h| h.join().ok()).unwrap_or_default();
    let status = status.map_err(|source| ProcessError::Spawn {
        program: program.clone(),
        source,
    })?;
    if progress.is_cancelled() {
        return Err(ProcessError::Cancelled { program });
    }
    Ok(Ran {
        stdout: out,
        stderr,
        success: status.success(),
        status: describe_status(status),
        input_error,
    })
}

/// Grows a pipe from the default 64 kB to 1 MB (the unprivileged maximum), so that the program
/// and this thread hand over large blocks instead of waking each other every 64 kB.
pub fn widen_pipe(pipe: &impl std::os::fd::AsRawFd) {
    // SAFETY: fcntl on a descriptor we own; failure leaves the default size.
    unsafe {
        libc::fcntl(pipe.as_raw_fd(), libc::F_SETPIPE_SZ, 1 << 20);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_major_version_is_read_from_what_the_program_says() {
        assert_eq!(major_in("pg_combinebackup (PostgreSQL) 18.1\n"), Some(18));
        assert_eq!(
            major_in("pg_combinebackup (PostgreSQL) 17.6 (Debian 17.6-1.pgdg120+1)"),
            Some(17)
        );
        assert_eq!(major_in("pg_combinebackup (PostgreSQL) 18beta2"), Some(18));
        assert_eq!(major_in("something else 18.1"), None);
        assert_eq!(
            major_version(Path::new("/nonexistent/pg_combinebackup")),
            None
        );
    }

    #[test]
    fn environment_is_empty_and_errors_carry_stderr() {
        std::env::set_var("BACKUP_MGMT_TEST_SECRET", "s3cr3t");
        let p = Progress::default();
        let out = run_to_end(&["/usr/bin/env".into()], None, &p).unwrap();
        assert!(!out.contains("s3cr3t"), "{out}");
        assert!(out.contains("PGAPPNAME=backup_mgmt"));
        let e = run_to_end(
            &[
                "/bin/sh".into(),
                "-c".into(),
                "echo boom >&2; exit 3".into(),
            ],
            None,
            &p,
        )
        .unwrap_err();
        assert!(
            e.to_string().contains("boom") && e.to_string().contains("exit code 3"),
            "{e}"
        );
        assert!(tail(&"é".repeat(3000)).len() <= 4000);
        let ran = run_collecting(
            command(&[
                "/bin/sh".into(),
                "-c".into(),
                "cat; echo oops >&2; exit 2".into(),
            ]),
            Input::Bytes(b"fed".to_vec()),
            &p,
        )
        .unwrap();
        assert!(!ran.success);
        assert_eq!((ran.stdout.as_str(), ran.stderr.as_str()), ("fed", "oops"));
        assert_eq!(ran.status, "exit code 2");
    }
}
