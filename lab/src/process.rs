//! Node processes: spawn, SIGKILL, SIGSTOP/SIGCONT, graceful stop.
//!
//! Each child is spawned by its own *monitor thread*, which then polls it
//! until it exits. On Linux the child asks the kernel for `SIGKILL` when its
//! parent thread dies (`PR_SET_PDEATHSIG`); the monitor thread lives exactly
//! as long as the child, so the child dies with the lab even when the lab is
//! killed with SIGKILL and no destructor runs. Children stay in the lab's
//! process group, so a Ctrl-C in the terminal reaches them too.
//!
//! The `Child` handle lives under a mutex that every signal takes, and the
//! monitor reaps only under that mutex, so a signal never reaches a reused
//! pid.

use std::fs::File;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// How often a monitor thread checks whether its child exited.
const MONITOR_POLL_INTERVAL: Duration = Duration::from_millis(50);
/// How long a graceful stop waits after SIGTERM before SIGKILL.
pub const GRACEFUL_STOP_TIMEOUT: Duration = Duration::from_secs(5);

/// What a node process is doing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProcessState {
    Running,
    /// Stopped with SIGSTOP.
    Paused,
    /// Killed by the lab (SIGKILL, or stopped by `down`).
    Killed,
    /// Exited on its own; the exit status as text.
    Exited(String),
}

#[derive(Debug)]
struct Inner {
    child: Option<Child>,
    pid: u32,
    paused: bool,
    killed: bool,
    exit: Option<ExitStatus>,
}

/// A running (or finished) child process.
///
/// Invariants:
/// - `exit` is set only after the child was reaped, and then no signal is
///   sent any more;
/// - `paused` only while the child is alive.
#[derive(Debug)]
pub struct NodeProcess {
    inner: Arc<Mutex<Inner>>,
}

