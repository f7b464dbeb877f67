//! Spawning a child that inherits one channel descriptor, and adopting it in the child.
//!
//! The descriptor stays close-on-exec in the parent (so no other child spawned meanwhile
//! inherits it); only the forked child clears the flag, between `fork` and `exec`. Its number
//! travels in an environment variable. The child takes it with [`take_inherited_fd`], which
//! sets close-on-exec again, so grandchildren never inherit the descriptor (the variable
//! stays: nothing here edits the environment).

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command};

use nix::libc;

use super::cvt;

/// Spawns `cmd` so that the child inherits `fd` under the same number, which is also put in
/// the child's environment as `env_var`.
///
/// # Errors
///
/// Whatever [`Command::spawn`] returns; the child fails to start if clearing
/// close-on-exec fails.
pub fn spawn_with_fd(cmd: &mut Command, fd: BorrowedFd<'_>, env_var: &str) -> io::Result<Child> {
    let raw = fd.as_raw_fd();
    cmd.env(env_var, raw.to_string());
    // SAFETY: the closure runs in the forked child before exec and calls only fcntl, which
    // is async-signal-safe; it allocates nothing and takes no locks.
    unsafe {
        cmd.pre_exec(move || {
            let flags = cvt(libc::fcntl(raw, libc::F_GETFD))?;
            cvt(libc::fcntl(raw, libc::F_SETFD, flags & !libc::FD_CLOEXEC))?;
            Ok(())
        });
    }
    cmd.spawn()
}

/// Takes ownership of the descriptor whose number is in `env_var`, if the variable is set,
/// and makes it close-on-exec. The environment is left as it is.
///
/// # Safety
///
/// The descriptor named by the variable must have been passed to this process for the
/// caller alone: nothing else in the process owns it, or will take it (call this at most
/// once per variable and process, and only where the variable was set for this very
/// process, not inherited from an ancestor).
///
/// # Errors
///
/// `InvalidData` if the variable is not a number, or names a descriptor that is not open or
/// is not a socket.
pub unsafe fn take_inherited_fd(env_var: &str) -> io::Result<Option<OwnedFd>> {
    let Some(value) = std::env::var_os(env_var) else {
        return Ok(None);
    };
    let bad = |why: &str| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{env_var}={value:?}: {why}"),
        )
    };
    let raw: RawFd = value
        .to_str()
        .and_then(|s| s.parse().ok())
        .filter(|&n: &RawFd| n > 2)
        .ok_or_else(|| bad("not a descriptor number above 2"))?;
    // SAFETY: fstat writes into a zeroed stat we own; a closed fd just fails with EBADF.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    if unsafe { libc::fstat(raw, &mut st) } == -1 {
        return Err(bad("descriptor is not open"));
    }
    if st.st_mode & libc::S_IFMT != libc::S_IFSOCK {
        return Err(bad("descriptor is not a socket"));
    }
    // SAFETY: the caller's precondition: the parent handed this open socket to the caller
    // alone, and nothing else in this process owns it.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    super::set_cloexec(std::os::fd::AsFd::as_fd(&fd), true)?;
    Ok(Some(fd))
}

/// Makes the child `cmd` spawns die with this process: on Linux the child asks for
/// `SIGKILL` on parent death (`PR_SET_PDEATHSIG`) between `fork` and `exec`, then checks
/// that its parent is still this process (if the parent died in between, the request came
/// too late and the child `_exit`s with status 1 at once). Elsewhere only the check runs;
/// the worker's watchdog thread covers parent death there.
///
/// # Linux caveat
///
/// The kernel fires the signal when the *thread* that spawned the child exits, not the
/// process. Spawn workers from the thread that runs the primary's loop for its whole
/// life (never from a short-lived helper thread), or they are killed when that thread
/// ends. The request is also dropped when the child changes credentials afterwards or
/// `exec`s a set-user-ID program; [`Command::uid`]/[`Command::gid`] are applied before
/// this hook, so they are fine.
pub fn die_with_parent(cmd: &mut Command) {
    let parent = std::process::id() as libc::pid_t;
    // SAFETY: the closure runs in the forked child before exec and calls only prctl,
    // getppid and _exit, which are async-signal-safe; it allocates nothing and takes no
    // locks.
    unsafe {
        cmd.pre_exec(move || {
            super::imp::set_parent_death_signal()?;
            if libc::getppid() != parent {
                libc::_exit(1);
            }
            Ok(())
        });
    }
}

/// Starts the child `cmd` spawns in the normal scheduling class when this thread is in
/// the batch class (see `BatchScheduling`): a child inherits its parent thread's class,
/// and a primary's batch class is no business of its workers.
pub(crate) fn normal_scheduling_in_child(cmd: &mut Command) {
    // SAFETY: the closure runs in the forked child before exec and makes only the
    // sched_getscheduler and sched_setscheduler system calls, which are async-signal-safe;
    // it allocates nothing and takes no locks. A refusal leaves the child as it was rather
    // than failing its start.
    unsafe {
        cmd.pre_exec(|| {
            let _ = super::leave_batch();
            Ok(())
        });
    }
}

/// Takes ownership of the `count` descriptors `start, start + 1, …` a service manager
/// passed to this process (socket activation), making each close-on-exec.
///
/// # Safety
///
/// The descriptors must have been passed to this process for the caller alone: nothing
/// else in the process owns any of them, or will take them (call this at most once for a
/// range).
///
/// # Errors
///
/// `InvalidData` if one of them is not open (then none is taken); `fcntl` fails.
pub unsafe fn take_fds(start: RawFd, count: usize) -> io::Result<Vec<OwnedFd>> {
    let end = RawFd::try_from(count)
        .ok()
        .and_then(|n| start.checked_add(n))
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "too many descriptors"))?;
    for raw in start..end {
        // SAFETY: F_GETFD on a number touches no memory; a closed fd fails with EBADF.
        if unsafe { libc::fcntl(raw, libc::F_GETFD) } == -1 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("inherited descriptor {raw} is not open"),
            ));
        }
    }
    let mut fds = Vec::with_capacity(count);
    for raw in start..end {
        // SAFETY: the descriptor is open (checked above); the caller's precondition says
        // it was passed to the caller alone and nothing else owns it.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        super::set_cloexec(std::os::fd::AsFd::as_fd(&fd), true)?;
        fds.push(fd);
    }
    Ok(fds)
}
