//! CPU time consumed by this process or the calling thread, used to check that an idle loop
//! does not spin (`tests/loop_idle.rs`, `examples/loop_bench.rs`).

use std::io;
use std::time::Duration;

use nix::libc;

use super::cvt;

/// CPU time (user + system) the calling thread has used so far.
pub fn thread_cpu_time() -> io::Result<Duration> {
    clock(libc::CLOCK_THREAD_CPUTIME_ID)
}

/// CPU time (user + system) the whole process has used so far.
pub fn process_cpu_time() -> io::Result<Duration> {
    clock(libc::CLOCK_PROCESS_CPUTIME_ID)
}

fn clock(id: libc::clockid_t) -> io::Result<Duration> {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec into the value we own.
    cvt(unsafe { libc::clock_gettime(id, &mut ts) })?;
    let secs = u64::try_from(ts.tv_sec).unwrap_or(0);
    let nanos = u32::try_from(ts.tv_nsec).unwrap_or(0);
    Ok(Duration::new(secs, nanos))
}