fn lock(inner: &Mutex<Inner>) -> MutexGuard<'_, Inner> {
    inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl NodeProcess {
    /// Spawns `command` with stdout and stderr appended to `log`.
    pub fn spawn(mut command: Command, log: File) -> Result<NodeProcess> {
        let err_log = log.try_clone().map_err(Error::io("duplicate the node log handle"))?;
        command.stdin(Stdio::null()).stdout(log).stderr(err_log);
        #[cfg(target_os = "linux")]
        {
            use std::os::unix::process::CommandExt;
            // SAFETY: prctl is async-signal-safe and touches no memory of the
            // parent; it only asks for SIGKILL when the spawning thread exits.
            unsafe {
                command.pre_exec(|| {
                    if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        let (started_tx, started_rx) = std::sync::mpsc::channel();
        let program = format!("{:?}", command.get_program());
        thread::Builder::new()
            .name("geokv-lab-child".into())
            .spawn(move || {
                let child = match command.spawn() {
                    Ok(child) => child,
                    Err(err) => {
                        let _ = started_tx.send(Err(err));
                        return;
                    }
                };
                let inner = Arc::new(Mutex::new(Inner {
                    pid: child.id(),
                    child: Some(child),
                    paused: false,
                    killed: false,
                    exit: None,
                }));
                if started_tx.send(Ok(inner.clone())).is_err() {
                    return;
                }
                // The child dies with this thread: stay until it has exited.
                loop {
                    {
                        let mut guard = lock(&inner);
                        if guard.exit.is_some() {
                            return;
                        }
                        let status = guard.child.as_mut().map(|c| c.try_wait());
                        if let Some(Ok(Some(status))) = status {
                            guard.exit = Some(status);
                            guard.paused = false;
                            return;
                        }
                    }
                    thread::sleep(MONITOR_POLL_INTERVAL);
                }
            })
            .map_err(Error::io("start a monitor thread"))?;
        let inner = started_rx
            .recv()
            .map_err(|_| Error::State("the monitor thread died".into()))?
            .map_err(Error::io(format!("spawn {program}")))?;
        Ok(NodeProcess { inner })
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        lock(&self.inner).pid
    }

    /// What the process is doing now.
    pub fn state(&self) -> ProcessState {
        let guard = lock(&self.inner);
        match guard.exit {
            Some(_) if guard.killed => ProcessState::Killed,
            Some(status) => ProcessState::Exited(status.to_string()),
            None if guard.paused => ProcessState::Paused,
            None => ProcessState::Running,
        }
    }

    /// Whether the process has not exited yet.
    pub fn is_alive(&self) -> bool {
        lock(&self.inner).exit.is_none()
    }

    fn signal(guard: &MutexGuard<'_, Inner>, signal: libc::c_int) -> Result<()> {
        assert!(guard.exit.is_none(), "signal {signal} to pid {} after it was reaped", guard.pid);
        // SAFETY: kill has no memory effects; the pid is our unreaped child.
        if unsafe { libc::kill(guard.pid as libc::pid_t, signal) } != 0 {
            return Err(Error::io(format!("signal {signal} to pid {}", guard.pid))(std::io::Error::last_os_error()));
        }
        Ok(())
    }

    fn reap(guard: &mut MutexGuard<'_, Inner>) {
        if guard.exit.is_none()
            && let Some(status) = guard.child.as_mut().and_then(|c| c.wait().ok())
        {
            guard.exit = Some(status);
        }
        guard.paused = false;
    }

    /// SIGKILLs the process (a crash: no shutdown code runs) and reaps it.
    /// Does nothing if it already exited.
    pub fn kill(&self) {
        let mut guard = lock(&self.inner);
        if guard.exit.is_some() {
            return;
        }
        guard.killed = true;
        if NodeProcess::signal(&guard, libc::SIGKILL).is_ok() {
            NodeProcess::reap(&mut guard);
        }
    }

    /// SIGTERM (after SIGCONT if paused), then SIGKILL if it has not exited
    /// within `timeout`.
    pub fn stop(&self, timeout: Duration) {
        {
            let mut guard = lock(&self.inner);
            if guard.exit.is_some() {
                return;
            }
            guard.killed = true;
            if guard.paused {
                let _ = NodeProcess::signal(&guard, libc::SIGCONT);
                guard.paused = false;
            }
            let _ = NodeProcess::signal(&guard, libc::SIGTERM);
        }
        let start = Instant::now();
        while start.elapsed() < timeout {
            if !self.is_alive() {
                return;
            }
            thread::sleep(MONITOR_POLL_INTERVAL);
        }
        self.kill();
    }

    /// SIGSTOPs the process.
    pub fn pause(&self) -> Result<()> {
        let mut guard = lock(&self.inner);
        if guard.exit.is_some() {
            return Err(Error::State(format!("pid {} is not running", guard.pid)));
        }
        NodeProcess::signal(&guard, libc::SIGSTOP)?;
        guard.paused = true;
        Ok(())
    }

    /// SIGCONTs the process.
    pub fn resume(&self) -> Result<()> {
        let mut guard = lock(&self.inner);
        if guard.exit.is_some() {
            return Err(Error::State(format!("pid {} is not running", guard.pid)));
        }
        NodeProcess::signal(&guard, libc::SIGCONT)?;
        guard.paused = false;
        Ok(())
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Whether a process with this pid exists (any owner).
pub fn pid_exists(pid: u32) -> bool {
    // SAFETY: signal 0 only checks for existence and permission.
    let rc = unsafe { libc::kill(pid as libc::pid_t, 0) };
    rc == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sleeper() -> NodeProcess {
        let mut command = Command::new("sleep");
        command.arg("30");
        let log = tempfile::tempfile().unwrap();
        NodeProcess::spawn(command, log).unwrap()
    }

    #[test]
    fn kill_pause_resume_and_drop() {
        let p = sleeper();
        let pid = p.pid();
        assert!(pid_exists(pid));
        assert_eq!(p.state(), ProcessState::Running);
        p.pause().unwrap();
        assert_eq!(p.state(), ProcessState::Paused);
        p.resume().unwrap();
        p.kill();
        assert_eq!(p.state(), ProcessState::Killed);
        assert!(!pid_exists(pid), "pid {pid} still exists after kill");
        assert!(p.pause().is_err());

        let q = sleeper();
        let pid = q.pid();
        drop(q);
        assert!(!pid_exists(pid), "pid {pid} still exists after drop");
    }

    #[test]
    fn graceful_stop_of_a_paused_process() {
        let p = sleeper();
        p.pause().unwrap();
        p.stop(Duration::from_secs(5));
        assert!(!p.is_alive());
    }
}
