//! Processes the lab runs: started in their own process group with output to a log, waited for
//! with a deadline and the Ctrl-C flag, signalled by pid.
use std::{
    fs,
    os::unix::process::CommandExt as _,
    path::Path,
    process::{Child, Command, Stdio},
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use super::LabError;

/// Polls `probe` every 10 ms until it returns something, the deadline passes, or `cancel` is
/// raised.
pub(super) fn poll<T>(
    cancel: Option<&'static AtomicBool>,
    deadline: Duration,
    mut probe: impl FnMut() -> Option<T>,
) -> Result<T, LabError> {
    let give_up = Instant::now() + deadline;
    loop {
        if let Some(value) = probe() {
            return Ok(value);
        }
        check_cancel(cancel)?;
        if Instant::now() >= give_up {
            return Err(LabError::Timeout(format!("nothing after {deadline:?}")));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// [`LabError::Interrupted`] once the cancel flag is raised.
pub(super) fn check_cancel(cancel: Option<&'static AtomicBool>) -> Result<(), LabError> {
    match cancel {
        Some(flag) if flag.load(Ordering::SeqCst) => Err(LabError::Interrupted),
        _ => Ok(()),
    }
}

/// Starts a long-running process with stdout and stderr into `log`, in its own process group so
/// that the terminal's Ctrl-C reaches only the lab, which then stops everything in order.
pub(super) fn spawn_logged(command: &mut Command, log: &fs::File) -> Child {
    command
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("duplicating the log fd"))
        .stderr(log.try_clone().expect("duplicating the log fd"))
        .process_group(0)
        .spawn()
        .unwrap_or_else(|err| panic!("starting {}: {err}", describe(command)))
}

/// The command line, for logs and messages.
pub(super) fn describe(command: &Command) -> String {
    std::iter::once(command.get_program())
        .chain(command.get_args())
        .map(|arg| arg.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

/// The last `lines` lines of a file.
pub(super) fn tail(path: &Path, lines: usize) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Running (not gone, not a zombie waiting to be reaped).
pub(super) fn alive(pid: i32) -> bool {
    let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    let state = stat
        .rfind(')')
        .and_then(|end| stat[end + 1..].trim_start().chars().next());
    !matches!(state, Some('Z' | 'X') | None)
}

pub(super) fn signal(pid: i32, signal: libc::c_int) {
    // SAFETY: kill has no memory-safety preconditions; pid > 0 names one process.
    if pid > 0 {
        unsafe { libc::kill(pid, signal) };
    }
}
